"""Train a re-identification model.

    python train.py                                       # default recipe on the built-in synthetic set
    python train.py data.format=folders data.root=PHOTOS  # the same recipe on your photos
    accelerate launch train.py --config configs/train/arcface.yaml train.lr=3e-4
    python train.py --config configs/train/arcface.yaml --resume         # continue the latest checkpoint

Any config key can be overridden as key=value (dotted, typed); `--print-config` shows them all.
The run's folder (output_dir) is marked with reidzoo-run.json: a new run there replaces that run's
checkpoints, and a folder train.py did not create is refused rather than overwritten.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.cli import config_parser, parse_config
from core.errors import cli_entry
from core.schema import TrainConfig

DEFAULT_RECIPE = "configs/train/default.yaml"  # relative to this file, so it is found from any folder


def build_parser() -> argparse.ArgumentParser:
    parser = config_parser(__doc__, DEFAULT_RECIPE, "train.lr=3e-4")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        help="continue training: the run's latest complete checkpoint, or a checkpoint folder",
    )
    return parser


@cli_entry
def main(argv=None) -> dict:
    args, cfg = parse_config(TrainConfig, build_parser(), argv, Path(__file__).resolve().parent / DEFAULT_RECIPE)
    if args.print_config:
        return {}
    from engine.training.loop import train  # heavy imports only once the config is known to be valid

    result = train(cfg, resume=args.resume)
    summary = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in result["metrics"].items())
    print(f"done: {result['steps']} steps; exported model's validation: {summary or 'n/a'}; "
          f"model exported to {result['export']}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

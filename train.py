"""Train a re-identification model.

    python train.py                                       # default recipe on the built-in synthetic set
    python train.py data.format=folders data.root=PHOTOS  # the same recipe on your photos
    accelerate launch train.py --config configs/train/arcface.yaml train.lr=3e-4
    python train.py --config configs/train/arcface.yaml --resume         # continue the latest checkpoint

Any config key can be overridden as key=value (dotted, typed); `--print-config` shows them all.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from core.config import load_config, to_dict
from core.errors import cli_entry
from core.schema import TrainConfig

DEFAULT_RECIPE = "configs/train/default.yaml"  # relative to this file, so it is found from any folder


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help=f"recipe YAML (default: {DEFAULT_RECIPE})")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        help="continue training: the run's latest checkpoint, or a checkpoint folder",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=3e-4")
    # Intermixed: overrides may come before and after --config.
    return parser.parse_intermixed_args(argv)


@cli_entry
def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = load_config(TrainConfig, args.config or Path(__file__).resolve().parent / DEFAULT_RECIPE, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return {}
    from engine.trainer import train  # heavy imports only once the config is known to be valid

    result = train(cfg, resume=args.resume)
    summary = "  ".join(f"{k}={v:.4f}" for k, v in (result["best"] or result["metrics"]).items())
    print(f"done: {result['steps']} steps; best validation: {summary or 'n/a'}; model exported to {result['export']}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

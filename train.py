"""Train a re-identification model.

    python train.py                                       # default recipe on the built-in synthetic set
    python train.py data.format=folders data.root=PHOTOS  # the same recipe on your photos
    accelerate launch train.py --config configs/train/arcface.yaml train.lr=3e-4
    python train.py --config configs/train/arcface.yaml --resume         # continue the latest checkpoint
    python train.py --config configs/train/detector_yolo.yaml            # a crop detector (task: detector)

Any config key can be overridden as key=value (dotted, typed); `--print-config` shows them all.
The run's folder (output_dir) is marked with reidzoo-run.json and locked while the run lasts. A new
run in a folder holding an earlier run's checkpoints needs --resume or --overwrite; a folder
train.py did not create is refused rather than overwritten.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from core.cli import config_parser, parse_config
from core.config import parse_override, read_yaml
from core.errors import ConfigError, cli_entry
from core.schema import TrainConfig
from core.schema_rules import TASKS
from core.suggest import did_you_mean

DEFAULT_RECIPE = "configs/train/default.yaml"  # relative to this file, so it is found from any folder
DETECTOR_RECIPE = "configs/train/detector_yolo.yaml"  # the default of `task=detector`


def build_parser() -> argparse.ArgumentParser:
    parser = config_parser(__doc__, DEFAULT_RECIPE, "train.lr=3e-4")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        help="continue training: the run's latest complete checkpoint, or a checkpoint folder",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an output_dir holding an earlier run: its checkpoints, best/ and loss log are deleted",
    )
    return parser


def chosen_task(parser: argparse.ArgumentParser, argv) -> str:
    """The `task` of the recipe (or of a task=... override): it decides the config schema."""
    args = parser.parse_intermixed_args(argv)
    task = read_yaml(args.config).get("task", "reid") if args.config else "reid"
    for text in args.overrides:
        key, value = parse_override(text)
        task = value if key == "task" else task
    if task not in TASKS:
        raise ConfigError(f"'task' must be one of {', '.join(TASKS)}, got {task!r}{did_you_mean(str(task), TASKS)}")
    return task


@cli_entry
def main(argv=None) -> dict:
    parser = build_parser()
    here = Path(__file__).resolve().parent
    import engine.components  # noqa: F401  (the built-in names a config may use, registered)
    # Heavy imports only once the config is known to be valid.
    if chosen_task(parser, argv) == "detector":
        from core.detector_schema import DetectorTrainConfig

        args, cfg = parse_config(DetectorTrainConfig, parser, argv, here / DETECTOR_RECIPE)
        if args.print_config:
            return {}
        from engine.detection.loop import train_detector as run
    else:
        args, cfg = parse_config(TrainConfig, parser, argv, here / DEFAULT_RECIPE)
        if args.print_config:
            return {}
        from engine.training.loop import train as run

    result = run(cfg, resume=args.resume, overwrite=args.overwrite)
    summary = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in result["metrics"].items())
    if os.environ.get("RANK", "0") == "0":  # once, not per process of `accelerate launch`
        print(f"done: {result['steps']} steps; exported model's validation: {summary or 'n/a'}; "
              f"model exported to {result['export']}")
    return result


def console() -> None:
    """The `reidzoo-train` command (setup.cfg's console_scripts): main's result is for callers in Python."""
    main(sys.argv[1:])


if __name__ == "__main__":
    console()

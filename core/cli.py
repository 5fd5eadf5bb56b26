"""The command line shared by train.py and eval.py: --config, --print-config and key=value overrides."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence, Tuple, Type, TypeVar

import yaml

from core.config import load_config, to_dict

T = TypeVar("T")


def config_parser(description: str, default_recipe: Path, example: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help=f"recipe YAML (default: {default_recipe})")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=f"config overrides, e.g. {example}")
    return parser


def parse_config(
    cls: Type[T], parser: argparse.ArgumentParser, argv: Sequence[str] | None, default_recipe: Path
) -> Tuple[argparse.Namespace, T]:
    """Parse the command line and load the config; with --print-config, print it too."""
    # Intermixed: overrides may come before and after --config.
    args = parser.parse_intermixed_args(argv)
    # An installed reidzoo (reidzoo-train, reidzoo-eval) has no configs/ folder beside it; the default
    # recipes only restate the schema's defaults (tests/test_config.py checks it), so those stand in.
    recipe = args.config or (default_recipe if Path(default_recipe).is_file() else None)
    cfg = load_config(cls, recipe, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return args, cfg

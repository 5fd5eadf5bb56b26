#!/usr/bin/env python
"""Reproduce a leaderboard recipe: run its stages (train.py / eval.py) in order, one command.

    python scripts/reproduce.py recipes/animalclef2025/fusion --data-root /data/animalclef2025
    python scripts/reproduce.py recipes/humpback/siamese_classifiers --synthetic   # the 2-core twin
    python scripts/reproduce.py RECIPE_DIR --data-root DIR --out runs/x --deterministic [--force]

A stage whose config, overrides, code, data and upstream stages are unchanged since its last
successful run is skipped. Outputs: OUT/<stage>/ (with reproduce.log and reproduce_stage.json) and
OUT/manifest.json. Exit status: 0 done, 1 a stage failed or the submission's sha256 differs from
expected.json's, 2 a bad recipe, config or dataset (one `error:` line before anything runs).
See recipes/README.md for the recipe format.
"""
import argparse
import sys
from pathlib import Path

import engine.components  # noqa: F401  (the built-in names a config may use, registered)
from core.errors import cli_entry
from engine.reproduce.pipeline import reproduce


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="recipe folder (holding recipe.yaml, synthetic.yaml, expected.json)")
    parser.add_argument("--data-root", help="the dataset folder, in the recipe's data.format "
                        "(optional with --synthetic: the twin's data is generated under OUT)")
    parser.add_argument("--out", help="output folder (default: runs/reproduce/<competition>/<entry>[-synthetic])")
    parser.add_argument("--synthetic", action="store_true", help="run the recipe's synthetic twin (synthetic.yaml)")
    parser.add_argument("--deterministic", action="store_true",
                        help="train.deterministic=true and data.num_workers=0 in train stages: a second run "
                             "from scratch on the same machine gives a byte-identical submission")
    parser.add_argument("--force", action="store_true", help="run every stage, even unchanged ones")
    parser.add_argument("--quiet", action="store_true", help="stage output only in OUT/<stage>/reproduce.log")
    return parser


def default_out(recipe: Path, synthetic: bool) -> Path:
    recipe = recipe.expanduser().resolve()
    return Path("runs") / "reproduce" / recipe.parent.name / (recipe.name + ("-synthetic" if synthetic else ""))


@cli_entry
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out) if args.out else default_out(Path(args.recipe), args.synthetic)
    manifest = reproduce(args.recipe, out=out, data_root=args.data_root, synthetic=args.synthetic,
                         deterministic=args.deterministic, force=args.force, echo=not args.quiet)
    return 1 if manifest["check"]["match"] is False else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

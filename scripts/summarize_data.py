"""Summarize a re-ID dataset in any supported format, after validating it.

    python scripts/summarize_data.py --format folders --root /data/DogFaceNet-dev
    python scripts/summarize_data.py --format csv --root my.csv --columns path=file,identity=id --json
    python scripts/summarize_data.py --format synthetic

Invalid data prints the validation message and exits with status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys

import engine.components  # noqa: F401  (the built-in names a config may use, registered)
from core.errors import ConfigError, cli_entry
from core.schema import DataConfig
from data.summary import format_summary, summarize_table
from engine.tables import dataset_table


def parse_columns(text: str) -> dict:
    """'path=file,identity=id' -> {'path': 'file', 'identity': 'id'}."""
    mapping = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        ours, sep, theirs = item.partition("=")
        if not sep or not ours.strip() or not theirs.strip():
            raise ConfigError(f"--columns: expected our=theirs pairs like path=file,identity=id, got {item!r}")
        mapping[ours.strip()] = theirs.strip()
    return mapping


@cli_entry
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", required=True,
                        help="animalclef2025 | wildlifereid10k | humpback | folders | csv | synthetic")
    parser.add_argument("--root", default="", help="dataset root (a csv file for --format csv; "
                        "optional for synthetic: the cache dir)")
    parser.add_argument("--columns", default="", help="csv format: our=theirs column names, comma-separated")
    parser.add_argument("--datasets", default="", help="keep only these comma-separated `dataset` values")
    parser.add_argument("--no-verify", action="store_true", help="skip opening every image header")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    cfg = DataConfig(format=args.format, root=args.root, columns=parse_columns(args.columns),
                     datasets=[d for d in args.datasets.split(",") if d], verify_images=not args.no_verify)
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the summary (it may be JSON)
        table = dataset_table(cfg)
    summary = summarize_table(table)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))


if __name__ == "__main__":
    main()

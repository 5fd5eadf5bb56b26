"""Build the open-set protocol from any labelled dataset: train on some individuals, test on others.

    python scripts/make_openset_protocol.py --format folders --root /data/DogFaceNet-dev --out /tmp/dogs
    python scripts/make_openset_protocol.py --format folders --root DIR --out OUT --val-fraction 0.2
    # one species of the synthetic set (python scripts/make_synthetic.py --out SYN), nearly all of it a test part
    python scripts/make_openset_protocol.py --format animalclef2025 --root SYN --datasets SynthTurtle \
        --train-fraction 0.05 --out OUT

Splits the identities into disjoint parts. `--train-fraction` (default half) of them are for
training; `--val-fraction` of those (default none) are held out of training as a validation part,
the set on which recipe settings are chosen, so that the test part is never used to choose. Writes
  OUT/train/metadata.csv   the training identities, every image labelled `database` (train.py data)
  OUT/val/metadata.csv     with --val-fraction: the held-out training identities, as the test part
  OUT/test/metadata.csv    the other identities in AnimalCLEF 2025 format: `--unknown-fraction` of its
                           identities only in the query (they must be predicted as new
                           individuals), the others' images split about 80/20 into database and
                           query (an identity with one image stays in the database); query rows
                           keep their true identity so eval.py can score them.
  OUT/protocol.json        the arguments and the counts of each part
  OUT/.reidzoo-protocol    the mark of a folder this script made: only such a folder (or an empty
                           one) is ever replaced, since --out could name anything
Every folder links the source images (`OUT/*/images -> ROOT`), nothing is copied. Use them as
`data.format=animalclef2025 data.root=OUT/train` (train.py) and `.../OUT/test` (eval.py).
The same seed and fractions always give the same parts; with --val-fraction 0 the train and test
parts are those of earlier versions of this script.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict

import engine.components  # noqa: F401  (the built-in names a config may use, registered)
from core.config import load_config
from core.errors import cli_entry
from core.schema import DataConfig
from data.formats import load_table
from data.protocol import build_protocol


def summary_line(name: str, counts: Dict[str, int]) -> str:
    line = f"{name + ':':6} {counts['identities']} identities, {counts['images']} images"
    if "query_images" in counts:
        line += (f" (database {counts['database_images']}, query {counts['query_images']}: "
                 f"{counts['new_identities']} new identities, {counts['new_images']} images)")
    return line


@cli_entry
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--train-fraction", type=float, default=0.5)
    parser.add_argument("--val-fraction", type=float, default=0.0,
                        help="of the training identities, fraction held out as OUT/val (default 0: no val part)")
    parser.add_argument("--unknown-fraction", type=float, default=0.2)
    parser.add_argument("--query-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--datasets", default="",
                        help="comma-separated `dataset` values to keep (one species of a set with several: "
                             "members trained on one, tested on another)")
    args = parser.parse_args(argv)
    root = Path(args.root)
    keep = [f"datasets=[{args.datasets}]"] if args.datasets else []
    table = load_table(load_config(DataConfig, None, [f"format={args.format}", f"root={root}", *keep]))
    out = Path(args.out)
    record = build_protocol(table, root, out, train_fraction=args.train_fraction, val_fraction=args.val_fraction,
                            unknown_fraction=args.unknown_fraction, query_fraction=args.query_fraction, seed=args.seed)
    for name, counts in record["parts"].items():
        print(f"{summary_line(name, counts)} -> {out / name}")


if __name__ == "__main__":
    main(sys.argv[1:])

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
import json
import os
import sys
from pathlib import Path
from typing import Dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

import engine.components  # noqa: E402,F401  (the built-in names a config may use, registered)
from core.config import load_config  # noqa: E402
from core.errors import ConfigError, cli_entry  # noqa: E402
from core.files import atomic_folder, atomic_write_text  # noqa: E402
from core.schema import DataConfig  # noqa: E402
from data.formats import load_table  # noqa: E402
from data.splits import identity_split, open_set_split  # noqa: E402

COLUMNS = ["image_id", "identity", "path", "split", "dataset", "species", "orientation", "date", "bbox"]
PROTOCOL_FILE = "protocol.json"
MARKER = ".reidzoo-protocol"
MARKER_TEXT = "made by scripts/make_openset_protocol.py, which may replace this folder as a whole\n"
RECORD_KEYS = {"source", "arguments", "parts"}  # protocol.json, as versions before the marker wrote it
SPLIT_DEFAULTS = {"train_fraction": 0.5, "val_fraction": 0.0, "unknown_fraction": 0.2, "query_fraction": 0.2, "seed": 0}


def write_part(table: pd.DataFrame, source_root: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    link = out / "images"
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(source_root.resolve(), link, target_is_directory=True)
    rows = table.copy()
    rows["path"] = [str(Path("images") / Path(p).resolve().relative_to(source_root.resolve())) for p in rows["path"]]
    rows["image_id"] = range(len(rows))
    rows["bbox"] = [None if b is None else str(list(b)) for b in rows["bbox"]]
    rows[COLUMNS].to_csv(out / "metadata.csv", index=False)


def describe_part(part: pd.DataFrame) -> Dict[str, int]:
    """Counts of one part: identities and images, and for an open-set part its database, query and new ones."""
    counts = {"identities": int(part["identity"].nunique()), "images": len(part)}
    query = part[part["split"] == "query"]
    if len(query):
        known = set(part.loc[part["split"] == "database", "identity"])
        new = query[~query["identity"].isin(known)]
        counts.update(database_images=len(part) - len(query), query_images=len(query),
                      new_identities=int(new["identity"].nunique()), new_images=len(new))
    return counts


def split_protocol(table: pd.DataFrame, *, train_fraction: float, val_fraction: float, unknown_fraction: float,
                   query_fraction: float, seed: int) -> Dict[str, pd.DataFrame]:
    """{"train", "test"[, "val"]}: identity-disjoint parts; test and val are open-set (database/query) sets."""
    if not 0 < train_fraction < 1:
        raise ConfigError(f"--train-fraction must be between 0 and 1, got {train_fraction}")
    test, train = identity_split(table, train_fraction, seed)
    held_out = {"test": test}
    if val_fraction > 0:
        train, held_out["val"] = identity_split(train, val_fraction, seed)
    parts = {"train": train}
    for name in ("val", "test"):
        if name in held_out:
            parts[name] = open_set_split(held_out[name], unknown_fraction=unknown_fraction,
                                         query_fraction=query_fraction, seed=seed)
    return parts


def _is_protocol_folder(folder: Path) -> bool:
    """Only an empty folder or one this script made may be replaced: --out could name anything (a
    dataset's own train/metadata.csv says nothing about who made it)."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    if not any(folder.iterdir()) or (folder / MARKER).is_file():
        return True
    try:
        record = json.loads((folder / PROTOCOL_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and set(record) == RECORD_KEYS


def build_protocol(table: pd.DataFrame, source_root: Path, out: Path, **split_args) -> Dict:
    """Write the parts of `split_protocol(table, **split_args)` under `out` (replaced as a whole, so an
    interrupted build leaves no half protocol) and return what protocol.json records."""
    out = Path(out)
    if out.exists() and not _is_protocol_folder(out):
        raise ConfigError(f"{out} exists and is not a protocol folder this script made: choose a new or empty "
                          "folder; nothing was written")
    arguments = {**SPLIT_DEFAULTS, **split_args}
    parts = split_protocol(table, **arguments)
    record = {"source": str(Path(source_root).resolve()), "arguments": arguments,
              "parts": {name: describe_part(part) for name, part in parts.items()}}
    with atomic_folder(out, may_replace=_is_protocol_folder) as staging:
        for name, part in parts.items():
            write_part(part, Path(source_root), staging / name)
        atomic_write_text(staging / PROTOCOL_FILE, json.dumps(record, indent=2) + "\n")
        (staging / MARKER).write_text(MARKER_TEXT)
    return record


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

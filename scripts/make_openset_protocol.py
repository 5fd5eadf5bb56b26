"""Build the open-set protocol from any labelled dataset: train on some individuals, test on others.

    python scripts/make_openset_protocol.py --format folders --root ../shared/data/DogFaceNet-dev --out /tmp/dogs

Splits the identities into two disjoint parts (`--train-fraction`, default half). Writes
  OUT/train/metadata.csv   the first part, every image labelled `database` (train.py data)
  OUT/test/metadata.csv    the second part in AnimalCLEF 2025 format: `--unknown-fraction` of its
                           identities only in the query (they must be predicted as new
                           individuals), the others' images split about 80/20 into database and
                           query (an identity with one image stays in the database); query rows
                           keep their true identity so eval.py can score them.
Both folders link the source images (`OUT/*/images -> ROOT`), nothing is copied. Use them as
`data.format=animalclef2025 data.root=OUT/train` (train.py) and `.../OUT/test` (eval.py).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from core.config import load_config  # noqa: E402
from core.errors import cli_entry  # noqa: E402
from core.schema import DataConfig  # noqa: E402
from data.formats import load_table  # noqa: E402
from data.splits import identity_split, open_set_split  # noqa: E402

COLUMNS = ["image_id", "identity", "path", "split", "dataset", "species", "orientation", "date", "bbox"]


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


@cli_entry
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--train-fraction", type=float, default=0.5)
    parser.add_argument("--unknown-fraction", type=float, default=0.2)
    parser.add_argument("--query-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = Path(args.root)
    table = load_table(load_config(DataConfig, None, [f"format={args.format}", f"root={root}"]))
    test, train = identity_split(table, args.train_fraction, args.seed)
    test = open_set_split(test, unknown_fraction=args.unknown_fraction, query_fraction=args.query_fraction,
                          seed=args.seed)
    out = Path(args.out)
    write_part(train, root, out / "train")
    write_part(test, root, out / "test")
    db_ids = set(test.loc[test["split"] == "database", "identity"])
    query = test[test["split"] == "query"]
    new = query[~query["identity"].isin(db_ids)]
    print(f"train: {train['identity'].nunique()} identities, {len(train)} images -> {out / 'train'}")
    print(f"test:  {test['identity'].nunique()} identities, database {len(test) - len(query)} images, "
          f"query {len(query)} images ({new['identity'].nunique()} new identities, {len(new)} images) -> {out / 'test'}")


if __name__ == "__main__":
    main(sys.argv[1:])

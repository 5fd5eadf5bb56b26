"""The AnimalCLEF 2026 format (clustering): train rows labelled, test rows to cluster, and a
development set's answers in an optional solution.csv."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict

import pandas as pd

from core.errors import DataError, list_some
from data.format_base import DATASETS, require_dir, table_from_metadata
from data.table import clean_identity, clean_text
from data.validate import read_csv, require_columns

SOLUTION_FILE = "solution.csv"  # animalclef2026: a development set's answers for the test rows (image_id, identity)


@DATASETS.register("animalclef2026")
def animalclef2026(root: Path, columns: Dict[str, str]) -> pd.DataFrame:
    """AnimalCLEF 2026 (clustering): ROOT/metadata.csv with image_id, identity, path, split, dataset
    (species and other columns optional). `train` rows are labelled (images/<dataset>/train/<identity>/...),
    `test` rows are the images to cluster (images/<dataset>/test/...); a dataset may have no train row.

    A train row without an identity is an error naming it. A test row's identity is ignored, with a
    warning: it is what the clustering must find. A development set's answers go in
    ROOT/solution.csv (image_id, identity), which only scores the clusters (metrics.json).
    """
    source = require_dir(root) / "metadata.csv"
    frame = read_csv(source)
    require_columns(frame, ["image_id", "identity", "path", "split", "dataset"], source)
    image_ids = frame["image_id"].map(lambda v: clean_text(v) or "")
    splits = frame["split"].map(lambda v: (clean_text(v) or "").lower())
    bad = ~splits.isin(["train", "test"])
    if bad.any():
        raise DataError(f"{source}: split must be train or test; {int(bad.sum())} rows have "
                        f"{list_some(sorted(set(frame['split'][bad].map(str))))} ({list_some(image_ids[bad])})")
    train = splits == "train"
    unnamed = train & frame["identity"].map(lambda v: clean_identity(v) is None)
    if unnamed.any():
        raise DataError(f"{source}: {int(unnamed.sum())} train rows have no identity (every train image must name "
                        f"its individual): {list_some(image_ids[unnamed])}")
    named_tests = ~train & frame["identity"].map(lambda v: clean_identity(v) is not None)
    if named_tests.any():
        warnings.warn(f"{source}: {int(named_tests.sum())} test rows carry an identity ({list_some(image_ids[named_tests])}); "
                      f"it is ignored: test images are what is clustered (a development set's answers go in "
                      f"{SOLUTION_FILE}, which only scores the clusters)", stacklevel=2)
        frame = frame.assign(identity=frame["identity"].where(train, None))
    table = table_from_metadata(frame, root, source, default_dataset=root.name)
    return _with_solution(table, root / SOLUTION_FILE)


def _with_solution(table: pd.DataFrame, solution: Path) -> pd.DataFrame:
    """The test rows' identities from solution.csv, when there is one (for scoring only)."""
    if not solution.is_file():
        return table
    answers = read_csv(solution)
    require_columns(answers, ["image_id", "identity"], solution)
    by_id = dict(zip(answers["image_id"].map(lambda v: clean_text(v) or ""), answers["identity"].map(clean_identity),
                     strict=True))
    tests = table["split"] == "query"
    strangers = sorted(set(by_id) - set(table.loc[tests, "image_id"]))
    if strangers:
        raise DataError(f"{solution}: {len(strangers)} image ids are not test rows of metadata.csv: {list_some(strangers)}")
    table = table.copy()
    table.loc[tests, "identity"] = table.loc[tests, "image_id"].map(lambda i: by_id.get(i))
    return table.astype(object).where(pd.notna(table), None)

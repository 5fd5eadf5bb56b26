"""Competition submission files: built from predictions, validated, written atomically.

AnimalCLEF 2025: columns `image_id,identity`, one row per query image; identity is a database
identity or `new_individual`. Kaggle Humpback: columns `Image,Id`, where Id is five distinct
space-separated guesses, each a database whale or `new_whale`. AnimalCLEF 2026 (clustering):
columns `image_id,cluster`, one row per test image; `cluster` is a string that starts with
`cluster_<dataset>_` (the image's dataset), and a cluster never spans two datasets.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Mapping, Sequence, Union

import pandas as pd

from core.csv_cells import plain_cells, safe_cells
from core.errors import ConfigError, DataError, list_some
from core.suggest import did_you_mean
from data.table import NEW_INDIVIDUAL, is_missing
from engine.metrics import HUMPBACK_NEW

COLUMNS = {"animalclef": ["image_id", "identity"], "humpback": ["Image", "Id"], "animalclef2026": ["image_id", "cluster"]}
CLUSTERS = "animalclef2026"  # the clustering submission: one cluster label per test image
NEW_LABEL = {"animalclef": NEW_INDIVIDUAL, "humpback": HUMPBACK_NEW}
GUESSES = 5

Submission = Union[pd.DataFrame, str, os.PathLike]


def submission_kind(data_format: str, requested: str = "auto", task: str = "identify") -> str:
    """The submission format: `requested`, or with "auto" the one of the task and the data format's
    competition (clustering always writes cluster labels; identifying never does)."""
    if requested == "auto":
        if task == "cluster":
            return CLUSTERS
        return "humpback" if data_format == "humpback" else "animalclef"
    if requested not in COLUMNS:
        raise ConfigError(f"submission: unknown kind '{requested}'{did_you_mean(requested, [*COLUMNS, 'auto'])}")
    if (requested == CLUSTERS) != (task == "cluster"):
        raise ConfigError(f"submission={requested} does not fit task={task}: task=cluster writes the {CLUSTERS} "
                          "submission (cluster labels), task=identify the animalclef or humpback one")
    return requested


def _check_kind(kind: str) -> None:
    if kind not in COLUMNS:
        raise ConfigError(f"unknown submission kind '{kind}'{did_you_mean(kind, COLUMNS)}")


def read_submission(path: Union[str, os.PathLike]) -> pd.DataFrame:
    """The file as text cells ('' for empty; a name written with core.csv_cells' quote before it as it
    was given), or DataError when it cannot be read as CSV."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"submission file {path} does not exist")
    try:
        return plain_cells(pd.read_csv(path, dtype=str, keep_default_na=False))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not a readable CSV file: {err}") from err


def query_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The images to predict, in table order."""
    return table[table["split"] == "query"]


def known_identities(table: pd.DataFrame) -> set:
    """Identities a prediction may name: those of labelled database images."""
    return set(table.loc[table["split"] == "database", "identity"].dropna().astype(str))


def _text(value) -> str:
    return "" if is_missing(value) else str(value).strip()


def cluster_prefix(dataset: str) -> str:
    """What every cluster label of an image of `dataset` starts with."""
    return f"cluster_{dataset}_"


def _cluster_problems(ids: pd.Series, labels: pd.Series, table: pd.DataFrame) -> List[str]:
    """Cluster labels must start with cluster_<the image's dataset>_, and a cluster holds one dataset."""
    dataset_of = dict(zip(table["image_id"].astype(str), table["dataset"], strict=True))
    known = ids.map(lambda i: i in dataset_of) & (labels != "")
    datasets = ids[known].map(dataset_of)
    prefixed = pd.Series([label.startswith(cluster_prefix(d)) for label, d in zip(labels[known], datasets, strict=True)],
                         index=datasets.index, dtype=bool)
    problems = []
    if (~prefixed).any():
        bad = (f"{i}: {v} (dataset {d})" for i, v, d in zip(ids[known][~prefixed], labels[known][~prefixed],
                                                           datasets[~prefixed], strict=True))
        problems.append(f"{int((~prefixed).sum())} cluster labels do not start with cluster_<dataset>_: {list_some(bad)}")
    spans = pd.DataFrame({"cluster": labels[known], "dataset": datasets}).groupby("cluster")["dataset"].nunique()
    spanning = spans[spans > 1].index.tolist()
    if spanning:
        problems.append(f"{len(spanning)} clusters span several datasets: {list_some(spanning)}")
    return problems


def _identity_problems(kind: str, ids: pd.Series, labels: pd.Series, known: set) -> List[str]:
    new_label = NEW_LABEL[kind]
    filled = labels != ""
    if kind == "animalclef":
        bad = filled & ~labels.isin(known | {new_label})
        return [f"{int(bad.sum())} predictions are neither a database identity nor '{new_label}': "
                f"{list_some(f'{i}: {v}' for i, v in zip(ids[bad], labels[bad], strict=True))}"] if bad.any() else []
    problems = []
    guesses = labels.str.split()
    wanted = min(GUESSES, len(known) + 1)  # a database of fewer than four whales cannot fill five
    wrong_count = filled & (guesses.map(len) != wanted)
    if wrong_count.any():
        counts = (f"{i} ({len(g)})" for i, g in zip(ids[wrong_count], guesses[wrong_count], strict=True))
        problems.append(f"{int(wrong_count.sum())} rows do not have exactly {wanted} space-separated guesses: "
                        f"{list_some(counts)}")
    repeated = filled & guesses.map(lambda g: len(set(g)) != len(g))
    if repeated.any():
        problems.append(f"{int(repeated.sum())} rows repeat a guess: {list_some(ids[repeated])}")
    unknown = sorted({g for row in guesses[filled] for g in row} - known - {new_label})
    if unknown:
        problems.append(f"{len(unknown)} guesses are neither a database whale nor '{new_label}': {list_some(unknown)}")
    return problems


def validate_submission(submission: Submission, table: pd.DataFrame, kind: str) -> List[str]:
    """Everything wrong with a submission against the dataset `table`, as sentences; [] when valid.

    Checks: missing and extra columns, rows without image id, image ids listed twice, image ids
    that are not query images, query images without a prediction, empty predictions, predicted
    identities that are not in the database (and not the new label), and for Humpback the number
    of guesses per row, repeated guesses.
    """
    _check_kind(kind)
    frame = read_submission(submission) if not isinstance(submission, pd.DataFrame) else submission
    expected = COLUMNS[kind]
    columns = [str(c) for c in frame.columns]
    problems = []
    missing = [c for c in expected if c not in columns]
    extra = [c for c in columns if c not in expected]
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)} (a {kind} submission has the columns "
                        f"{','.join(expected)}; found {','.join(columns) or 'none'})")
    if extra:
        problems.append(f"unexpected column(s) {list_some(extra)} (only {','.join(expected)} are allowed)")
    if missing:
        return problems
    ids = frame[expected[0]].map(_text).reset_index(drop=True)
    labels = frame[expected[1]].map(_text).reset_index(drop=True)
    queries = query_rows(table)["image_id"].astype(str)
    query_set = set(queries)
    if not query_set:
        problems.append("the dataset has no query images to predict")
    if (ids == "").any():
        problems.append(f"{int((ids == '').sum())} rows have no image id (rows {list_some(ids.index[ids == ''] + 2)})")
    repeated = ids[(ids != "") & ids.duplicated()].unique()
    if len(repeated):
        problems.append(f"{len(repeated)} image ids are listed more than once: {list_some(repeated)}")
    strangers = sorted(set(ids) - query_set - {""})
    if strangers:
        database = len(set(strangers) & set(table["image_id"].astype(str)))
        problems.append(f"{len(strangers)} image ids are not query images of the dataset "
                        f"({database} of them are database images): {list_some(strangers)}")
    absent = [q for q in queries if q not in set(ids)]
    if absent:
        problems.append(f"{len(absent)} of {len(queries)} query images have no prediction: {list_some(absent)}")
    empty = labels == ""
    if empty.any():
        problems.append(f"{int(empty.sum())} predictions are empty: {list_some(ids[empty])}")
    if kind == CLUSTERS:
        return problems + _cluster_problems(ids, labels, table)
    return problems + _identity_problems(kind, ids, labels, known_identities(table))


def check_submission(submission: Submission, table: pd.DataFrame, kind: str) -> None:
    """Raise DataError listing every problem `validate_submission` finds."""
    problems = validate_submission(submission, table, kind)
    if problems:
        name = "the submission" if isinstance(submission, pd.DataFrame) else f"submission {submission}"
        raise DataError(f"{name} is not a valid {kind} submission:\n  - " + "\n  - ".join(problems))


def build_submission(kind: str, table: pd.DataFrame,
                     predictions: Union[Sequence, Mapping[str, object]]) -> pd.DataFrame:
    """The submission frame: one row per query image of `table`, in table order.

    `predictions` is aligned with the query rows, or maps image_id -> prediction. AnimalCLEF: an
    identity or `new_individual`; Humpback: a list of guesses (or one space-separated string);
    AnimalCLEF 2026: a cluster label.
    """
    _check_kind(kind)
    ids = query_rows(table)["image_id"].astype(str).tolist()
    if isinstance(predictions, Mapping):
        values = [predictions.get(i) for i in ids]
    else:
        values = list(predictions)
        if len(values) != len(ids):
            raise ValueError(f"{len(values)} predictions for {len(ids)} query images")
    if kind == "humpback":
        values = [" ".join(v) if isinstance(v, (list, tuple)) else v for v in values]
    return pd.DataFrame({COLUMNS[kind][0]: ids, COLUMNS[kind][1]: [_text(v) for v in values]})


def write_submission(path: Union[str, os.PathLike], kind: str, table: pd.DataFrame,
                     predictions: Union[Sequence, Mapping[str, object]]) -> Path:
    """Validate, then write atomically (a temporary name renamed into place): an invalid submission
    raises DataError and a failed write leaves no file, never a half-written one."""
    frame = build_submission(kind, table, predictions)
    check_submission(frame, table, kind)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        safe_cells(frame).to_csv(temporary, index=False)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path

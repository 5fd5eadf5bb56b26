"""review.npz: what a person needs to review a run's decisions, written beside its submission.

Both tasks write the same record (`ReviewData`): every image of the run (gallery or train rows
first, then the queries or test images, as `rows` orders them) with what the page shows of it,
the candidate pairs the run decided on with their calibrated P(same individual) (task=cluster:
the graph's edges, with each scorer's own calibrated score; task=identify: each query with the
best database image of each of its candidate identities, at the identity's fused probability),
the threshold each dataset was decided at, and for clustering the method and the labels it gave.
From it `engine/review` re-decides a run under a person's answers without its models.

The file is an uncompressed npz of plain arrays (strings as fixed-width unicode) and one JSON
string, read with allow_pickle=False: nothing in it is executed, and every array is checked for
its type and length when it is read.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pandas as pd

from core.errors import DataError
from core.files import save_npz_atomic
from data.table import is_missing

REVIEW_FILE = "review.npz"
ANSWERS_FILE = "review-answers.sqlite"  # where reidzoo-review keeps a person's answers, in the run folder
FORMAT = 1
TEXT_COLUMNS = ("image_id", "dataset", "identity", "path", "species", "orientation", "date")


@dataclass
class ReviewSettings:
    """The scalars of a review record (its JSON part)."""

    task: str  # identify | cluster
    kind: str  # the submission kind (engine.outputs.submission)
    thresholds: Dict[str, float]  # per dataset, the threshold its decisions were made at
    own_threshold: Dict[str, bool]  # per dataset: tuned on its own labelled images (False: transferred or given)
    scorers: List[str] = field(default_factory=list)  # names of pair_scores' columns
    stages: List[str] = field(default_factory=list)  # each scorer's stage: global | shortlist
    method: str = ""  # task=cluster: the clusterer, with its arguments and whether train images anchor
    method_args: Dict[str, Any] = field(default_factory=dict)
    anchors: bool = True
    image_roots: List[str] = field(default_factory=list)  # every image lies under one of these folders
    format: int = FORMAT


@dataclass
class ReviewData:
    settings: ReviewSettings
    images: pd.DataFrame  # TEXT_COLUMNS as str ('' = none), is_query (bool), bbox (list or None)
    pair_a: np.ndarray  # (E,) image rows; identify: the query
    pair_b: np.ndarray  # (E,) image rows; identify: the candidate identity's best database image
    pair_p: np.ndarray  # (E,) fused calibrated P(same individual)
    pair_scores: np.ndarray  # (E, len(scorers)) each scorer's calibrated score, NaN where not computed
    cluster: np.ndarray  # (N,) task=cluster: the run's cluster code of every image (-1 with identify)


def image_frame(rows: pd.DataFrame, n_gallery: int) -> pd.DataFrame:
    """The images' columns as ReviewData keeps them, from a run's rows (gallery, then queries). A
    query's identity is left out even where the data holds it (a development set's answers): what
    a reviewer sees and what the review decides must not know it."""
    frame = pd.DataFrame({c: ["" if is_missing(v) else str(v) for v in rows[c]] for c in TEXT_COLUMNS})
    frame["is_query"] = np.arange(len(rows)) >= n_gallery
    frame.loc[frame["is_query"], "identity"] = ""
    frame["bbox"] = [[float(v) for v in b] if isinstance(b, (list, tuple, np.ndarray)) else None for b in rows["bbox"]]
    return frame


def image_roots(paths) -> List[str]:
    """The folder every image lies under (the one the review program may serve images from)."""
    paths = [os.path.abspath(p) for p in paths]
    return [os.path.dirname(paths[0]) if len(paths) == 1 else os.path.commonpath(paths)] if paths else []


def save_review(path: Path, data: ReviewData) -> None:
    images = data.images
    bbox = np.array([b if b is not None else [np.nan] * 4 for b in images["bbox"]], np.float64).reshape(-1, 4)
    arrays = {f"image_{c}": np.asarray(images[c].tolist(), dtype=str) for c in TEXT_COLUMNS}
    arrays.update(image_is_query=images["is_query"].to_numpy(bool), image_bbox=bbox,
                  pair_a=np.asarray(data.pair_a, np.int64), pair_b=np.asarray(data.pair_b, np.int64),
                  pair_p=np.asarray(data.pair_p, np.float64),
                  pair_scores=np.asarray(data.pair_scores, np.float64).reshape(len(data.pair_a), len(data.settings.scorers)),
                  cluster=np.asarray(data.cluster, np.int64),
                  settings=np.array([json.dumps(asdict(data.settings), sort_keys=True)]))
    save_npz_atomic(path, arrays)


def _damaged(path: Path, why: str) -> DataError:
    return DataError(f"{path} cannot be reviewed: {why} (run eval.py again to write it)")


def _array(found, name: str, path: Path, kind: str, length: int = -1, dims: int = 1) -> np.ndarray:
    if name not in found.files:
        raise _damaged(path, f"it has no {name}")
    array = found[name]
    if array.dtype.kind != kind or array.ndim != dims or (length >= 0 and len(array) != length):
        raise _damaged(path, f"its {name} is not what this version writes")
    return array


def load_review(path: Path) -> ReviewData:
    """The record of `path`, every array checked (DataError for a damaged or foreign file)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist: the run was made before eval.py wrote {REVIEW_FILE}, "
                        "or is not an eval.py run folder (run eval.py again)")
    try:
        found = np.load(path, allow_pickle=False)
        settings_text = str(_array(found, "settings", path, "U", 1)[0])
        n = len(_array(found, "image_image_id", path, "U"))
        columns = {c: _array(found, f"image_{c}", path, "U", n).tolist() for c in TEXT_COLUMNS}
        is_query = _array(found, "image_is_query", path, "b", n)
        bbox = _array(found, "image_bbox", path, "f", n, 2)
        edges = len(_array(found, "pair_a", path, "i"))
        pair_a, pair_b = found["pair_a"], _array(found, "pair_b", path, "i", edges)
        pair_p = _array(found, "pair_p", path, "f", edges)
        pair_scores = _array(found, "pair_scores", path, "f", edges, 2)
        cluster = _array(found, "cluster", path, "i", n)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise _damaged(path, f"it is not a readable npz file ({err})") from err
    try:
        raw = json.loads(settings_text)
        settings = ReviewSettings(**raw)
    except (ValueError, TypeError) as err:
        raise _damaged(path, f"its settings are not what this version writes ({err})") from err
    if settings.format != FORMAT or settings.task not in ("identify", "cluster"):
        raise _damaged(path, f"it is format {settings.format} of task {settings.task!r}, this version reads format {FORMAT}")
    if edges and (min(pair_a.min(), pair_b.min()) < 0 or max(pair_a.max(), pair_b.max()) >= n):
        raise _damaged(path, "a pair names an image it does not hold")
    if pair_scores.shape[1] != len(settings.scorers) or bbox.shape[1] != 4:
        raise _damaged(path, "its arrays do not fit its settings")
    images = pd.DataFrame(columns)
    images["is_query"] = is_query
    images["bbox"] = [None if np.isnan(b).any() else b.tolist() for b in bbox]
    return ReviewData(settings, images, pair_a, pair_b, pair_p, pair_scores, cluster)

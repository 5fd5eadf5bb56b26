"""predictions.csv: eval.py's decision for each query, for people rather than a competition server.

One row per query image, in table order: `file` (with data.query_root, the photo's path relative to
that folder; otherwise its path relative to data.root, or absolute where it lies elsewhere, as the
generated synthetic set does), `prediction` (a database identity or `new_individual`), `known`
(true when a database identity was predicted), then `top1_identity, top1_score, ...,
top5_identity, top5_score`: the ensemble's identity ranking with its fused calibrated scores (the
soft vote's estimate that the query shows that individual), best first. A query with fewer
candidates (a gallery of fewer than five identities) leaves the remaining cells empty.

Written on every run, beside submission.csv, whether or not the queries carry labels.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Union

import pandas as pd

from core.csv_cells import safe_cells
from core.files import atomic_write_text
from core.schema import DataConfig
from data.table import NEW_INDIVIDUAL
from engine.identify.decision import Evaluation

PREDICTIONS = "predictions.csv"
TOP = 5
SCORE_DIGITS = 4


def columns(top: int = TOP) -> List[str]:
    return ["file", "prediction", "known"] + [f"top{i}_{part}" for i in range(1, top + 1) for part in ("identity", "score")]


def _images_root(data: DataConfig) -> str:
    """The folder the user's image paths are relative to ('' when there is none: a generated set)."""
    if not data.root or data.format == "synthetic":
        return ""
    root = Path(data.root).expanduser()
    return os.path.abspath(root if root.is_dir() else root.parent)


def query_files(data: DataConfig, query: pd.DataFrame) -> List[str]:
    """Each query's file as the user knows it (see the module docstring)."""
    if data.query_root:
        return query["image_id"].astype(str).tolist()
    root = _images_root(data)
    files = []
    for path in query["path"]:
        relative = os.path.relpath(path, root) if root else ""
        files.append(Path(relative).as_posix() if relative and not relative.startswith("..") else str(path))
    return files


def predictions_frame(data: DataConfig, query: pd.DataFrame, ev: Evaluation, top: int = TOP) -> pd.DataFrame:
    rows = []
    for file, decided, candidates in zip(query_files(data, query), ev.decided, ev.candidates, strict=True):
        row = {"file": file, "prediction": str(decided), "known": "false" if decided == NEW_INDIVIDUAL else "true"}
        for rank in range(1, top + 1):
            identity, score = candidates[rank - 1] if rank <= len(candidates) else ("", None)
            row[f"top{rank}_identity"] = str(identity)
            row[f"top{rank}_score"] = "" if score is None else f"{float(score):.{SCORE_DIGITS}f}"
        rows.append(row)
    return pd.DataFrame(rows, columns=columns(top))


def write_predictions(path: Union[str, os.PathLike], data: DataConfig, query: pd.DataFrame, ev: Evaluation) -> Path:
    """Write predictions.csv atomically; returns its path."""
    path = Path(path)
    atomic_write_text(path, safe_cells(predictions_frame(data, query, ev)).to_csv(index=False))
    return path

"""Validation during training: open-set retrieval metrics on held-out identities.

The held-out identities are split into database and query images (some identities only in the
query: they must come out as new individuals). We report rank-1 and mAP over the known queries,
and BAKS, BAUS and their geometric mean at the best threshold for this split, which is the
right yardstick for choosing a checkpoint (eval.py tunes its threshold without query labels).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
import torch

from core.schema import RetrievalConfig
from data.dataset import ReIDDataset
from engine.extraction import extract_embeddings, nonfinite_rows
from engine.metrics import baks, baus, cmc, geometric_mean, mean_average_precision
from engine.openset import decide, tune_threshold
from engine.retrieval import retrieve
from engine.visual import match_grid

GRID_QUERIES = 8
METRICS = ("rank1", "mAP", "BAKS", "BAUS", "geometric_mean", "threshold")
THUMBNAIL = 64


def open_set_metrics(
    db_emb: np.ndarray, db_ids: np.ndarray, q_emb: np.ndarray, q_ids: np.ndarray, k: int = 50
) -> Tuple[Dict[str, float], np.ndarray]:
    """Metrics of one database/query split; also returns the top image matches per query."""
    result = retrieve(q_emb, db_emb, db_ids, RetrievalConfig(k=min(k, len(db_ids)), index="flat", use_gpu=False))
    best_ids, best_scores = result.best()
    known = set(db_ids.tolist())
    threshold = tune_threshold(best_scores, best_ids, q_ids, known, per_dataset=False).overall
    predicted = decide(best_ids, best_scores, threshold)
    known_part, unknown_part = baks(q_ids, predicted, known), baus(q_ids, predicted, known)
    metrics = {  # in the order of METRICS
        "rank1": cmc(result.ranked_identities(), q_ids, ks=(1,), gallery_identities=known)["rank1"],
        "mAP": mean_average_precision(result.image_labels(), q_ids, gallery_labels=db_ids),
        "BAKS": known_part,
        "BAUS": unknown_part,
        "geometric_mean": geometric_mean(known_part, unknown_part),
        "threshold": threshold,
    }
    # A NaN metric stays NaN: as 0 it would read as a model that fails, which it may not be.
    return {name: float(value) for name, value in metrics.items()}, result.indices


def undefined_metrics(metrics: Dict[str, float]) -> List[str]:
    """The metrics that are NaN."""
    return [name for name, value in metrics.items() if math.isnan(value)]


def improves(value: float, best: Optional[float]) -> bool:
    """Whether a validation `value` beats the `best` so far: NaN never does, and any number beats NaN."""
    if math.isnan(value):
        return False
    return best is None or math.isnan(best) or value > best


def validate(
    model: torch.nn.Module, dataset: ReIDDataset, table: pd.DataFrame, accelerator, *, batch_size: int
) -> Tuple[Dict[str, float], Optional[torch.Tensor]]:
    was_training = model.training
    embeddings = extract_embeddings(model, dataset, batch_size=batch_size, accelerator=accelerator, progress=False)
    model.train(was_training)
    broken = nonfinite_rows(embeddings)
    if len(broken):
        # Retrieval would rank NaN similarities in an arbitrary order and score that as a model.
        accelerator.print(f"warning: {len(broken)} of {len(embeddings)} validation embeddings are NaN or infinite "
                          "(the model's weights or running statistics diverged): every validation metric is NaN")
        return dict.fromkeys(METRICS, math.nan), None
    is_db = (table["split"] == "database").to_numpy()
    ids = table["identity"].to_numpy(dtype=object)
    metrics, top = open_set_metrics(embeddings[is_db], ids[is_db], embeddings[~is_db], ids[~is_db])
    grid = None
    if accelerator.is_main_process:
        grid = _grid(dataset, np.flatnonzero(is_db), np.flatnonzero(~is_db), ids, top)
    return metrics, grid


def _grid(dataset: ReIDDataset, db_rows, q_rows, ids, top) -> torch.Tensor:
    import cv2

    def thumb(row: int) -> np.ndarray:
        return cv2.resize(dataset.load_image(int(row)), (THUMBNAIL, THUMBNAIL), interpolation=cv2.INTER_AREA)

    picks = np.linspace(0, len(q_rows) - 1, num=min(GRID_QUERIES, len(q_rows))).astype(int)
    queries: List[np.ndarray] = [thumb(q_rows[p]) for p in picks]
    matches = [[thumb(db_rows[j]) for j in top[p, :5]] for p in picks]
    correct = [[ids[db_rows[j]] == ids[q_rows[p]] for j in top[p, :5]] for p in picks]
    return match_grid(queries, matches, correct)

"""The pairs a person may review after task=identify: each query with the best database image of
each of its candidate identities, at the identity's fused calibrated probability (what the
decision compared with the threshold). The image shown for an identity is the first of its images
in the shortlist or in an embedding scorer's ranking of that query, else its first database image.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import pandas as pd

from core.schema import EvalConfig
from engine.identify.decision import Evaluation
from engine.openset import thresholds_for
from engine.outputs.review_file import ReviewData, ReviewSettings, image_frame, image_roots

CANDIDATES = 10  # candidate identities per query a person may be asked about


def _shown_rows(ev: Evaluation, q: int, labels: np.ndarray) -> Dict[str, int]:
    """identity -> the database row shown for it, for query position q."""
    ranked: List[np.ndarray] = [] if ev.shortlist is None else [ev.shortlist[q]]
    ranked += [ranking.indices[q] for ranking in ev.rankings.values()]
    shown: Dict[str, int] = {}
    for rows in ranked:
        for row in rows[rows >= 0].tolist():
            shown.setdefault(labels[row], row)
    return shown


def identify_review(cfg: EvalConfig, rows: pd.DataFrame, gallery: pd.DataFrame, query: pd.DataFrame,
                    ev: Evaluation, kind: str) -> ReviewData:
    n_gallery = len(gallery)
    labels = gallery["identity"].to_numpy(dtype=object)
    first_row = {identity: int(row) for row, identity in reversed(list(enumerate(labels)))}
    a, b, p = [], [], []
    for q, candidates in enumerate(ev.candidates):
        shown = _shown_rows(ev, q, labels)
        for identity, score in candidates[:CANDIDATES]:
            a.append(n_gallery + q)
            b.append(shown.get(identity, first_row[identity]))
            p.append(float(score))
    datasets = sorted(set(query["dataset"]))
    limits = thresholds_for(datasets, ev.threshold.threshold, len(datasets))
    tuned = cfg.threshold.value is None
    settings = ReviewSettings("identify", kind, dict(zip(datasets, limits.tolist(), strict=True)),
                              {d: tuned and (d in ev.threshold.threshold.per_dataset or len(datasets) == 1)
                               for d in datasets}, image_roots=image_roots(rows["path"]))
    return ReviewData(settings, image_frame(rows, n_gallery), np.array(a, np.int64), np.array(b, np.int64),
                      np.array(p), np.zeros((len(a), 0)), np.full(len(rows), -1, np.int64))

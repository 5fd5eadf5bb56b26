"""A dataset's threshold re-fitted from a person's answers, once there are enough of them.

Every *same* / *different* answer is a labelled pair at the probability the run gave it. With at
least `min_answers` of them in a dataset, `min_each` of each kind, the threshold becomes the one
that best separates them (balanced accuracy: a wrong *same* and a wrong *different* weigh alike,
whatever their numbers), the nearest to the current threshold among equals. The pairs asked lie
near the decision, which is where a threshold is decided.

`refit` says where: `auto` only on datasets whose threshold was not tuned on their own labelled
images (transferred from other datasets, or given), which is where a run's threshold is least
trusted (a dataset with no labelled photos at all); `always` on every dataset; `never`.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

REFITS = ("auto", "always", "never")
MIN_ANSWERS = 30
MIN_EACH = 5


def best_threshold(p: np.ndarray, same: np.ndarray, current: float) -> float:
    """The threshold of best balanced accuracy on the answered pairs (nearest `current` among ties)."""
    p = np.asarray(p, np.float64)
    same = np.asarray(same, bool)
    values = np.unique(p)
    cuts = np.concatenate([[values[0] - 1e-6], (values[1:] + values[:-1]) / 2, [values[-1] + 1e-6], [current]])
    above = p[None, :] >= cuts[:, None]
    accuracy = (above[:, same].mean(axis=1) + (~above[:, ~same]).mean(axis=1)) / 2
    best = np.flatnonzero(np.isclose(accuracy, accuracy.max(), rtol=0, atol=1e-12))
    return float(cuts[best[np.argmin(np.abs(cuts[best] - current))]])


def refitted(p: np.ndarray, same: np.ndarray, current: float, min_answers: int = MIN_ANSWERS,
             min_each: int = MIN_EACH) -> Optional[float]:
    """The re-fitted threshold, or None while the answers are too few."""
    same = np.asarray(same, bool)
    if len(same) < min_answers or same.sum() < min_each or (~same).sum() < min_each:
        return None
    return best_threshold(p, same, current)

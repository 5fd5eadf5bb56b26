"""A dataset's threshold re-fitted from a person's answers, once there are enough of them.

Every *same* / *different* answer is a labelled pair at the probability the run gave it. With at
least `min_answers` of them in a dataset, `min_each` of each kind, the threshold becomes the one
that best separates them (balanced accuracy: a wrong *same* and a wrong *different* weigh alike,
whatever their numbers), the nearest to the current threshold among equals. The pairs asked lie
near the decision, which is where a threshold is decided.

For identification a pair's probability against the threshold is the decision itself, so the
threshold that separates the answered pairs best is chosen (`best_threshold`). A clustering
decides pairs through their clusters: two photos a threshold leaves unlinked still share a cluster
through photos between them, so the threshold that separates the answered pairs' edges best splits
the clusters far too much (results.md, "A person in the loop"). A clustering's threshold is chosen by how well the
clusters each candidate makes, without the answers, agree with them (`best_partition_threshold`).

`refit` says where: `auto` only on datasets whose threshold was not tuned on their own labelled
images (transferred from other datasets, or given), which is where a run's threshold is least
trusted (a dataset with no labelled photos at all); `always` on every dataset; `never`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from engine.scoring.calibration import Calibrator, fit_calibrator

REFITS = ("auto", "always", "never")
MIN_ANSWERS = 30
MIN_EACH = 5
MOST_CANDIDATES = 24  # clusterings made per re-fit: each costs a clustering of the dataset


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


def enough(same: np.ndarray, min_answers: int = MIN_ANSWERS, min_each: int = MIN_EACH) -> bool:
    """Whether the answers are enough to re-fit from: `min_answers` of them, `min_each` of each kind."""
    same = np.asarray(same, bool)
    return len(same) >= min_answers and same.sum() >= min_each and (~same).sum() >= min_each


def refitted(p: np.ndarray, same: np.ndarray, current: float, min_answers: int = MIN_ANSWERS,
             min_each: int = MIN_EACH) -> Optional[float]:
    """The re-fitted threshold, or None while the answers are too few."""
    if not enough(same, min_answers, min_each):
        return None
    return best_threshold(p, same, current)


def candidate_thresholds(p: np.ndarray, current: float, most: int = MOST_CANDIDATES) -> np.ndarray:
    """The current threshold and cuts between the answered probabilities, at most `most` of those
    (evenly spread over their quantiles), in increasing order."""
    values = np.unique(np.asarray(p, np.float64))
    cuts = np.concatenate([[values[0] - 1e-6], (values[1:] + values[:-1]) / 2, [values[-1] + 1e-6]])
    if len(cuts) > most:
        cuts = cuts[np.unique(np.round(np.linspace(0, len(cuts) - 1, most)).astype(int))]
    return np.unique(np.concatenate([cuts, [current]]))


def best_partition_threshold(thresholds: np.ndarray, labelings: Sequence[np.ndarray], a: np.ndarray,
                             b: np.ndarray, same: np.ndarray, current: float) -> float:
    """The threshold whose labeling puts the answered pairs (a[i], b[i]) together where a person said
    *same* and apart where *different* with the best balanced accuracy (nearest `current` among ties)."""
    same = np.asarray(same, bool)
    accuracy = np.array([((labels[a] == labels[b])[same].mean() + (labels[a] != labels[b])[~same].mean()) / 2
                         for labels in labelings])
    best = np.flatnonzero(np.isclose(accuracy, accuracy.max(), rtol=0, atol=1e-12))
    return float(thresholds[best[np.argmin(np.abs(thresholds[best] - current))]])


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def answers_calibration(p: np.ndarray, same: np.ndarray, min_answers: int = MIN_ANSWERS,
                        min_each: int = MIN_EACH) -> Optional[Calibrator]:
    """The run's probabilities re-calibrated on the answered pairs (Platt scaling of their logits:
    two parameters, so a few dozen answers near the threshold fit it, and it extends monotonically
    beyond them), or None while the answers are too few."""
    if not enough(same, min_answers, min_each):
        return None
    return fit_calibrator(_logit(p), np.asarray(same, bool), "logistic")


def recalibrated(calibration: Optional[Calibrator], p: np.ndarray) -> np.ndarray:
    """`p` through `calibration` (unchanged without one)."""
    return np.asarray(p, np.float64) if calibration is None else calibration(_logit(p))

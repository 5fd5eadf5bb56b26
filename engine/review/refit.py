"""A dataset's threshold re-fitted from a person's answers, once there are enough of them.

Every *same* / *different* answer is a labelled pair at the probability the run gave it. With at
least `min_answers` of them in a dataset, `min_each` of each kind, the threshold is re-fitted;
among equals the one nearest the current threshold.

For identification a pair's probability against the threshold is the decision itself, so the
threshold that best separates the answered pairs is chosen (`best_threshold`, by balanced
accuracy: a wrong *same* and a wrong *different* weigh alike, whatever their numbers). A clustering
decides pairs through their clusters, and most of the pairs a threshold decides are never asked:
the pairs asked are those the selector found worth asking, not a sample, so the threshold whose
clusters agree best with them alone splits or merges everything else (results.md, "A person in the
loop"). A clustering's threshold is the one whose clusters, made without the answers, score the
best ARI expected over all the dataset's edges (`best_expected_threshold`): an answered edge is
what the person said, every other edge is one individual with its probability re-calibrated on the
answers, and a pair the graph does not hold is two individuals. Chosen against both the answered
pairs alone and no re-fit, on the datasets of the validation parts each treated as unlabelled
(results.md).

`refit` says where: `auto` only on datasets whose threshold was not tuned on their own labelled
images (transferred from other datasets, or given), which is where a run's threshold is least
trusted (a dataset with no labelled photos at all); `always` on every dataset; `never`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from engine.cluster.criteria import ari_of_pairs
from engine.cluster.graph import Graph
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


def expected_ari(labels: np.ndarray, i: np.ndarray, j: np.ndarray, q: np.ndarray) -> float:
    """The ARI that `labels` (a cluster per node) is expected to score if the pair (i[e], j[e]) is one
    individual with probability q[e] and every pair outside those edges is two individuals: the pair
    counts' expectations in ARI's formula. Where individuals have more photos than the graph has
    neighbours, the pairs it leaves out make merging look worse than it is (results.md)."""
    _, labels = np.unique(np.asarray(labels), return_inverse=True)
    n = len(labels)
    sizes = np.bincount(labels).astype(np.float64)
    joined = float((sizes * (sizes - 1) / 2).sum())
    return ari_of_pairs(float(np.sum(q[labels[i] == labels[j]])), joined, float(np.sum(q)), n * (n - 1) / 2)


def with_answers(graph: Graph, q: np.ndarray, a: np.ndarray, b: np.ndarray, same: np.ndarray) -> np.ndarray:
    """`q` (per edge of `graph`) with each answered pair (a[k], b[k]) that is an edge set to what the
    person said: 1 for *same*, 0 for *different*; answered pairs the graph does not hold change nothing."""
    q = np.array(q, np.float64)
    edges = graph.i.astype(np.int64) * graph.n + graph.j
    asked = np.minimum(a, b).astype(np.int64) * graph.n + np.maximum(a, b)
    if len(edges) and len(asked):
        order = np.argsort(edges)
        at = order[np.minimum(np.searchsorted(edges, asked, sorter=order), len(edges) - 1)]
        found = edges[at] == asked
        q[at[found]] = np.asarray(same, np.float64)[found]
    return q


def best_expected_threshold(thresholds: np.ndarray, labelings: Sequence[np.ndarray], i: np.ndarray, j: np.ndarray,
                            q: np.ndarray, current: float) -> float:
    """The threshold whose labeling has the best expected_ari (nearest `current` among ties)."""
    scores = np.array([expected_ari(labels, i, j, q) for labels in labelings])
    best = np.flatnonzero(np.isclose(scores, scores.max(), rtol=0, atol=1e-12))
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

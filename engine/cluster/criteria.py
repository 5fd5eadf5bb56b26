"""What the clustering threshold is tuned for on the held-out train identities (`cluster.criterion`).

* `ari`: the adjusted Rand index, AnimalCLEF 2026's score. It counts pairs of images, so an
  individual with many photos weighs with the square of their number: one wrong merge of two
  well-photographed individuals costs more than many singletons split off.
* `ami`: the adjusted mutual information, which weighs images rather than pairs and punishes
  over-merging harder than ARI does (an AnimalCLEF 2026 team found ARI-tuned thresholds merge too much).
* `count`: minus |log(clusters / individuals)|: the threshold at which the validation images form as
  many clusters as they show individuals: `cluster.count_criterion`, the threshold the population
  estimate is read at (population.py), is tuned for it unless set to the clusters' own criterion.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.sparse import csr_matrix
from sklearn.metrics.cluster._expected_mutual_info_fast import expected_mutual_information

from core.registry import Registry
from engine.cluster.search import TIE, best_of_curve

CRITERIA = Registry("cluster_criterion", name_attribute="name")


class Criterion(ABC):
    name = ""  # the registered name

    @abstractmethod
    def score(self, truth: np.ndarray, labels: np.ndarray) -> float:
        """Agreement of a clustering with the true identities: higher is better."""

    def choose(self, curve: Sequence[float], grid: Sequence[float]) -> float:
        """The threshold of `grid` this criterion's `curve` picks: the middle of its best plateau."""
        return best_of_curve(curve, grid)


def codes(values) -> np.ndarray:
    """0, 1, ... per distinct value (integers in their sorted order, anything else in order of first
    appearance): the same partition, as small integers."""
    array = np.asarray(values)
    if array.dtype.kind in "iub":
        return np.unique(array, return_inverse=True)[1].astype(np.int64).ravel()
    return pd.factorize(pd.Series(np.asarray(values, dtype=object)))[0].astype(np.int64)


def _pairs(counts: np.ndarray) -> float:
    return float((counts * (counts - 1)).sum() / 2)


@CRITERIA.register("ari")
class ARI(Criterion):
    """sklearn's adjusted_rand_score from its pair confusion matrix, in numpy: the bootstrap of the
    count's interval (population.py) scores every threshold hundreds of times."""


    def score(self, truth, labels):
        t, c = codes(truth), codes(labels)
        n = len(t)
        together = _pairs(np.unique(t * (int(c.max(initial=0)) + 1) + c, return_counts=True)[1])
        same, joined = _pairs(np.bincount(t)), _pairs(np.bincount(c))
        return ari_of_pairs(together, joined, same, n * (n - 1) / 2)


def ari_of_pairs(together: float, joined: float, same: float, pairs: float) -> float:
    """ARI from pair counts: `together` pairs of one identity in one cluster, `joined` pairs in one
    cluster, `same` pairs of one identity, among `pairs` (sklearn's formula; counts may be expected
    values, engine/review/refit.py)."""
    tp, fp, fn = together, joined - together, same - together
    tn = pairs - tp - fp - fn
    if fn == 0 and fp == 0:
        return 1.0
    return float(2 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)))


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _away_from_zero(value: float) -> float:
    tiny = np.finfo(np.float64).eps
    return min(value, -tiny) if value < 0 else max(value, tiny)


@CRITERIA.register("ami")
class AMI(Criterion):
    """sklearn's adjusted_mutual_info_score (arithmetic mean) from the contingency counts, with
    sklearn's own expected mutual information, without its input checks: the bootstrap of the
    count's interval scores every threshold hundreds of times."""

    def score(self, truth, labels):
        t, c = codes(truth), codes(labels)
        n_classes, n_clusters = int(t.max(initial=-1)) + 1, int(c.max(initial=-1)) + 1
        if n_classes == n_clusters and n_classes <= 1:
            return 1.0
        if n_classes == 1 or n_clusters == 1:
            return 0.0
        cell, counts = np.unique(t * n_clusters + c, return_counts=True)
        contingency = csr_matrix((counts, (cell // n_clusters, cell % n_clusters)), shape=(n_classes, n_clusters))
        row, column, n = np.bincount(t).astype(np.float64), np.bincount(c).astype(np.float64), float(len(t))
        mi = float((counts / n * (np.log(counts * n) - np.log(row[cell // n_clusters] * column[cell % n_clusters]))).sum())
        expected = float(expected_mutual_information(contingency, int(n)))
        normaliser = (_entropy(row) + _entropy(column)) / 2
        return float(_away_from_zero(mi - expected) / _away_from_zero(normaliser - expected))


@CRITERIA.register("count")
class Count(Criterion):
    def score(self, truth, labels):
        return -abs(float(np.log(len(np.unique(labels)) / len(np.unique(truth))))) if len(truth) else 0.0

    def choose(self, curve, grid):
        """The highest of the best: below the threshold where the count is right, anchors often hold
        it there (two identities' anchors never merge) while the clusters themselves merge more and
        more, so a plateau's middle would merge what the count does not see."""
        values = np.asarray(curve, dtype=np.float64)
        return float(grid[int(np.flatnonzero(np.isclose(values, values.max(), rtol=0, atol=TIE))[-1])])

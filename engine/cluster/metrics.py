"""Clustering metrics: ARI, AMI, pairwise precision / recall / F1, B-cubed F1, population estimate.

A clustering is one label per image; the truth is one identity per image. Every metric here is
computed per `dataset` (AnimalCLEF 2026 scores each dataset on its own, then takes the plain mean)
over the images whose truth is known. ARI and AMI come from sklearn.metrics; the pair counts and
B-cubed figures come from sklearn's contingency matrix:

* **pairwise**: over all pairs of images, a pair is predicted "same" when the two share a cluster
  and truly "same" when they share an identity; precision = TP / predicted pairs, recall = TP /
  true pairs, F1 their harmonic mean (NaN parts where a clustering has no pair at all).
* **B-cubed**: per image, precision = share of its cluster that has its identity, recall = share
  of its identity that is in its cluster; averaged over images, then F1.
* **population**: the number of clusters against the number of individuals, and their ratio.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score
from sklearn.metrics.cluster import contingency_matrix

from data.table import clean_identity

SCORES = ("ARI", "AMI", "pairwise_precision", "pairwise_recall", "pairwise_F1", "bcubed_precision",
          "bcubed_recall", "bcubed_F1")


def _f1(precision: float, recall: float) -> float:
    """Harmonic mean; 0 when either part is 0, NaN when the other is undefined."""
    if precision == 0 or recall == 0:
        return 0.0
    if math.isnan(precision) or math.isnan(recall):
        return math.nan
    return 2 * precision * recall / (precision + recall)


def _pairs(counts: np.ndarray) -> float:
    counts = np.asarray(counts, dtype=np.float64)
    return float((counts * (counts - 1) / 2).sum())


def pairwise_scores(truth: Sequence, clusters: Sequence) -> Dict[str, float]:
    """Pair-counting precision, recall and F1 (see the module doc)."""
    table = contingency_matrix(np.asarray(truth, dtype=object).astype(str), np.asarray(clusters, dtype=object).astype(str),
                               sparse=True)
    together = _pairs(table.data)
    predicted = _pairs(np.asarray(table.sum(axis=0)).ravel())
    actual = _pairs(np.asarray(table.sum(axis=1)).ravel())
    precision = together / predicted if predicted else math.nan
    recall = together / actual if actual else math.nan
    return {"pairwise_precision": precision, "pairwise_recall": recall, "pairwise_F1": _f1(precision, recall)}


def bcubed_scores(truth: Sequence, clusters: Sequence) -> Dict[str, float]:
    """B-cubed precision, recall and F1 (Bagga and Baldwin): per-image shares, averaged over images."""
    table = contingency_matrix(np.asarray(truth, dtype=object).astype(str), np.asarray(clusters, dtype=object).astype(str),
                               sparse=True).tocoo()
    n = float(table.sum())
    if n == 0:
        return {"bcubed_precision": math.nan, "bcubed_recall": math.nan, "bcubed_F1": math.nan}
    cluster_sizes = np.asarray(table.sum(axis=0)).ravel()
    identity_sizes = np.asarray(table.sum(axis=1)).ravel()
    # Every image in cell (identity i, cluster c) has precision n_ic / |c| and recall n_ic / |i|.
    cells = table.data.astype(np.float64)
    precision = float((cells * cells / cluster_sizes[table.col]).sum() / n)
    recall = float((cells * cells / identity_sizes[table.row]).sum() / n)
    return {"bcubed_precision": precision, "bcubed_recall": recall, "bcubed_F1": _f1(precision, recall)}


def cluster_scores(truth: Sequence, clusters: Sequence) -> Dict[str, float]:
    """Every score of one dataset's clustering against its identities, plus the population estimate."""
    truth = np.asarray(truth, dtype=object).astype(str)
    clusters = np.asarray(clusters, dtype=object).astype(str)
    if len(truth) != len(clusters):
        raise ValueError(f"{len(truth)} identities for {len(clusters)} cluster labels")
    if len(truth) == 0:
        return {**{name: math.nan for name in SCORES}, "images": 0, "clusters": 0, "individuals": 0,
                "population_ratio": math.nan}
    individuals, found = len(set(truth)), len(set(clusters))
    return {"ARI": float(adjusted_rand_score(truth, clusters)), "AMI": float(adjusted_mutual_info_score(truth, clusters)),
            **pairwise_scores(truth, clusters), **bcubed_scores(truth, clusters), "images": int(len(truth)),
            "clusters": found, "individuals": individuals, "population_ratio": found / individuals}


def clustering_report(truth: Sequence, clusters: Sequence, datasets: Sequence) -> Dict:
    """Per dataset `cluster_scores` over the images with a known identity, and the plain mean over
    datasets of each score (the AnimalCLEF 2026 score is the mean ARI). Images whose truth is None
    are left out; a dataset with no labelled image is left out too.
    Returns {"ARI", "AMI", ... (means), "per_dataset": {dataset: cluster_scores}, "images"}."""
    frame = pd.DataFrame({"truth": [clean_identity(v) for v in truth], "cluster": list(clusters),
                          "dataset": list(datasets)})
    frame = frame[frame["truth"].notna()]
    per_dataset = {str(name): cluster_scores(part["truth"], part["cluster"])
                   for name, part in frame.groupby("dataset", sort=True)}

    def mean_of(key: str) -> float:
        values = [v[key] for v in per_dataset.values() if not math.isnan(v[key])]
        return float(np.mean(values)) if values else math.nan

    return {**{name: mean_of(name) for name in SCORES}, "images": int(len(frame)), "per_dataset": per_dataset}

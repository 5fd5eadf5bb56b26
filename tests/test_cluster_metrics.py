"""Clustering metrics against sklearn and hand computations."""
import math
from itertools import combinations

import numpy as np
import pytest
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

from engine.cluster.metrics import bcubed_scores, cluster_scores, clustering_report, pairwise_scores

TRUTH = ["a", "a", "a", "b", "b", "c"]
CLUSTERS = [1, 1, 2, 2, 2, 3]


def test_ari_and_ami_are_sklearns():
    scores = cluster_scores(TRUTH, CLUSTERS)
    assert scores["ARI"] == pytest.approx(adjusted_rand_score(TRUTH, CLUSTERS))
    assert scores["AMI"] == pytest.approx(adjusted_mutual_info_score(TRUTH, CLUSTERS))
    assert cluster_scores(TRUTH, TRUTH)["ARI"] == pytest.approx(1.0)


def test_pairwise_scores_by_hand():
    # Same-cluster pairs: (0,1), (2,3), (2,4), (3,4) = 4; same-identity pairs: 3 (a) + 1 (b) = 4;
    # both: (0,1), (3,4) = 2 -> precision 0.5, recall 0.5.
    scores = pairwise_scores(TRUTH, CLUSTERS)
    assert scores["pairwise_precision"] == pytest.approx(0.5)
    assert scores["pairwise_recall"] == pytest.approx(0.5)
    assert scores["pairwise_F1"] == pytest.approx(0.5)


def test_pairwise_scores_against_brute_force():
    rng = np.random.default_rng(0)
    truth, clusters = rng.integers(0, 6, 40), rng.integers(0, 8, 40)
    pairs = list(combinations(range(40), 2))
    same = np.array([truth[i] == truth[j] for i, j in pairs])
    together = np.array([clusters[i] == clusters[j] for i, j in pairs])
    scores = pairwise_scores(truth, clusters)
    assert scores["pairwise_precision"] == pytest.approx((same & together).sum() / together.sum())
    assert scores["pairwise_recall"] == pytest.approx((same & together).sum() / same.sum())


def test_bcubed_by_hand():
    # Per image precision: 1, 1, 1/3, 2/3, 2/3, 1 -> 14/3 / 6; recall: 2/3, 2/3, 1/3, 1, 1, 1 -> 14/3 / 6.
    scores = bcubed_scores(TRUTH, CLUSTERS)
    assert scores["bcubed_precision"] == pytest.approx(14 / 18)
    assert scores["bcubed_recall"] == pytest.approx(14 / 18)
    assert scores["bcubed_F1"] == pytest.approx(14 / 18)


def test_singletons_have_no_predicted_pairs():
    scores = cluster_scores(["a", "a", "b"], [1, 2, 3])
    assert math.isnan(scores["pairwise_precision"]) and scores["pairwise_recall"] == 0.0
    assert scores["pairwise_F1"] == 0.0
    assert scores["bcubed_precision"] == pytest.approx(1.0)
    assert (scores["clusters"], scores["individuals"], scores["population_ratio"]) == (3, 2, 1.5)


def test_report_is_the_mean_over_datasets_of_labelled_images():
    truth = ["a", "a", "b", "b", None, "x", "x", "y"]
    clusters = [1, 1, 2, 2, 2, 7, 8, 8]
    datasets = ["D1"] * 5 + ["D2"] * 3
    report = clustering_report(truth, clusters, datasets)
    d1, d2 = report["per_dataset"]["D1"], report["per_dataset"]["D2"]
    assert d1["ARI"] == pytest.approx(1.0) and d1["images"] == 4  # the unlabelled image is left out
    assert d2["ARI"] == pytest.approx(adjusted_rand_score(["x", "x", "y"], [7, 8, 8]))
    assert report["ARI"] == pytest.approx((d1["ARI"] + d2["ARI"]) / 2)
    assert report["images"] == 7

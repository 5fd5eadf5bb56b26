"""Metrics on hand-made examples, and BAKS/BAUS against the wildlife-datasets package."""
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from engine.metrics import (
    animalclef_score,
    baks,
    baus,
    cmc,
    geometric_mean,
    map_at_5,
    mean_average_precision,
    score_difference_interval,
)

NEW = "new_individual"
KNOWN = {"a", "b", "c"}


def test_baks_is_balanced_over_identities():
    # a: 1 of 2 right, b: 1 of 1 -> (0.5 + 1) / 2, not the pooled 2 / 3; unknown x is ignored.
    assert baks(["a", "a", "b", "x"], ["a", NEW, "b", NEW], KNOWN) == pytest.approx(0.75)


def test_baus_counts_new_predictions_per_unknown_identity():
    # x: 1 of 2 predicted new, y: 1 of 1; query-only identities and None truths are unknown, and
    # all None truths form one group: None: 1 of 2 ('new_whale' counts as new).
    assert baus(["x", "x", "y", "a"], [NEW, "a", NEW, NEW], KNOWN) == pytest.approx(0.75)
    assert baus([None, None, "z"], ["new_whale", "a", "a"], KNOWN) == pytest.approx(0.25)


def test_nan_when_no_samples_of_a_kind():
    assert math.isnan(baks(["x"], [NEW], KNOWN))
    assert math.isnan(baus(["a"], ["a"], KNOWN))
    assert geometric_mean(0.81, math.nan) == 0.0
    assert geometric_mean(0.81, 0.25) == pytest.approx(0.45)


def test_animalclef_score_is_mean_over_datasets_with_nan_part_as_zero():
    y_true = ["a", "a", "b", "x", "x", "y", "c", "c"]
    y_pred = ["a", NEW, "b", NEW, "a", NEW, "c", "a"]
    datasets = ["D1"] * 6 + ["D2"] * 2
    result = animalclef_score(y_true, y_pred, datasets, KNOWN)
    d1, d2 = result["per_dataset"]["D1"], result["per_dataset"]["D2"]
    assert (d1["BAKS"], d1["BAUS"], d1["score"]) == pytest.approx((0.75, 0.75, 0.75))
    assert d2["BAKS"] == pytest.approx(0.5) and math.isnan(d2["BAUS"]) and d2["score"] == 0.0
    assert result["score"] == pytest.approx(0.375)
    # Pooling all images into one geometric mean would give a different (wrong) number.
    pooled = geometric_mean(baks(y_true, y_pred, KNOWN), baus(y_true, y_pred, KNOWN))
    assert pooled != pytest.approx(result["score"])


def test_map_at_5_by_hand():
    truths = ["w1", "new_whale", None, "w2", "w3", "w4"]
    guesses = [
        ["w1", "w2", "w3", "w4", "w5"],  # 1
        ["w1", "new_whale", "w2", "w3", "w4"],  # 1/2: new_whale is a label
        ["w1", "w2", "w3", "new_whale", "w5"],  # 1/4: a None truth is new_whale
        ["w1", "w3", "w4", "w5", "new_whale"],  # 0
        ["w1", "w1", "w3", "w4", "w5"],  # 1/3
        ["w1", "w2", "w3", "w5", "w6", "w4"],  # 0: only five guesses count
    ]
    assert map_at_5(truths, guesses) == pytest.approx((1 + 1 / 2 + 1 / 4 + 0 + 1 / 3 + 0) / 6)


def test_cmc_counts_only_queries_with_a_gallery_match():
    ranked = [["a", "b", "c"], ["b", "a", "a"], ["c", "b", "a"], ["d", "e", "f"]]
    truths = ["a", "a", "x", None]
    result = cmc(ranked, truths, ks=(1, 2, 3), gallery_identities=KNOWN)
    assert result == pytest.approx({"rank1": 0.5, "rank2": 1.0, "rank3": 1.0})
    assert cmc(ranked, truths, ks=(1,))["rank1"] == pytest.approx(1 / 3)


def test_map_by_hand_and_truncation():
    ranked = [["a", "b", "a", "c"], ["b", "b", "a", "a"], ["b", "c", "c", "b"]]
    # q1: hits at 1 and 3 of 2 relevant; q2: hits at 3, 4 of 3 relevant (one beyond K);
    # q3: identity absent from the gallery -> left out.
    expected = ((1 + 2 / 3) / 2 + (1 / 3 + 2 / 4) / 3) / 2
    assert mean_average_precision(ranked, ["a", "a", "z"], n_relevant=[2, 3, 0]) == pytest.approx(expected)


def test_map_equals_sklearn_average_precision_on_full_rankings():
    rng = np.random.default_rng(0)
    gallery = rng.integers(0, 6, size=40).astype(str)
    truths = rng.integers(0, 6, size=15).astype(str)
    scores = rng.random((15, 40))
    order = np.argsort(-scores, axis=1)
    ranked = gallery[order]
    expected = np.mean([average_precision_score(gallery == t, s) for t, s in zip(truths, scores, strict=True)])
    assert mean_average_precision(ranked, truths, gallery_labels=gallery) == pytest.approx(expected)


def test_baks_baus_match_wildlife_datasets():
    reference = pytest.importorskip("wildlife_datasets.metrics",
                                    reason="wildlife-datasets (test-only dependency) is not installed")
    rng = np.random.default_rng(1)
    known = [f"k{i}" for i in range(6)]
    unknown = [f"u{i}" for i in range(4)]
    for _ in range(5):
        y_true = rng.choice(known + unknown, size=300).tolist()
        y_pred = rng.choice(known + [NEW], size=300).tolist()
        assert baks(y_true, y_pred, known) == pytest.approx(reference.BAKS(y_true, y_pred, unknown))
        assert baus(y_true, y_pred, known) == pytest.approx(reference.BAUS(y_true, y_pred, unknown, NEW))


def test_the_bootstrap_interval_of_a_score_difference_is_centred_on_the_difference_it_resamples():
    # Two datasets; known a, b, c and new x, y; scoring A gets one more known query and one more new one.
    truth = ["a", "a", "b", "c", "x", "y", "a", "x"]
    sets = ["d1"] * 6 + ["d2"] * 2
    pred_a = ["a", "a", "b", "b", NEW, NEW, "a", NEW]
    pred_b = ["a", "b", "b", "b", NEW, "c", "a", NEW]
    found = score_difference_interval(truth, pred_a, pred_b, sets, KNOWN, draws=300)
    expected = (animalclef_score(truth, pred_a, sets, KNOWN)["score"]
                - animalclef_score(truth, pred_b, sets, KNOWN)["score"])
    assert found["difference"] == pytest.approx(expected) and expected > 0
    assert found["low"] <= found["difference"] <= found["high"]
    # A is never worse on any identity, so no resampling makes it lose; B against itself differs by nothing.
    assert found["low"] >= 0 and found["high"] > 0
    same = score_difference_interval(truth, pred_b, pred_b, sets, KNOWN, draws=50)
    assert same == {"difference": 0.0, "low": 0.0, "high": 0.0}

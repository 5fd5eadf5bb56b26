"""Calibration is monotone into [0, 1] and survives JSON; pair mining; soft voting by hand."""
import json

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from core.errors import ConfigError, DataError
from engine.retrieval import l2_normalize
from engine.scoring.calibration import (
    RAMP_SHARE,
    Calibrator,
    fit_calibrator,
    pair_scores_for_calibration,
    soft_vote,
)


def _noisy_pairs(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.3
    scores = np.where(same, rng.normal(0.7, 0.15, n), rng.normal(0.3, 0.15, n))
    return scores, same


@pytest.mark.parametrize("method", ["isotonic", "logistic"])
def test_calibration_is_strictly_increasing_into_unit_interval(method):
    scores, same = _noisy_pairs()
    calibrator = fit_calibrator(scores, same, method)
    grid = np.linspace(-2, 2, 2001)
    probs = calibrator(grid)
    assert np.all(np.diff(probs) > 0), "raw scores that differ must never share a calibrated score"
    assert probs.min() > 0 and probs.max() < 1
    assert probs[0] < 0.05 and probs[-1] > 0.95  # informative, not a constant
    again = Calibrator.from_dict(json.loads(json.dumps(calibrator.to_dict())))
    np.testing.assert_allclose(again(grid), probs)


def test_isotonic_follows_the_isotonic_fit_without_its_plateaus():
    scores, same = _noisy_pairs(seed=1)
    reference = IsotonicRegression(out_of_bounds="clip", increasing=True).fit(scores, same)
    calibrator = fit_calibrator(scores, same)
    grid = np.linspace(0.0, 1.0, 301)
    # Centred isotonic regression stays close to the step function it smooths...
    assert np.abs(calibrator(grid) - reference.predict(grid)).mean() < 0.03
    # ...and where the step function is flat, the calibration still rises.
    plateau = grid[np.flatnonzero(np.diff(reference.predict(grid)) == 0)]
    assert len(plateau) > 50 and np.all(np.diff(calibrator(plateau)) > 0)


def test_hand_computed_centred_isotonic_and_ramp():
    # Pairs (score, same): blocks by isotonic regression are {0.1, 0.2} -> 0, {0.3, 0.5} -> 0.5, {0.6} -> 1.
    scores = np.array([0.1, 0.2, 0.3, 0.5, 0.6])
    same = np.array([False, False, True, False, True])
    calibrator = fit_calibrator(scores, same)
    assert calibrator.params["x"] == pytest.approx([0.15, 0.4, 0.6])
    assert calibrator.params["y"] == pytest.approx([0.0, 0.5, 1.0])
    centre, spread = scores.mean(), scores.std()
    s = 0.275  # halfway between the first two block centres
    ramp = 1 / (1 + np.exp(-(s - centre) / spread))
    assert calibrator(s) == pytest.approx((1 - RAMP_SHARE) * 0.25 + RAMP_SHARE * ramp)


def test_a_calibrator_without_evidence_keeps_the_raw_order():
    """Scores unrelated to the labels: isotonic fits one flat block, logistic a zero slope."""
    rng = np.random.default_rng(3)
    scores, same = rng.normal(size=500), rng.random(500) < 0.5
    for method in ("isotonic", "logistic"):
        probs = fit_calibrator(scores, same, method)(np.sort(scores))
        assert np.all(np.diff(probs) > 0) and 0.3 < probs.mean() < 0.7


def test_calibration_needs_both_kinds_of_pairs():
    with pytest.raises(DataError, match="same and of different"):
        fit_calibrator([0.1, 0.9], [True, True])
    with pytest.raises(ConfigError, match="did you mean 'isotonic'"):
        fit_calibrator([0.1, 0.9], [True, False], "isotonc")
    assert fit_calibrator([0.3], [True], "none")(0.3) == 0.3


def test_pair_scores_exclude_self_and_label_pairs():
    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b", "c", "d"], 5).astype(object)
    labels[0] = None  # unlabelled images take no part
    emb = l2_normalize(np.repeat(rng.normal(size=(4, 8)), 5, axis=0) + 0.05 * rng.normal(size=(20, 8)))
    scores, same = pair_scores_for_calibration(emb, labels, k=6)
    assert len(scores) == 19 * 6 and same.dtype == bool
    assert scores.max() < 0.99999  # no image paired with itself
    # Each image's 3 (a) or 4 (b, c, d) same-identity neighbours are nearer than any other identity's.
    assert same.sum() == 4 * 3 + 15 * 4
    sims = emb[1:] @ emb[1:].T
    np.testing.assert_allclose(np.sort(scores)[::-1][:2], np.sort(sims[~np.eye(19, dtype=bool)])[::-1][:2],
                               rtol=1e-5)


def test_soft_vote_by_hand():
    model_a = [[("x", 0.8), ("y", 0.4)], []]
    model_b = [[("y", 0.9), ("z", 0.6)], [("x", 0.5)]]
    voted = soft_vote([model_a, model_b], weights=[3, 1])
    # x: (3*0.8 + 0)/4 = 0.6; y: (3*0.4 + 0.9)/4 = 0.525; z: 0.6/4 = 0.15; query 2: x 0.5/4.
    assert voted[0] == [("x", pytest.approx(0.6)), ("y", pytest.approx(0.525)), ("z", pytest.approx(0.15))]
    assert voted[1] == [("x", pytest.approx(0.125))]
    assert soft_vote([model_a, model_a]) == [[("x", 0.8), ("y", 0.4)], []]  # agreeing models keep their value
    with pytest.raises(ConfigError):
        soft_vote([model_a, model_b], weights=[1])

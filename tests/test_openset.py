"""Open-set decisions, threshold tuning on planted thresholds, Humpback guess lists."""
import numpy as np
import pytest

from core.errors import ConfigError, DataError
from engine.metrics import animalclef_score, map_at_5
from engine.openset import TunedThreshold, decide, humpback_guesses, tune_humpback_threshold, tune_threshold

NEW = "new_individual"


def _planted(threshold, n_known=60, n_unknown=40, gap=0.05, dataset="D", seed=0):
    """Knowns (right identity) score in [t+gap, 1], unknowns in [0, t-gap]."""
    rng = np.random.default_rng(seed)
    known_ids = [f"{dataset}_k{i % 12}" for i in range(n_known)]
    unknown_ids = [f"{dataset}_u{i % 8}" for i in range(n_unknown)]
    scores = np.concatenate([
        np.append(rng.uniform(threshold + gap, 1.0, n_known - 1), threshold + gap),
        np.append(rng.uniform(0.0, threshold - gap, n_unknown - 1), threshold - gap),
    ])
    best = known_ids + [f"{dataset}_k{i % 12}" for i in range(n_unknown)]  # unknowns look like someone
    return scores, best, known_ids + unknown_ids, set(known_ids), [dataset] * (n_known + n_unknown)


def test_tuning_recovers_a_planted_threshold_in_the_middle_of_the_gap():
    scores, best, truth, known, datasets = _planted(0.6)
    result = tune_threshold(scores, best, truth, known, datasets)
    assert result.overall == pytest.approx(0.6)
    assert result.per_dataset == {"D": pytest.approx(0.6)}
    assert result.validation.overall == pytest.approx(1.0)
    on_grid = tune_threshold(scores, best, truth, known, datasets, grid=np.linspace(0, 1, 101))
    assert 0.55 < on_grid.overall < 0.65


def test_per_dataset_thresholds_differ_when_planted_differently():
    a = _planted(0.6, dataset="A", seed=1)
    b = _planted(0.3, dataset="B", seed=2)
    joined = [list(x) + list(y) for x, y in zip(a, b, strict=True)]
    scores, best, truth, datasets = np.array(joined[0]), joined[1], joined[2], joined[4]
    known = set(joined[3])
    result = tune_threshold(scores, best, truth, known, datasets)
    assert result.per_dataset == {"A": pytest.approx(0.6), "B": pytest.approx(0.3)}
    assert result.validation.with_per_dataset == pytest.approx(1.0)
    assert result.validation.overall < 1.0  # no single threshold separates both
    single = tune_threshold(scores, best, truth, known, datasets, per_dataset=False)
    assert set(single.per_dataset.values()) == {single.overall}
    # The tuned thresholds give what the metric says when the decisions are scored for real.
    predicted = decide(best, scores, result, datasets)
    assert animalclef_score(truth, predicted, datasets, known)["score"] == pytest.approx(1.0)


def test_tuned_score_is_the_best_over_thresholds_by_the_metric_itself():
    rng = np.random.default_rng(5)
    n = 300
    truth = rng.choice([f"k{i}" for i in range(10)] + [f"u{i}" for i in range(5)], size=n).tolist()
    best = rng.choice([f"k{i}" for i in range(10)], size=n).tolist()
    datasets = rng.choice(["A", "B"], size=n).tolist()
    scores = rng.random(n) + 0.3 * np.array([t == b for t, b in zip(truth, best, strict=True)])
    known = {f"k{i}" for i in range(10)}
    result = tune_threshold(scores, best, truth, known, datasets)
    brute = max(animalclef_score(truth, decide(best, scores, t, datasets), datasets, known)["score"]
                for t in np.append(np.sort(scores), 2.0))
    assert result.validation.overall == pytest.approx(brute)
    tuned = animalclef_score(truth, decide(best, scores, result.overall, datasets), datasets, known)["score"]
    assert tuned == pytest.approx(brute)


def test_tuning_needs_known_and_new_queries():
    with pytest.raises(DataError, match="both known and new"):
        tune_threshold([0.5, 0.7], ["a", "a"], ["a", "a"], {"a"})


def test_decide_with_float_per_dataset_and_fallback():
    ids, scores = ["a", "b", "c", None], [0.5, 0.5, 0.9, 0.99]
    assert decide(ids, scores, 0.6).tolist() == [NEW, NEW, "c", NEW]  # no candidate -> new
    datasets = ["A", "B", "B", "B"]
    assert decide(ids, scores, {"A": 0.4, "B": 0.95}, datasets).tolist() == ["a", NEW, NEW, NEW]
    tuned = TunedThreshold(0.45, {"B": 0.95})
    assert decide(ids, scores, tuned, datasets).tolist() == ["a", NEW, NEW, NEW]
    with pytest.raises(ConfigError, match="no threshold for dataset"):
        decide(ids, scores, {"A": 0.4}, datasets)


def test_humpback_new_whale_goes_where_the_threshold_says():
    candidates = [("w1", 0.9), ("w2", 0.7), ("w3", 0.5), ("w4", 0.4), ("w5", 0.3)]
    assert humpback_guesses(candidates, 0.6) == ["w1", "w2", "new_whale", "w3", "w4"]
    assert humpback_guesses(candidates, 0.95) == ["new_whale", "w1", "w2", "w3", "w4"]
    assert humpback_guesses(candidates, 0.1) == ["w1", "w2", "w3", "w4", "w5"]
    assert humpback_guesses(candidates[:3], 0.1) == ["w1", "w2", "w3", "new_whale"]
    short = [("w1", 0.9), ("w1", 0.8), ("w2", 0.2)]
    assert humpback_guesses(short, 0.5, fallback=["w9", "w2", "w8"]) == ["w1", "new_whale", "w2", "w9", "w8"]


def test_new_whale_place_is_tuned_for_map5_by_hand():
    # Two known whales (the right one first, at 0.9 and 0.5) and one new whale (best candidate 0.7).
    candidates = [[("w1", 0.9), ("w2", 0.2)], [("w3", 0.5), ("w4", 0.1)], [("w5", 0.7), ("w6", 0.3)]]
    truth = np.array(["w1", "w3", "new_whale"], dtype=object)
    known = np.array([True, True, False])
    tuned = tune_humpback_threshold(candidates, truth, known)
    # By hand: t in (0.7, 0.9] gives 1 + 1/2 + 1 and t in (0.3, 0.5] gives 1 + 1 + 1/2; nothing does
    # better, since no threshold puts both w3 and new_whale first.
    assert tuned["validation"] == pytest.approx(2.5 / 3)
    assert 0.7 < tuned["global"] <= 0.9 or 0.3 < tuned["global"] <= 0.5
    by_metric = max(map_at_5(truth, [humpback_guesses(c, t) for c in candidates]) for t in np.linspace(0, 1, 201))
    assert by_metric == pytest.approx(tuned["validation"])
    assert map_at_5(truth, [humpback_guesses(c, tuned["global"]) for c in candidates]) == pytest.approx(2.5 / 3)


def test_a_threshold_tuned_to_accept_or_reject_every_query_is_flagged():
    scores, best, truth, known, datasets = _planted(0.6)
    planted = tune_threshold(scores, best, truth, known, datasets)
    assert planted.extremes == {} and planted.warnings() == [] and "extremes" not in planted.to_dict()
    # A grid below every score can only accept all; one above every score only reject all.
    low = tune_threshold(scores, best, truth, known, datasets, grid=[-0.2, -0.1])
    assert low.extremes == {"global": "accept", "D": "accept"} and low.to_dict()["extremes"] == low.extremes
    high = tune_threshold(scores, best, truth, known, datasets, grid=[1.1, 1.2], per_dataset=False)
    assert high.extremes == {"global": "reject"}
    assert high.warnings() == ["warning: the new-individual threshold of all datasets (1.15) rejects every validation "
                               "query: the best the held-out split found is an end of its scores, so it cannot tell "
                               "known from new individuals there (a fixed threshold.value avoids the guess)"]

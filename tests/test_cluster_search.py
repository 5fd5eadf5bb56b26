"""The clustering threshold's search: widened past the configured grid until the criterion turns."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score
from test_clustering import METHODS, planted

from engine.cluster.methods import CLUSTERERS
from engine.cluster.search import MEAN, WIDEN_STEPS, best_of_curve, widened_search

GRID = [round(0.05 * i, 2) for i in range(1, 20)]  # cluster.grid's default


@pytest.mark.parametrize("method", METHODS)
def test_an_optimum_below_the_grid_is_found(method):
    # Same-individual edges at P ~ 0.02, others at ~ 0.001: every grid threshold leaves all images alone.
    graph, truth = planted(groups=5, size=6)
    graph.p = np.where(truth[graph.i] == truth[graph.j], 0.02, 0.001)
    clusterer = CLUSTERERS.build(method)
    anchors = np.full(graph.n, -1)

    def evaluate(thresholds):
        return {"A": np.array([adjusted_rand_score(truth, labels) for labels in clusterer.labels(graph, anchors, thresholds)])}

    search = widened_search(evaluate, GRID)
    chosen = best_of_curve(search.curves["A"], search.grid)
    assert max(evaluate(GRID)["A"]) < 0.5  # the grid alone cannot find it
    assert 0.001 < chosen < 0.02 and max(search.curves["A"]) == 1.0
    assert search.grid[0] < chosen and search.ends().get("A") != "lowest"  # the curve turned below it


def test_a_curve_still_rising_at_the_end_of_the_range_is_flagged():
    search = widened_search(lambda ts: {"A": -np.asarray(ts), "B": np.asarray(ts) * 0}, GRID)
    assert search.grid[0] == pytest.approx(0.05 / 2 ** WIDEN_STEPS)
    assert search.ends() == {"A": "lowest", MEAN: "lowest"}
    # An optimum inside the grid needs no widening beyond one step per side that the plateau reaches.
    inside = widened_search(lambda ts: {"A": -np.abs(np.asarray(ts) - 0.5)}, GRID)
    assert inside.grid == GRID and inside.ends() == {}


@pytest.mark.parametrize("name, reference", [("ari", "adjusted_rand_score"), ("ami", "adjusted_mutual_info_score")])
def test_the_criteria_score_as_sklearn_does(name, reference):
    import sklearn.metrics

    from engine.cluster.criteria import CRITERIA

    criterion, expected = CRITERIA.build(name), getattr(sklearn.metrics, reference)
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 60):
        for _ in range(10):
            truth = rng.integers(0, rng.integers(1, n + 1), n).astype(str)
            labels = rng.integers(0, rng.integers(1, n + 1), n)
            assert criterion.score(truth, labels) == pytest.approx(expected(truth, labels), abs=1e-9)


def test_the_count_criterion_prefers_as_many_clusters_as_individuals_and_the_highest_such_threshold():
    from engine.cluster.criteria import CRITERIA

    count = CRITERIA.build("count")
    assert count.score(["a", "a", "b"], [1, 2, 3]) == pytest.approx(-np.log(1.5))
    assert count.score(["a", "a", "b"], [1, 1, 2]) == 0.0
    assert count.choose([-0.1, 0.0, 0.0, -0.2], [0.1, 0.2, 0.3, 0.4]) == 0.3

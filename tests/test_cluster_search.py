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

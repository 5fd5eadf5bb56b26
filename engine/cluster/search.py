"""The threshold search: the configured grid, widened until the validation criterion turns.

Every clusterer's threshold is a level of P(same individual) (Leiden's resolution too: a community's
edges must average more than it), so the search lives inside (0, 1). The grid's values are tried
first. Where a curve (a dataset's own, or their mean, which a dataset without train images takes)
is still at its best at the lowest or the highest value tried, the search steps past it, halving
the distance to that end of (0, 1), until the criterion there falls below its best (the curve has
turned) or WIDEN_STEPS steps were taken on that side. A threshold still chosen at an end of what
was searched is flagged (`ends`): its optimum may lie beyond, and eval.py warns so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

WIDEN_STEPS = 8  # per side: the last step is 1/256 of the grid's distance to 0 (or 1)
TIE = 1e-9  # criterion values this close are equal
MEAN = "mean over datasets"  # the curve a dataset without train images is tuned on (transfer)


def best_of_curve(curve: Sequence[float], grid: Sequence[float]) -> float:
    """The middle threshold of the longest run of best values (robust to plateaus)."""
    values = np.asarray(curve, dtype=np.float64)
    best = np.isclose(values, values.max(), rtol=0, atol=TIE)
    bounds = np.diff(np.concatenate([[0], best.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(bounds == 1), np.flatnonzero(bounds == -1) - 1
    i = int(np.argmax(stops - starts))
    return float(grid[(starts[i] + stops[i]) // 2])


def end_of(curve: Sequence[float], grid: Sequence[float]) -> Optional[str]:
    """"lowest" or "highest" when the threshold best_of_curve picks is that end of `grid`, else None."""
    if len(grid) < 2:
        return None
    chosen = best_of_curve(curve, grid)
    return "lowest" if chosen == grid[0] else "highest" if chosen == grid[-1] else None


def _at_best(curve: np.ndarray, index: int) -> bool:
    return bool(np.isclose(curve[index], curve.max(), rtol=0, atol=TIE))


@dataclass
class Search:
    """Every threshold tried (ascending) and the validation criterion at each, per dataset."""

    grid: List[float]
    curves: Dict[str, List[float]]

    def mean(self) -> np.ndarray:
        return np.mean([self.curves[d] for d in sorted(self.curves)], axis=0)

    def with_mean(self) -> Dict[str, np.ndarray]:
        """Each dataset's curve and their mean (under MEAN)."""
        return {**{d: np.asarray(c) for d, c in self.curves.items()}, MEAN: self.mean()}

    def ends(self) -> Dict[str, str]:
        """The curves (datasets, MEAN) whose best threshold is an end of the searched range."""
        return {name: end for name, curve in self.with_mean().items() if (end := end_of(curve, self.grid))}


def widened_search(evaluate: Callable[[List[float]], Dict[str, np.ndarray]], grid: Sequence[float],
                   steps: int = WIDEN_STEPS) -> Search:
    """`evaluate(thresholds)` gives each dataset's criterion at those thresholds; the grid is
    widened as the module doc says."""
    tried = sorted({float(g) for g in grid})
    found = {d: np.asarray(c, dtype=np.float64) for d, c in evaluate(tried).items()}
    widened = {"low": 0, "high": 0}
    while True:
        curves = [*found.values(), np.mean([found[d] for d in sorted(found)], axis=0)] if found else []
        new = []
        if widened["low"] < steps and any(_at_best(c, 0) for c in curves):
            new.append(tried[0] / 2)
            widened["low"] += 1
        if widened["high"] < steps and any(_at_best(c, -1) for c in curves):
            new.append(1 - (1 - tried[-1]) / 2)
            widened["high"] += 1
        if not new:
            break
        more = evaluate(new)
        order = np.argsort(tried + new, kind="stable")
        tried = [(tried + new)[k] for k in order]
        found = {d: np.concatenate([found[d], np.asarray(more[d], dtype=np.float64)])[order] for d in found}
    return Search(tried, {d: found[d].tolist() for d in sorted(found)})

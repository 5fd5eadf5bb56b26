"""How sure the held-out validation is of its threshold: the thresholds it would have chosen had
other identities been held out, for the interval of the population count (population.py).

Each replicate draws every (split, dataset) part's validation identities with replacement (an
identity drawn twice counts as two individuals, its images and their clusters copied), scores the
thresholds near the chosen one with the tuning's criterion, and keeps the best of its own curve:
per dataset for its own threshold, and, with the labelled datasets drawn with replacement too, of
their mean for the threshold a dataset without train images takes (its uncertainty is mostly which
datasets it was tuned on).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np

from engine.cluster.criteria import Criterion
from engine.cluster.search import MEAN

REPLICATES = 50
WINDOW = 4  # a replicate chooses among the thresholds this many grid steps either side of the chosen one


@dataclass
class ValidationPart:
    """One split's validation images of one dataset and their clusters at every threshold tried."""

    dataset: str
    truth: np.ndarray  # identity code per validation image
    found: Dict[float, np.ndarray]  # threshold -> cluster code per validation image


def _window(grid: Sequence[float], chosen: float) -> np.ndarray:
    at = int(np.argmin(np.abs(np.asarray(grid) - chosen)))
    return np.arange(max(0, at - WINDOW), min(len(grid), at + WINDOW + 1))


def _replicate_curve(part: ValidationPart, grid: Sequence[float], scored: np.ndarray, criterion: Criterion,
                     rng: np.random.Generator) -> np.ndarray:
    identities = np.unique(part.truth)
    drawn = rng.choice(identities, len(identities), replace=True)
    members = [np.flatnonzero(part.truth == identity) for identity in drawn]
    rows = np.concatenate(members)
    copy = np.repeat(np.arange(len(drawn)), [len(m) for m in members])
    truth = copy * (int(part.truth.max()) + 1) + part.truth[rows]
    curve = np.full(len(grid), -np.inf)
    for k in scored:
        labels = part.found[grid[k]]
        curve[k] = criterion.score(truth, copy * (int(labels.max()) + 1) + labels[rows])
    return curve


def plausible_thresholds(parts: Sequence[ValidationPart], grid: Sequence[float], chosen: Dict[str, float],
                         criterion: Criterion, seed: int, replicates: int = REPLICATES) -> Dict[str, List[float]]:
    """Per dataset (and MEAN): the threshold each replicate chooses; `chosen` holds the thresholds
    the full validation chose, per dataset and under MEAN."""
    scored = np.unique(np.concatenate([_window(grid, t) for t in chosen.values()]))
    datasets = sorted({p.dataset for p in parts})
    rng = np.random.default_rng(seed)
    out: Dict[str, List[float]] = {name: [] for name in [*datasets, MEAN]}
    for _ in range(replicates):
        sums = {d: np.zeros(len(grid)) for d in datasets}
        counts = {d: 0 for d in datasets}
        for part in parts:
            sums[part.dataset] += _replicate_curve(part, grid, scored, criterion, rng)
            counts[part.dataset] += 1
        curves = {d: sums[d] / counts[d] for d in datasets}
        for d in datasets:
            out[d].append(_best(criterion, curves[d], grid, _window(grid, chosen[d])))
        drawn = rng.choice(datasets, len(datasets), replace=True)
        out[MEAN].append(_best(criterion, np.mean([curves[d] for d in drawn], axis=0), grid,
                               _window(grid, chosen[MEAN])))
    return out


def _best(criterion: Criterion, curve: np.ndarray, grid: Sequence[float], window: np.ndarray) -> float:
    inside = curve[window]
    if not np.isfinite(inside).any():
        return float(grid[window[len(window) // 2]])
    return criterion.choose(np.where(np.isfinite(inside), inside, -1e9), [grid[k] for k in window])

"""How sure the held-out validation is of a threshold and of the count read at it, for the interval
of the population count (population.py).

Each replicate draws every (split, dataset) part's validation identities with replacement (an
identity drawn twice counts as two individuals, its images and their clusters copied), scores the
thresholds near the chosen one with the criterion, and keeps the best of its own curve: per dataset
for its own threshold, and, with the labelled datasets drawn with replacement too, of their mean
for the threshold a dataset without train images takes. The identities a replicate did not draw
were not tuned on: the count of their images at the replicate's threshold, against their true
number, is an out-of-bag sample of how far such a count lands from the truth (its log error).
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


@dataclass
class Replicates:
    """Per dataset (and MEAN): the threshold each replicate chose; per dataset also the log error of
    the count it gave on the identities that replicate left out, log(clusters / individuals)."""

    thresholds: Dict[str, List[float]]
    errors: Dict[str, List[float]]


def _draw(part: ValidationPart, rng: np.random.Generator) -> tuple:
    """(rows of the drawn identities' images, which copy each row belongs to, rows of the identities not drawn)."""
    identities = np.unique(part.truth)
    drawn = rng.choice(identities, len(identities), replace=True)
    members = [np.flatnonzero(part.truth == identity) for identity in drawn]
    left_out = np.flatnonzero(~np.isin(part.truth, drawn))
    return np.concatenate(members), np.repeat(np.arange(len(drawn)), [len(m) for m in members]), left_out


def _replicate_curve(part: ValidationPart, grid: Sequence[float], scored: np.ndarray, criterion: Criterion,
                     rows: np.ndarray, copy: np.ndarray) -> np.ndarray:
    truth = copy * (int(part.truth.max()) + 1) + part.truth[rows]
    curve = np.full(len(grid), -np.inf)
    for k in scored:
        labels = part.found[grid[k]]
        curve[k] = criterion.score(truth, copy * (int(labels.max()) + 1) + labels[rows])
    return curve


def count_error(part: ValidationPart, threshold: float, rows: np.ndarray) -> float:
    """log(clusters / individuals) of the validation images at `rows` (NaN without any). A cluster
    counts for the share of its images among them: a merge with an identity outside `rows` hides
    from their clusters as a split never does, and the shares sum over any split of the identities
    to the count of the whole."""
    if not len(rows):
        return float("nan")
    labels = part.found[threshold]
    inside, size = np.bincount(labels[rows], minlength=labels.max() + 1), np.bincount(labels)
    counted = (inside[size > 0] / size[size > 0]).sum()
    return float(np.log(counted / len(np.unique(part.truth[rows]))))


def replicates(parts: Sequence[ValidationPart], grid: Sequence[float], chosen: Dict[str, float],
               criterion: Criterion, seed: int, count: int = REPLICATES) -> Replicates:
    """`count` replicates (see the module doc); `chosen` holds the thresholds the full validation
    chose, per dataset and under MEAN."""
    scored = np.unique(np.concatenate([_window(grid, t) for t in chosen.values()]))
    datasets = sorted({p.dataset for p in parts})
    rng = np.random.default_rng(seed)
    out = Replicates({name: [] for name in [*datasets, MEAN]}, {d: [] for d in datasets})
    for _ in range(count):
        sums = {d: np.zeros(len(grid)) for d in datasets}
        left_out = []
        for part in parts:
            rows, copy, outside = _draw(part, rng)
            sums[part.dataset] += _replicate_curve(part, grid, scored, criterion, rows, copy)
            left_out.append(outside)
        curves = {d: sums[d] / sum(p.dataset == d for p in parts) for d in datasets}
        for d in datasets:
            threshold = _best(criterion, curves[d], grid, _window(grid, chosen[d]))
            errors = [count_error(p, threshold, o) for p, o in zip(parts, left_out, strict=True) if p.dataset == d]
            errors = [e for e in errors if np.isfinite(e)]
            out.thresholds[d].append(threshold)
            out.errors[d].append(float(np.mean(errors)) if errors else 0.0)
        drawn = rng.choice(datasets, len(datasets), replace=True)
        out.thresholds[MEAN].append(_best(criterion, np.mean([curves[d] for d in drawn], axis=0), grid,
                                          _window(grid, chosen[MEAN])))
    return out


def _best(criterion: Criterion, curve: np.ndarray, grid: Sequence[float], window: np.ndarray) -> float:
    inside = curve[window]
    if not np.isfinite(inside).any():
        return float(grid[window[len(window) // 2]])
    return criterion.choose(np.where(np.isfinite(inside), inside, -1e9), [grid[k] for k in window])

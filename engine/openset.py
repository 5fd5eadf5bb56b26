"""Open-set decisions: the best identity, or "new" when its score is below a threshold.

The threshold is tuned to maximise the AnimalCLEF 2025 score on a labelled validation split the
caller carves from the database (data.splits.open_set_split: some identities held out as "new"),
never on query labels. Per-dataset thresholds matter: species differ in how close their
individuals look.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from core.errors import ConfigError, DataError
from data.table import NEW_INDIVIDUAL, clean_identity
from engine.metrics import HUMPBACK_NEW

# Thresholds just outside the observed scores ("accept all", "reject all") sit this far away.
END_MARGIN = 1e-6
ACCEPT_ALL, REJECT_ALL = "accept", "reject"


@dataclass
class ValidationScores:
    """The open-set score of the validation queries at the tuned thresholds."""

    overall: float  # with the one threshold for all datasets
    with_per_dataset: float  # with each dataset's own threshold
    by_dataset: Dict[str, float]  # each dataset's own term, at the thresholds in use

    def to_dict(self) -> Dict[str, object]:
        return {"global": self.overall, "per_dataset": self.with_per_dataset, "by_dataset": self.by_dataset}


@dataclass
class TunedThreshold:
    """A "new individual" threshold: one for every dataset, and each dataset's own where it has one."""

    overall: float
    per_dataset: Dict[str, float] = field(default_factory=dict)
    validation: Optional[ValidationScores] = None
    # "global" or a dataset -> ACCEPT_ALL / REJECT_ALL where the tuned threshold accepts every
    # validation query or rejects every one: the search reached the end of the scores.
    extremes: Dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, object]:
        """As manifest.json and metrics.json record it."""
        out: Dict[str, object] = {"global": self.overall, "per_dataset": dict(self.per_dataset)}
        if self.validation is not None:
            out["validation"] = self.validation.to_dict()
        if self.extremes:
            out["extremes"] = dict(self.extremes)
        return out

    def warnings(self) -> List[str]:
        """One console line per threshold tuned to an extreme (see `extremes`)."""
        return [f"warning: the new-individual threshold of {'all datasets' if name == 'global' else name} "
                f"({self.overall if name == 'global' else self.per_dataset[name]:.4g}) {what}s every validation "
                "query: the best the held-out split found is an end of its scores, so it cannot tell known from "
                f"new individuals there (a fixed threshold.value avoids the guess)"
                for name, what in sorted(self.extremes.items())]


Threshold = Union[float, Mapping[str, float], TunedThreshold]


def thresholds_for(datasets: Sequence[str] | None, threshold: Threshold, count: int) -> np.ndarray:
    """One threshold per query from a float, {dataset: t}, or a TunedThreshold (datasets it does not
    list use its overall value)."""
    if isinstance(threshold, TunedThreshold):
        per_dataset, fallback = threshold.per_dataset, threshold.overall
    elif isinstance(threshold, Mapping):
        per_dataset, fallback = threshold, None
    else:
        return np.full(count, float(threshold))
    if datasets is None:
        if fallback is None:
            raise ConfigError("per-dataset thresholds need the dataset of every query")
        return np.full(count, float(fallback))
    missing = sorted({d for d in datasets if d not in per_dataset}) if fallback is None else []
    if missing:
        raise ConfigError(f"no threshold for dataset(s) {', '.join(missing)} and no global threshold")
    return np.array([float(per_dataset.get(d, fallback)) for d in datasets], dtype=np.float64)


def decide(best_ids: Sequence, best_scores: Sequence[float], threshold: Threshold,
           datasets: Sequence[str] | None = None, new_label: str = NEW_INDIVIDUAL) -> np.ndarray:
    """Predicted identity per query: the best identity, or `new_label` where score < threshold
    (or where there is no candidate)."""
    scores = np.nan_to_num(np.asarray(best_scores, dtype=np.float64), nan=-np.inf)
    ids = np.asarray(list(best_ids), dtype=object)
    if len(ids) != len(scores):
        raise ValueError(f"{len(ids)} identities for {len(scores)} scores")
    limits = thresholds_for(datasets, threshold, len(scores))
    has_id = np.array([clean_identity(i) is not None for i in ids], dtype=bool)
    return np.where((scores >= limits) & has_id, ids, new_label).astype(object)


def _weights(groups: np.ndarray) -> np.ndarray:
    """1 / (group size x number of groups): summing these over a subset gives a balanced accuracy.
    None is one group (unknown queries without an identity label)."""
    if len(groups) == 0:
        return np.zeros(0)
    codes, _ = pd.factorize(pd.Series(groups, dtype=object), use_na_sentinel=False)
    sizes = np.bincount(codes)
    return 1.0 / (sizes[codes] * len(sizes))


def _dataset_curve(scores, correct, truth, known, candidates: np.ndarray) -> np.ndarray:
    """sqrt(BAKS x BAUS) of one dataset at every candidate threshold (NaN parts count as 0).

    A known query scores when it is accepted (score >= t) with the right identity; an unknown one
    when rejected (score < t). Both are weighted sums over sorted scores, so every threshold costs
    a binary search instead of a pass over the queries.
    """
    if not known.any() or known.all():
        return np.zeros(len(candidates))
    k_scores, k_weights = scores[known], _weights(truth[known]) * correct[known]
    order = np.argsort(k_scores)
    k_scores, k_cum = k_scores[order], np.concatenate([[0.0], np.cumsum(k_weights[order])])
    baks = k_cum[-1] - k_cum[np.searchsorted(k_scores, candidates, side="left")]
    u_scores, u_weights = scores[~known], _weights(truth[~known])
    order = np.argsort(u_scores)
    u_scores, u_cum = u_scores[order], np.concatenate([[0.0], np.cumsum(u_weights[order])])
    baus = u_cum[np.searchsorted(u_scores, candidates, side="left")]
    return np.sqrt(np.clip(baks, 0, None) * np.clip(baus, 0, None))


def _candidate_thresholds(scores: np.ndarray, grid: Sequence[float] | None) -> Tuple[np.ndarray, np.ndarray]:
    """(thresholds to evaluate, the edges of the interval each stands for).

    Without a grid: one threshold per distinct decision, i.e. below all scores, the midpoints of
    consecutive distinct scores, above all scores; interval j spans edges[j]..edges[j+1].
    """
    if grid is not None:
        values = np.unique(np.asarray(grid, dtype=np.float64))
        return values, np.append(values, values[-1])
    finite = np.unique(scores[np.isfinite(scores)])
    if len(finite) == 0:
        return np.array([0.0]), np.array([0.0, 0.0])
    edges = np.concatenate([[finite[0] - END_MARGIN], finite, [finite[-1] + END_MARGIN]])
    return (edges[:-1] + edges[1:]) / 2, edges


def _middle_of_best(values: np.ndarray, candidates: np.ndarray, edges: np.ndarray, grid_given: bool) -> float:
    """The middle of the longest run of consecutive optimal candidates (robust to ties).

    Without a grid, runs are measured in decisions (validation scores they span), not in score
    units, and the middle is the middle decision: the choice then depends only on the scores'
    order, so a strictly increasing calibration picks the same split of the validation queries as
    the raw scores would. With a grid, the middle of the run's grid values.
    """
    best = values.max()
    optimal = np.isclose(values, best, rtol=0, atol=1e-12)
    bounds = np.diff(np.concatenate([[0], optimal.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(bounds == 1), np.flatnonzero(bounds == -1) - 1
    i = int(np.argmax(stops - starts))
    if grid_given:
        return float((candidates[starts[i]] + candidates[stops[i]]) / 2)
    return float(candidates[(starts[i] + stops[i]) // 2])


def _known_mask(truth: np.ndarray, known: Union[np.ndarray, Iterable[str]]) -> np.ndarray:
    if isinstance(known, np.ndarray) and known.dtype == bool:
        if known.shape != truth.shape:
            raise ValueError(f"known mask of shape {known.shape} for {len(truth)} queries")
        return known
    return pd.Series(truth, dtype=object).isin(set(known)).to_numpy()


def tune_threshold(best_scores: Sequence[float], best_ids: Sequence, true_ids: Sequence,
                   known: Union[np.ndarray, Iterable[str]], datasets: Sequence[str] | None = None,
                   per_dataset: bool = True, grid: Sequence[float] | None = None) -> TunedThreshold:
    """Thresholds maximising the AnimalCLEF 2025 score on a labelled validation split.

    `known` is a boolean mask (query's identity is in the validation database) or the database
    identities. The global threshold maximises the mean over datasets of sqrt(BAKS x BAUS); each
    per-dataset threshold maximises its own dataset's term. Candidates are every distinct decision
    (midpoints of consecutive distinct scores) or the given `grid`; among equal optima the middle
    of the longest run wins (see _middle_of_best). A dataset whose split has no known or no unknown queries cannot
    be tuned and takes the global threshold.
    The validation scores are the mean over datasets with the one threshold, with the per-dataset
    ones, and each dataset's own term at the thresholds `per_dataset` says.
    """
    scores = np.nan_to_num(np.asarray(best_scores, dtype=np.float64), nan=-np.inf)
    truth = np.array([clean_identity(v) for v in true_ids], dtype=object)
    ids = np.array([clean_identity(v) for v in best_ids], dtype=object)
    groups = np.asarray(["all"] * len(scores) if datasets is None else list(datasets), dtype=object)
    if not (len(scores) == len(truth) == len(ids) == len(groups)):
        raise ValueError("best_scores, best_ids, true_ids and datasets must have one entry per query")
    if len(scores) == 0:
        raise DataError("threshold tuning needs labelled validation queries; the split has none")
    known_mask = _known_mask(truth, known)
    if not known_mask.any() or known_mask.all():
        raise DataError(f"threshold tuning needs both known and new individuals among the validation queries; "
                        f"got {int(known_mask.sum())} known and {int((~known_mask).sum())} new")
    correct = ids == truth
    candidates, edges = _candidate_thresholds(scores, grid)
    names = sorted(set(groups.tolist()))
    parts = {name: (scores[rows], correct[rows], truth[rows], known_mask[rows])
             for name in names for rows in [groups == name]}
    mean_curve = np.mean([_dataset_curve(*parts[name], candidates) for name in names], axis=0)
    global_t = _middle_of_best(mean_curve, candidates, edges, grid is not None)
    tuned: Dict[str, float] = {}
    for name in names:
        own_scores, _, _, own_known = parts[name]
        if per_dataset and own_known.any() and not own_known.all():
            # A dataset's own scores delimit its decisions: other datasets' scores would only
            # split its runs and move its middle.
            own, own_edges = _candidate_thresholds(own_scores, grid)
            tuned[name] = _middle_of_best(_dataset_curve(*parts[name], own), own, own_edges, grid is not None)
        else:
            tuned[name] = global_t
    used = tuned if per_dataset else global_t
    extremes = {name: end for name, t, rows in [("global", global_t, np.ones(len(scores), bool)),
                                                *[(n, tuned[n], groups == n) for n in names if per_dataset]]
                if (end := _extreme(scores[rows], t))}
    return TunedThreshold(global_t, tuned, ValidationScores(
        _score_at(scores, correct, truth, known_mask, groups, names, global_t),
        _score_at(scores, correct, truth, known_mask, groups, names, tuned),
        {name: _score_at(scores, correct, truth, known_mask, groups, [name], used) for name in names}), extremes)


def _extreme(scores: np.ndarray, threshold: float) -> Optional[str]:
    """ACCEPT_ALL when `threshold` accepts every finite score, REJECT_ALL when it accepts none."""
    finite = scores[np.isfinite(scores)]
    if len(finite) == 0:
        return None
    accepted = int((finite >= threshold).sum())
    return ACCEPT_ALL if accepted == len(finite) else REJECT_ALL if accepted == 0 else None


def score_at(best_scores: Sequence[float], best_ids: Sequence, true_ids: Sequence, known: np.ndarray,
             datasets: Sequence[str], threshold: TunedThreshold, per_dataset: bool) -> float:
    """The validation score `tune_threshold` reports for these queries at the thresholds it chose."""
    scores = np.nan_to_num(np.asarray(best_scores, dtype=np.float64), nan=-np.inf)
    truth = np.array([clean_identity(v) for v in true_ids], dtype=object)
    correct = np.array([clean_identity(v) for v in best_ids], dtype=object) == truth
    groups = np.asarray(list(datasets), dtype=object)
    names = sorted(set(groups.tolist()))
    used = dict(threshold.per_dataset) if per_dataset else float(threshold.overall)
    return _score_at(scores, correct, truth, _known_mask(truth, known), groups, names, used)


def _score_at(scores, correct, truth, known_mask, groups, names, threshold) -> float:
    terms = []
    for name in names:
        rows = groups == name
        t = threshold[name] if isinstance(threshold, dict) else threshold
        terms.append(_dataset_curve(scores[rows], correct[rows], truth[rows], known_mask[rows], np.array([t]))[0])
    return float(np.mean(terms))


def humpback_guesses(candidates: Sequence[Tuple[str, float]], threshold: float,
                     fallback: Sequence[str] = ()) -> List[str]:
    """Five guesses for one Humpback query: `new_whale` goes before the first candidate whose score
    is below the threshold (after all of them if none is), duplicates dropped; padded from
    `fallback` (e.g. the most frequent database whales) when fewer than five are left."""
    guesses: List[str] = []
    for identity, score in candidates:
        score = -math.inf if score is None or math.isnan(score) else score
        if score < threshold and HUMPBACK_NEW not in guesses:
            guesses.append(HUMPBACK_NEW)
        name = clean_identity(identity) or HUMPBACK_NEW
        if name not in guesses:
            guesses.append(name)
    for name in [HUMPBACK_NEW, *fallback]:
        if len(guesses) >= 5:
            break
        if name not in guesses:
            guesses.append(name)
    return guesses[:5]


MAX_HUMPBACK_THRESHOLDS = 2048  # candidate thresholds tried for MAP@5 (quantiles of the scores beyond)


def _map5_curve(top_scores: np.ndarray, truth_rank: np.ndarray, known: np.ndarray,
                thresholds: np.ndarray) -> np.ndarray:
    """Mean MAP@5 at each threshold when `new_whale` goes before the first candidate below it.

    top_scores: (Q, 5) scores of each query's first five candidates, best first (-inf padded);
    truth_rank: (Q,) rank of the right whale among them (5 = absent); known: the query's whale is in
    the database (else the right answer is new_whale). new_whale's slot is the number of candidates
    at or above the threshold; a known whale ranked r moves one slot down when new_whale is before it.
    """
    slot = (top_scores[None, :, :] >= thresholds[:, None, None]).sum(axis=2)  # (T, Q)
    r = truth_rank[None, :]
    position = np.where(r < slot, r, r + 1)
    known_gain = np.where(r < 5, 1.0 / (position + 1), 0.0) * (position < 5)
    unknown_gain = np.where(slot < 5, 1.0 / (slot + 1), 0.0)
    return np.where(known[None, :], known_gain, unknown_gain).mean(axis=1)


def tune_humpback_threshold(candidates: Sequence[Sequence[Tuple[str, float]]], true_ids: Sequence,
                            known: np.ndarray) -> Dict:
    """The threshold placing `new_whale` among the five guesses that maximises MAP@5 on a labelled
    validation split (`known`: the query's whale is in the validation database). Candidates are the
    midpoints between distinct candidate scores (quantiles when there are very many); among equal
    optima the middle of the longest run wins. Returns {"global": t, "validation": MAP@5}."""
    known = np.asarray(known, dtype=bool)
    if len(candidates) == 0:
        raise DataError("MAP@5 tuning needs labelled validation queries; the split has none")
    top = np.full((len(candidates), 5), -np.inf)
    rank = np.full(len(candidates), 5)
    for i, (cands, truth) in enumerate(zip(candidates, true_ids, strict=True)):
        names = []
        for identity, score in cands:
            if identity in names:
                continue
            names.append(identity)
            top[i, len(names) - 1] = -np.inf if score is None or math.isnan(score) else score
            if len(names) == 5:
                break
        if known[i] and truth in names:
            rank[i] = names.index(truth)
    finite = np.unique(top[np.isfinite(top)])
    if len(finite) > MAX_HUMPBACK_THRESHOLDS:
        finite = np.unique(np.quantile(finite, np.linspace(0, 1, MAX_HUMPBACK_THRESHOLDS)))
    thresholds, edges = _candidate_thresholds(finite, None)
    curve = _map5_curve(top, rank, known, thresholds)
    best = _middle_of_best(curve, thresholds, edges, grid_given=False)
    return {"global": best, "validation": float(_map5_curve(top, rank, known, np.array([best]))[0])}

"""Re-identification metrics: BAKS, BAUS, the AnimalCLEF 2025 score, MAP@5, CMC and mAP.

Conventions:
  * a prediction is an identity string, or a "new" label (`new_individual`, `new_whale`; a
    missing prediction counts as "new" too);
  * a ground truth is an identity string or None. A query is *known* when its true identity is
    in the database (`known_identities`), *unknown* otherwise: None, a new label, or an identity
    that appears only among the queries. Unknown queries whose truth is None cannot be told
    apart, so for BAUS they form a single group.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Sequence

import numpy as np
import pandas as pd

from data.table import clean_identity

HUMPBACK_NEW = "new_whale"


def _truths(y_true: Iterable) -> np.ndarray:
    return np.array([clean_identity(v) for v in y_true], dtype=object)


def _predictions(y_pred: Iterable) -> np.ndarray:
    """Predicted identity, or None where the prediction is a new label (or missing)."""
    return np.array([clean_identity(v) for v in y_pred], dtype=object)


def _known_mask(truth: np.ndarray, known_identities: Iterable[str]) -> np.ndarray:
    return pd.Series(truth, dtype=object).isin(set(known_identities)).to_numpy()


def _balanced(groups: np.ndarray, correct: np.ndarray) -> float:
    """Mean over groups of the per-group accuracy (None is one group of its own)."""
    if len(groups) == 0:
        return math.nan
    frame = pd.DataFrame({"group": groups, "correct": correct})
    return float(frame.groupby("group", dropna=False)["correct"].mean().mean())


def _check_lengths(**arrays: Sequence) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"inputs differ in length: {lengths}")


def baks(y_true: Sequence, y_pred: Sequence, known_identities: Iterable[str]) -> float:
    """Balanced accuracy on known samples; NaN when no query is known."""
    _check_lengths(y_true=y_true, y_pred=y_pred)
    truth, pred = _truths(y_true), _predictions(y_pred)
    known = _known_mask(truth, known_identities)
    return _balanced(truth[known], pred[known] == truth[known])


def baus(y_true: Sequence, y_pred: Sequence, known_identities: Iterable[str]) -> float:
    """Balanced accuracy on unknown samples (fraction predicted new per unknown identity); NaN if none."""
    _check_lengths(y_true=y_true, y_pred=y_pred)
    truth, pred = _truths(y_true), _predictions(y_pred)
    unknown = ~_known_mask(truth, known_identities)
    predicted_new = np.array([p is None for p in pred[unknown]], dtype=bool)
    return _balanced(truth[unknown], predicted_new)


def geometric_mean(baks_value: float, baus_value: float) -> float:
    """sqrt(BAKS x BAUS), with a NaN part counting as 0 (the AnimalCLEF 2025 rule)."""
    parts = [0.0 if v is None or math.isnan(v) else float(v) for v in (baks_value, baus_value)]
    return math.sqrt(max(parts[0], 0.0) * max(parts[1], 0.0))


def animalclef_score(y_true: Sequence, y_pred: Sequence, datasets: Sequence[str],
                     known_identities: Iterable[str]) -> Dict:
    """The AnimalCLEF 2025 score: per `dataset` sqrt(BAKS x BAUS), then the plain mean over datasets.

    Returns {"score", "BAKS", "BAUS", "per_dataset": {dataset: {"BAKS", "BAUS", "score", "queries"}}};
    the top-level BAKS/BAUS are means over datasets ignoring NaN parts (for reports only: the
    score is computed per dataset, never from pooled images). NaN values stay NaN.
    """
    _check_lengths(y_true=y_true, y_pred=y_pred, datasets=datasets)
    known = set(known_identities)
    truth, pred, groups = np.asarray(list(y_true), object), np.asarray(list(y_pred), object), np.asarray(datasets)
    per_dataset = {}
    for name in sorted(set(groups.tolist())):
        rows = groups == name
        b_k = baks(truth[rows], pred[rows], known)
        b_u = baus(truth[rows], pred[rows], known)
        per_dataset[name] = {"BAKS": b_k, "BAUS": b_u, "score": geometric_mean(b_k, b_u),
                             "queries": int(rows.sum())}
    values = list(per_dataset.values())

    def mean_of(key: str) -> float:
        finite = [v[key] for v in values if not math.isnan(v[key])]
        return float(np.mean(finite)) if finite else math.nan

    return {"score": mean_of("score") if values else math.nan, "BAKS": mean_of("BAKS"),
            "BAUS": mean_of("BAUS"), "per_dataset": per_dataset}


def _humpback_label(value) -> str:
    """Identity, or `new_whale` for every way of saying "unknown" (a truth None, new_individual ...)."""
    identity = clean_identity(value)
    return HUMPBACK_NEW if identity is None else identity


def map_at_5(y_true: Sequence, guesses: Sequence[Sequence[str]]) -> float:
    """Kaggle Humpback MAP@5: per image 1/rank of the first correct guess among five, else 0.

    In Humpback `new_whale` is a label like any other: a truth of `new_whale` (or None, which is
    how our table stores it) is matched by a guess `new_whale`. Only the first five guesses count,
    and a repeated guess cannot score twice (only the first correct position counts).
    """
    _check_lengths(y_true=y_true, guesses=guesses)
    if len(y_true) == 0:
        return math.nan
    total = 0.0
    for truth, five in zip(y_true, guesses, strict=True):
        target = _humpback_label(truth)
        ranked = [_humpback_label(g) for g in list(five)[:5]]
        if target in ranked:
            total += 1.0 / (ranked.index(target) + 1)
    return total / len(y_true)


def _ranked_array(ranked: Sequence[Sequence]) -> np.ndarray:
    """(Q, K) object array from ragged ranked lists, padded with None."""
    if isinstance(ranked, np.ndarray) and ranked.ndim == 2:
        return ranked.astype(object)
    width = max((len(r) for r in ranked), default=0)
    out = np.full((len(ranked), width), None, dtype=object)
    for i, row in enumerate(ranked):
        out[i, :len(row)] = list(row)
    return out


def _hits(ranked: Sequence[Sequence], y_true: Sequence) -> np.ndarray:
    labels = _ranked_array(ranked)
    truth = _truths(y_true)
    _check_lengths(ranked=labels, y_true=truth)
    # `==` on object arrays compares element-wise; None never equals an identity string.
    return (labels == truth[:, None]) & (truth[:, None] != None)  # noqa: E711


def cmc(ranked_identities: Sequence[Sequence[str]], y_true: Sequence, ks: Sequence[int] = (1, 5, 10),
        gallery_identities: Iterable[str] | None = None) -> Dict[str, float]:
    """CMC rank-k: fraction of queries whose true identity appears among the first k ranked labels.

    The ranking may be image-level (gallery labels of the top-K images, as in person re-ID
    toolboxes) or identity-level (distinct identities). Queries count only when their identity
    has a match in the gallery: with `gallery_identities` given, identities in it; otherwise every
    query whose truth is not None. Returns {"rank1": ..., "rank5": ...}; NaN when no query counts.
    """
    hits = _hits(ranked_identities, y_true)
    truth = _truths(y_true)
    valid = truth != None  # noqa: E711
    if gallery_identities is not None:
        valid &= _known_mask(truth, gallery_identities)
    hits = hits[valid]
    never = np.iinfo(np.int64).max
    first = np.where(hits.any(axis=1), hits.argmax(axis=1), never) if hits.shape[1] else np.full(len(hits), never)
    return {f"rank{k}": float(np.mean(first < k)) if len(first) else math.nan for k in ks}


def count_relevant(y_true: Sequence, gallery_labels: Sequence) -> np.ndarray:
    """Number of gallery items sharing each query's identity (0 for None or absent identities)."""
    counts = pd.Series(list(gallery_labels), dtype=object).dropna().value_counts()
    return pd.Series(_truths(y_true), dtype=object).map(counts).fillna(0).astype(np.int64).to_numpy()


def mean_average_precision(ranked_labels: Sequence[Sequence[str]], y_true: Sequence,
                           n_relevant: Sequence[int] | None = None,
                           gallery_labels: Sequence | None = None) -> float:
    """Re-ID mAP from each query's top-K ranked gallery labels (image level).

    AP = (1 / R) * sum over ranks r holding a relevant item of precision@r, where R is the total
    number of relevant gallery items (`n_relevant`, or counted from `gallery_labels`). With K at
    least the gallery size this is the standard re-ID AP; with a truncated top-K, relevant items
    beyond K add nothing, so it is a lower bound that is exact whenever all of a query's relevant
    items rank within K. Queries with R = 0 (identity absent from the gallery) are left out; NaN
    when none remains.
    """
    hits = _hits(ranked_labels, y_true)
    if n_relevant is None:
        if gallery_labels is None:
            raise ValueError("give n_relevant or gallery_labels")
        n_relevant = count_relevant(y_true, gallery_labels)
    total = np.asarray(n_relevant, dtype=np.float64)
    _check_lengths(hits=hits, n_relevant=total)
    valid = total > 0
    if not valid.any():
        return math.nan
    hits = hits[valid].astype(np.float64)
    precision = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    return float(np.mean((precision * hits).sum(axis=1) / total[valid]))


def score_difference_interval(y_true: Sequence, pred_a: Sequence, pred_b: Sequence, datasets: Sequence[str],
                              known_identities: Iterable[str], draws: int = 1000, level: float = 0.95,
                              seed: int = 0) -> Dict[str, float]:
    """The AnimalCLEF score of `pred_a` minus that of `pred_b` on the same queries, with a bootstrap
    interval over individuals: each draw resamples, per dataset, the known and the new identities
    apart, with replacement (an identity drawn twice counts twice in the balanced accuracies), so
    the interval says how large a difference between two scorings one test part can tell from chance.
    Returns {"difference", "low", "high"}."""
    _check_lengths(y_true=y_true, pred_a=pred_a, pred_b=pred_b, datasets=datasets)
    truth, groups = _truths(y_true), np.asarray(list(datasets), dtype=object)
    known = _known_mask(truth, known_identities)
    # Per query, whether each scoring got it right: the identity for a known one, "new" for the rest.
    right = [np.where(known, pred == truth, np.array([p is None for p in pred], dtype=bool))
             for pred in (_predictions(pred_a), _predictions(pred_b))]
    frame = pd.DataFrame({"dataset": groups, "identity": truth, "known": known, "a": right[0], "b": right[1]})
    per_identity = frame.groupby(["dataset", "known", "identity"], dropna=False)[["a", "b"]].mean().reset_index()
    strata = {key: part[["a", "b"]].to_numpy(dtype=np.float64)
              for key, part in per_identity.groupby(["dataset", "known"])}
    names = sorted(set(groups.tolist()))

    def difference(pick) -> float:
        scores = []
        for name in names:
            parts = [pick(strata[(name, side)]).mean(axis=0) if (name, side) in strata else np.zeros(2)
                     for side in (True, False)]
            scores.append(np.sqrt(parts[0] * parts[1]))  # (a, b): sqrt(BAKS x BAUS) of each
        a, b = np.mean(scores, axis=0)
        return float(a - b)

    rng = np.random.default_rng(seed)
    drawn = [difference(lambda rows: rows[rng.integers(0, len(rows), len(rows))]) for _ in range(draws)]
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(drawn, [tail, 100 - tail])
    return {"difference": difference(lambda rows: rows), "low": float(low), "high": float(high)}

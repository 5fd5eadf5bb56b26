"""Scores to probabilities, and ensembles of scorers by soft voting.

Every scorer scores on its own scale (the cosine of one backbone is not the cosine of another, nor
a softmax, nor a keypoint-match count), so before scorers are averaged or thresholded each score is
mapped to the probability that the pair shows the same individual. The map is fitted on labelled
database pairs (isotonic regression, as in WildFusion; logistic as an option) and is **strictly
increasing**: two pairs whose raw scores differ never share a calibrated score. A plain isotonic
fit is a step function whose wide plateaus would tie most queries of a weak model, and the open-set
threshold, tuned and applied on calibrated scores, could then only fall between plateaus.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from core.errors import ConfigError, DataError
from core.suggest import did_you_mean
from engine.retrieval import Candidates, as_float32, encode_labels, exact_search

METHODS = ("isotonic", "logistic", "none")
# Share of a logistic ramp over the fitted scores' spread blended into every calibrator: enough to
# keep scores beyond the fitted pairs' range (and any flat stretch) in their raw order at a
# resolution thresholds can use, small enough to leave the probabilities where the pairs put them.
RAMP_SHARE = 0.02


@dataclass
class Calibrator:
    """A strictly increasing map from raw scores to probabilities in (0, 1).

    p(s) = (1 - RAMP_SHARE) * base(s) + RAMP_SHARE * sigmoid((s - centre) / spread), where base is
    isotonic: piecewise-linear through the centres of the isotonic fit's blocks (centred isotonic
    regression: each run of pairs sharing one fitted value becomes one point at its mean score, so
    the map rises between blocks instead of stepping), clipped at the outer centres;
    logistic: sigmoid(a*s+b) with a >= 0 (a = 0 when the scores carry no evidence).
    none: the raw scores, unchanged (not probabilities: for a single scorer only).
    """

    method: str
    params: Dict[str, object] = field(default_factory=dict)

    def __call__(self, scores) -> np.ndarray:
        s = np.asarray(scores, dtype=np.float64)
        if self.method == "none":
            return s
        if self.method == "isotonic":
            base = np.interp(s, self.params["x"], self.params["y"])
        else:
            base = _sigmoid(self.params["coef"] * s + self.params["intercept"])
        ramp = _sigmoid((s - self.params["centre"]) / self.params["spread"])
        return (1.0 - RAMP_SHARE) * base + RAMP_SHARE * ramp

    def to_dict(self) -> Dict[str, object]:
        """JSON-serialisable (for manifest.json, and to reuse the calibration later)."""
        return {"method": self.method, **self.params}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Calibrator:
        method = data.get("method")
        if method not in METHODS:
            raise ConfigError(f"calibrator: unknown method {method!r}{did_you_mean(str(method), METHODS)}")
        needed = {"isotonic": ("x", "y", "centre", "spread"), "logistic": ("coef", "intercept", "centre", "spread"),
                  "none": ()}[method]
        missing = [key for key in needed if key not in data]
        if missing:
            raise ConfigError(f"calibrator ({method}): missing {', '.join(missing)}")
        params = {key: float(data[key]) for key in needed if key not in ("x", "y")}
        if method == "isotonic":
            params.update(x=[float(v) for v in data["x"]], y=[float(v) for v in data["y"]])
        return cls(method, params)


def _sigmoid(z) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def _block_centres(scores: np.ndarray, fitted: np.ndarray) -> Tuple[list, list]:
    """(mean score, value) of each run of sorted pairs sharing one isotonic value."""
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], fitted[order]
    starts = np.flatnonzero(np.concatenate([[True], np.diff(y) != 0]))
    sums = np.add.reduceat(s, starts)
    counts = np.diff(np.append(starts, len(s)))
    return (sums / counts).tolist(), y[starts].tolist()


def fit_calibrator(scores: Sequence[float], same: Sequence[bool], method: str = "isotonic") -> Calibrator:
    """Fit scores -> P(same individual) on labelled pairs (see `pair_scores_for_calibration`).

    The probabilities reflect the mix of pairs they were fitted on; fitted on each image's top-k
    neighbours, that mix resembles a query's top candidates, which is what they are applied to.
    Logistic regression is effectively unregularised (Platt scaling); if its slope comes out
    negative (scores carry no evidence) it is set to 0, leaving the base rate and the ramp.
    """
    if method not in METHODS:
        raise ConfigError(f"calibration: unknown method '{method}'{did_you_mean(method, METHODS)}")
    if method == "none":
        return Calibrator("none")
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(same, dtype=bool)
    if s.shape != y.shape:
        raise ValueError(f"{len(s)} scores for {len(y)} labels")
    finite = np.isfinite(s)
    s, y = s[finite], y[finite]
    if y.all() or not y.any():
        raise DataError(f"calibration needs pairs of the same and of different individuals; got {int(y.sum())} "
                        f"same and {int((~y).sum())} different (the database needs identities with at "
                        "least two images, and more than one identity)")
    spread = float(s.std())
    ramp = {"centre": float(s.mean()), "spread": spread if spread > 0 else 1.0}
    if method == "isotonic":
        iso = IsotonicRegression(out_of_bounds="clip", increasing=True, y_min=0.0, y_max=1.0).fit(s, y)
        x, values = _block_centres(s, iso.predict(s))
        return Calibrator("isotonic", {"x": x, "y": values, **ramp})
    model = LogisticRegression(C=1e6).fit(s[:, None], y)
    coef = float(model.coef_[0, 0])
    if coef < 0:
        rate = float(np.clip(y.mean(), 1e-12, 1 - 1e-12))
        return Calibrator("logistic", {"coef": 0.0, "intercept": math.log(rate / (1 - rate)), **ramp})
    return Calibrator("logistic", {"coef": coef, "intercept": float(model.intercept_[0]), **ramp})


def pair_scores_for_calibration(embeddings: np.ndarray, labels: Sequence, k: int = 10,
                                rng: np.random.Generator | None = None, max_queries: int = 20000,
                                progress: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Labelled pairs from the database: each image against its top-k neighbours, itself excluded.

    Nearest neighbours give what a calibrator must separate: the positives that are found and
    the hard negatives that compete with them (random pairs would be almost all easy negatives).
    Images without identity (None) are left out. With more than `max_queries` images, a random
    subset (drawn with `rng`) is the query side; the neighbours come from all images.
    Returns (scores float64, same bool), flat, k per query image.
    """
    codes, _ = encode_labels(labels)
    x = as_float32(embeddings, "embeddings")
    if len(codes) != len(x):
        raise ValueError(f"{len(codes)} labels for {len(x)} embeddings")
    labelled = np.flatnonzero(codes >= 0)
    x, codes = x[labelled], codes[labelled]
    if len(x) < 2:
        raise DataError(f"calibration needs at least two labelled database images, got {len(x)}")
    rows = np.arange(len(x))
    if len(rows) > max_queries:
        rng = rng if rng is not None else np.random.default_rng(0)
        rows = np.sort(rng.choice(len(x), size=max_queries, replace=False))
    scores, indices = exact_search(x[rows], x, min(k, len(x) - 1) + 1, progress=progress)
    keep = indices != rows[:, None]
    # With exact duplicates an image may not retrieve itself first; then drop its last neighbour.
    keep[keep.all(axis=1), -1] = False
    neighbours = indices[keep]
    same = codes[np.repeat(rows, keep.sum(axis=1))] == codes[neighbours]
    return scores[keep].astype(np.float64), same


def _equal_or_given(weights: Sequence[float] | None, count: int) -> np.ndarray:
    w = np.ones(count) if weights is None or len(weights) == 0 else np.asarray(weights, dtype=np.float64)
    if len(w) != count or (w < 0).any() or w.sum() <= 0:
        raise ConfigError(f"weights: need {count} non-negative numbers with a positive sum, got {list(w)}")
    return w / w.sum()


def soft_vote(per_model: Sequence[Candidates], weights: Sequence[float] | None = None) -> Candidates:
    """Weighted mean of calibrated probabilities over the union of the models' candidates.

    A model that does not list a candidate contributes 0 for it: it did not retrieve that identity
    among its top K, which is evidence against the match, and 0 is the floor of a probability.
    Weights are normalised to sum to 1, so agreeing models keep their probability. A model listing
    an identity twice counts its best score. Per query, sorted by probability, best first.
    """
    if not per_model:
        raise ValueError("soft_vote needs at least one model")
    queries = len(per_model[0])
    if any(len(model) != queries for model in per_model):
        raise ValueError(f"models give candidates for different numbers of queries: {[len(m) for m in per_model]}")
    w = _equal_or_given(weights, len(per_model))
    # Plain dicts per query: eval.py votes some fifty times while it tunes weights, and a pandas
    # group-by per vote was a tenth of a small set's evaluation.
    totals: List[Dict] = [{} for _ in range(queries)]
    for weight, model in zip(w.tolist(), per_model, strict=True):
        for total, candidates in zip(totals, model, strict=True):
            best: Dict = {}
            for identity, prob in candidates:
                prob = float(prob)
                if identity not in best or prob > best[identity]:
                    best[identity] = prob
            for identity, prob in best.items():
                total[identity] = total.get(identity, 0.0) + prob * weight
    # Best first; equal probabilities in identity order.
    return [sorted(total.items(), key=lambda item: (-item[1], item[0])) for total in totals]

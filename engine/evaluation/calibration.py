"""Scores to probabilities, and ensembles of models by soft voting.

Every model scores on its own scale (the cosine of one backbone is not the cosine of another, nor
a keypoint-match count), so before models are averaged or thresholded each score is mapped to
the probability that the pair shows the same individual. The map is monotone, fitted on labelled
database pairs (isotonic regression, as in WildFusion; logistic as an option).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Mapping, Sequence, Tuple, Union

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from core.errors import ConfigError, DataError
from core.suggest import did_you_mean
from engine.retrieval import Candidates, as_float32, encode_labels, exact_search

METHODS = ("isotonic", "logistic", "none")


@dataclass
class Calibrator:
    """A monotone non-decreasing map from raw scores to probabilities in [0, 1].

    isotonic: piecewise-linear through sklearn's X_thresholds_/y_thresholds_, clipped at the
    ends (what IsotonicRegression(out_of_bounds="clip").predict computes). logistic: sigmoid(a*s+b)
    with a >= 0. none: the raw scores, unchanged (not probabilities: use for one model only).
    """

    method: str
    params: Dict[str, object] = field(default_factory=dict)

    def __call__(self, scores) -> np.ndarray:
        s = np.asarray(scores, dtype=np.float64)
        if self.method == "isotonic":
            return np.interp(s, self.params["x"], self.params["y"])
        if self.method == "logistic":
            with np.errstate(over="ignore"):
                return 1.0 / (1.0 + np.exp(-(self.params["coef"] * s + self.params["intercept"])))
        return s

    def to_dict(self) -> Dict[str, object]:
        """JSON-serialisable (for manifest.json, and to reuse the calibration later)."""
        return {"method": self.method, **self.params}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Calibrator:
        method = data.get("method")
        if method not in METHODS:
            raise ConfigError(f"calibrator: unknown method {method!r}{did_you_mean(str(method), METHODS)}")
        needed = {"isotonic": ("x", "y"), "logistic": ("coef", "intercept"), "none": ()}[method]
        missing = [key for key in needed if key not in data]
        if missing:
            raise ConfigError(f"calibrator ({method}): missing {', '.join(missing)}")
        if method == "isotonic":
            return cls(method, {"x": [float(v) for v in data["x"]], "y": [float(v) for v in data["y"]]})
        return cls(method, {key: float(data[key]) for key in needed})


def fit_calibrator(scores: Sequence[float], same: Sequence[bool], method: str = "isotonic") -> Calibrator:
    """Fit scores -> P(same individual) on labelled pairs (see `pair_scores_for_calibration`).

    The probabilities reflect the mix of pairs they were fitted on; fitted on each image's top-k
    neighbours, that mix resembles a query's top candidates, which is what they are applied to.
    Logistic regression is effectively unregularised (Platt scaling); if its slope comes out
    negative (scores carry no evidence) it is set to 0, leaving the base rate.
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
    if method == "isotonic":
        iso = IsotonicRegression(out_of_bounds="clip", increasing=True, y_min=0.0, y_max=1.0).fit(s, y)
        return Calibrator("isotonic", {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()})
    model = LogisticRegression(C=1e6).fit(s[:, None], y)
    coef = float(model.coef_[0, 0])
    if coef < 0:
        rate = float(np.clip(y.mean(), 1e-12, 1 - 1e-12))
        return Calibrator("logistic", {"coef": 0.0, "intercept": math.log(rate / (1 - rate))})
    return Calibrator("logistic", {"coef": coef, "intercept": float(model.intercept_[0])})


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


def _frame_to_candidates(frame: pd.DataFrame, queries: int) -> Candidates:
    out: Candidates = [[] for _ in range(queries)]
    ordered = frame.sort_values(["query", "prob"], ascending=[True, False], kind="stable")
    columns = (ordered[name].tolist() for name in ("query", "identity", "prob"))
    for q, identity, prob in zip(*columns, strict=True):
        out[q].append((identity, prob))
    return out


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
    parts = []
    for index, model in enumerate(per_model):
        flat = [(q, identity, float(prob)) for q, cands in enumerate(model) for identity, prob in cands]
        part = pd.DataFrame(flat, columns=["query", "identity", "prob"])
        part = part.groupby(["query", "identity"], as_index=False)["prob"].max()
        part["prob"] *= w[index]
        parts.append(part)
    votes = pd.concat(parts, ignore_index=True).groupby(["query", "identity"], as_index=False)["prob"].sum()
    return _frame_to_candidates(votes, queries)


def _class_names(label_map: Union[Mapping, Sequence[str]], classes: int) -> np.ndarray:
    """Identity of each class index from {identity: index}, {index: identity} (keys may be JSON strings) or a list."""
    if isinstance(label_map, Mapping):
        if all(isinstance(v, (int, np.integer)) for v in label_map.values()):
            pairs = {int(v): str(k) for k, v in label_map.items()}
        else:
            pairs = {int(k): str(v) for k, v in label_map.items()}
        if sorted(pairs) != list(range(len(pairs))):
            raise ConfigError("label map: class indices must be 0..n-1 without gaps")
        names = [pairs[i] for i in range(len(pairs))]
    else:
        names = [str(v) for v in label_map]
    if len(names) != classes:
        raise ConfigError(f"the label map has {len(names)} identities but the classifier outputs {classes} classes")
    return np.asarray(names, dtype=object)


def softmax_candidates(logits: Union[np.ndarray, Sequence[np.ndarray]], label_map: Union[Mapping, Sequence[str]],
                       top: int = 10, weights: Sequence[float] | None = None) -> Candidates:
    """Classifiers: softmax over the known identities, averaged over models (weighted), top identities.

    `logits` is one (Q, C) array or a list of them from classifiers sharing one label map.
    """
    stack = [np.asarray(logits, dtype=np.float64)] if isinstance(logits, np.ndarray) else \
        [np.asarray(part, dtype=np.float64) for part in logits]
    shapes = {part.shape for part in stack}
    if len(shapes) != 1 or len(stack[0].shape) != 2:
        raise ValueError(f"logits must be (Q, C) arrays of one shape, got {sorted(shapes)}")
    w = _equal_or_given(weights, len(stack))
    probs = np.zeros_like(stack[0])
    for weight, part in zip(w, stack, strict=True):
        shifted = np.exp(part - part.max(axis=1, keepdims=True))
        probs += weight * shifted / shifted.sum(axis=1, keepdims=True)
    names = _class_names(label_map, probs.shape[1])
    top = min(top, probs.shape[1])
    best = np.argpartition(-probs, top - 1, axis=1)[:, :top]
    order = np.argsort(-np.take_along_axis(probs, best, axis=1), axis=1, kind="stable")
    best = np.take_along_axis(best, order, axis=1)
    values = np.take_along_axis(probs, best, axis=1)
    return [list(zip(names[b].tolist(), v.tolist(), strict=True)) for b, v in zip(best, values, strict=True)]

"""The open-set decision for every query: calibrators and threshold from a split of the database,
then the ensemble's vote on the real queries.

* **Threshold.** Tuned without query labels, on a split carved from the labelled database: some
  identities are held out, a fraction of them act as "new" (all their images become validation
  queries), the others send half their images to the validation queries; the validation queries
  are matched against the rest of the database. When the models' label maps show which identities
  they were trained on and at least MIN_UNSEEN_IDENTITIES of a dataset's identities are unseen by
  all of them (train.py holds validation identities out), the held-out identities are drawn from
  those: scores of training images are optimistic, so a threshold tuned on them would not transfer.
  Calibrators are fitted on the same remaining database, never on the validation queries.
* **Scores the threshold sees** are fused calibrated probabilities; every calibrator is strictly
  increasing, so a single model's decisions follow its raw scores' order exactly.
* **Humpback**: where `new_whale` goes among the five guesses is tuned for MAP@5 on the same split.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from typing import Any, Dict, Optional, Sequence

import numpy as np
import pandas as pd

from core.errors import DataError
from core.schema import EvalConfig
from data.splits import open_set_split
from engine.evaluation.neighbour_scorers import NEIGHBOUR_KINDS, neighbour_scorers
from engine.evaluation.openset import (
    decide,
    humpback_guesses,
    tune_humpback_threshold,
    tune_threshold,
)
from engine.evaluation.scorers import ImageRanking, MatchSpace, ModelOutput, Scorer, scorers_for
from engine.evaluation.voting import fit_calibrators, vote
from engine.retrieval import Candidates

TUNING_QUERY_FRACTION = 0.5  # of a known held-out identity's images used as validation queries
MIN_UNSEEN_IDENTITIES = 4  # per dataset, to tune on identities no model was trained on
MIN_HELD_IDENTITIES = 2  # per dataset: one known and one new at least
MATCHER_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # rerank.tune_weight: 0 = the matcher does not help here


@dataclass
class Evaluation:
    """Everything decided for the queries, plus what the tuning split saw (for the report)."""

    candidates: Candidates  # fused identity ranking per query, best first
    best_ids: np.ndarray
    best_scores: np.ndarray
    threshold: Dict[str, Any]  # {"source", "global", "per_dataset", ...}
    decided: np.ndarray  # identity or new_individual per query
    predictions: list  # what the submission holds (AnimalCLEF labels or Humpback guess lists)
    tuning: Optional[Dict[str, Any]]  # best_scores, known, datasets of the validation queries
    rankings: Dict[str, ImageRanking]  # per embedding scorer: top-k gallery images of each query
    raw: Dict[str, Candidates]  # per scorer: raw identity candidates of each query
    scorers: Dict[str, Dict[str, Any]]  # per scorer: kind, stage, weight, calibrator
    shortlist: Optional[np.ndarray] = None  # (Q, rerank.shortlist) gallery rows re-scored per query, if any


def training_identities(metas: Sequence[Optional[Dict[str, int]]]) -> Optional[set]:
    """Identities any model was trained on, from their label maps; None when no model records one."""
    maps = [m for m in metas if m]
    return set().union(*(set(m) for m in maps)) if maps else None


def tuning_split(gallery: pd.DataFrame, cfg: EvalConfig, seen: Optional[set] = None) -> pd.DataFrame:
    """Held-out database identities as a labelled open-set split (`split` = database | query).

    Per dataset, `threshold.holdout_fraction` of the identities (at least MIN_HELD_IDENTITIES, so
    one can act as new) are drawn from those no model was trained on when there are enough of
    them, else from all; data.splits.open_set_split then makes `threshold.unknown_fraction` of
    them new individuals.
    """
    held = []
    for dataset, part in gallery.groupby("dataset", sort=True):
        identities = sorted(part["identity"].unique())
        if len(identities) < 2:
            continue
        unseen = [i for i in identities if seen is not None and i not in seen]
        pool, most = (unseen, len(unseen)) if len(unseen) >= MIN_UNSEEN_IDENTITIES else (identities, len(identities) - 1)
        wanted = min(max(MIN_HELD_IDENTITIES, round(cfg.threshold.holdout_fraction * len(identities))), most)
        rng = np.random.default_rng([cfg.seed, zlib.crc32(str(dataset).encode())])
        held.append(part[part["identity"].isin(set(rng.permutation(pool)[:wanted]))])
    if not held:
        raise DataError("every dataset of the database has a single identity: no held-out identities can tune "
                        "the threshold; set threshold.value")
    return open_set_split(pd.concat(held), unknown_fraction=cfg.threshold.unknown_fraction,
                          query_fraction=TUNING_QUERY_FRACTION, seed=cfg.seed)


def namespaced_by_dataset(gallery: pd.DataFrame) -> bool:
    """True when no identity appears in two datasets: then a query is only matched within its own
    dataset (a lynx is never a salamander), else against the whole gallery."""
    return bool(gallery.groupby("identity")["dataset"].nunique().max() <= 1)


def best_of(candidates: Candidates):
    """(best identity, its score) per query; None and -inf where a query has no candidate."""
    ids = np.array([c[0][0] if c else None for c in candidates], dtype=object)
    scores = np.array([c[0][1] if c else -np.inf for c in candidates], dtype=np.float64)
    return ids, scores


def _held_out_pass(cfg: EvalConfig, scorers: Sequence[Scorer], space: MatchSpace, gallery: pd.DataFrame,
                   seen: Optional[set], seed: int, fit: bool) -> Dict[str, Any]:
    """One held-out split of the database: its validation queries (`val_q`) and the rest (`val_g`,
    on which the calibrators are fitted when `fit`), and what the threshold tuning needs of them."""
    all_gallery = np.arange(len(gallery))
    split = tuning_split(gallery, replace(cfg, seed=seed), seen)
    position = pd.Series(all_gallery, index=gallery["image_id"])
    val_q = position[split.loc[split["split"] == "query", "image_id"]].to_numpy()
    val_g = np.setdiff1d(all_gallery, val_q)
    if fit:
        fit_calibrators(scorers, space, val_g, cfg.calibration, cfg.seed, cfg.rerank.shortlist)
    truth = space.labels[val_q]
    return {"val_q": val_q, "val_g": val_g, "truth": truth, "datasets": space.datasets[val_q],
            "known": pd.Series(truth, dtype=object).isin(set(space.labels[val_g])).to_numpy(),
            "identities": int(split["identity"].nunique())}


@dataclass
class _Pooled:
    """The validation queries of every held-out split, and the threshold tuned on their vote."""

    candidates: Candidates
    best_scores: np.ndarray
    tuned: Dict[str, Any]
    truth: np.ndarray  # identity of each validation query
    known: np.ndarray  # whether it is in its split's validation database
    datasets: np.ndarray

    def score(self, per_dataset: bool) -> float:
        return float(self.tuned["validation"]["per_dataset" if per_dataset else "global"])


def _pooled_vote(cfg: EvalConfig, scorers: Sequence[Scorer], space: MatchSpace, passes: Sequence[Dict]) -> _Pooled:
    candidates = [c for p in passes for c in vote(scorers, space, p["val_q"], p["val_g"], cfg.rerank.shortlist).candidates]
    truth, known, datasets = (np.concatenate([p[key] for p in passes]) for key in ("truth", "known", "datasets"))
    val_ids, val_scores = best_of(candidates)
    # The same image held out twice is two validation queries; identities are told apart per split,
    # so a balanced accuracy weighs each (split, identity) once.
    groups = np.concatenate([[f"{i}/{t}" for t in p["truth"]] for i, p in enumerate(passes)]).astype(object)
    try:
        tuned = tune_threshold(val_scores, np.where(val_ids == truth, groups, None), groups, known, datasets,
                               per_dataset=cfg.threshold.per_dataset)
    except DataError as err:
        raise DataError(f"{err}; or set threshold.value") from err
    return _Pooled(candidates, val_scores, tuned, truth, known, datasets)


def _tune_weights(cfg: EvalConfig, scorers: Sequence[Scorer], space: MatchSpace, passes: Sequence[Dict]) -> tuple:
    """The weight of MATCHER_WEIGHTS whose vote scores best on the validation queries, chosen for
    the matcher first (the configured weight among equals), then for each scorer of
    rerank.neighbours in turn (0 among equals), the others' weights fixed; returns (pooled vote,
    {scorer name: record}). Scores do not depend on the weights, so each further weight only
    re-votes pairs already scored (the matcher's records are cached, neighbour sets prepared)."""
    groups = [[s for s in scorers if s.kind == "matcher"]]
    groups += [[s] for s in scorers if s.kind in NEIGHBOUR_KINDS]
    per_dataset = cfg.threshold.per_dataset
    pooled, records = None, {}
    for group in (g for g in groups if g):
        default = cfg.rerank.weight if group[0].kind == "matcher" else 0.0
        tried: Dict[float, _Pooled] = {}
        for weight in sorted({*MATCHER_WEIGHTS, default}):
            for scorer in group:
                scorer.weight = weight
            tried[weight] = _pooled_vote(cfg, scorers, space, passes)
        best = max(tried, key=lambda w: (round(tried[w].score(per_dataset), 9), w == default))
        for scorer in group:
            scorer.weight = best
        pooled = tried[best]
        records[group[0].name] = {"chosen": best, "validation_score": {str(w): round(p.score(per_dataset), 6)
                                                                       for w, p in tried.items()}}
    return pooled, records


def _tune(cfg: EvalConfig, scorers: Sequence[Scorer], outputs: Sequence[ModelOutput], space: MatchSpace,
          gallery: pd.DataFrame, kind: str) -> tuple:
    """Fit the calibrators and tune the threshold (and, with rerank.tune_weight, the matcher's
    weight) on held-out database identities.

    A small database gives a handful of validation queries, on which a threshold is a coin toss, so
    further splits (other seeds) are drawn until threshold.min_queries validation queries are
    pooled, at most threshold.max_splits splits. The calibrators are those of the first split (the
    others are matched with the same calibrators, so their scores share one scale).
    """
    softmax_voters = any(o.label_map is not None for o in outputs)
    # A classifier can only vote for identities it was trained on, so it needs seen identities held out.
    seen = None if softmax_voters else training_identities([o.info.get("training_identities") for o in outputs])
    passes = [_held_out_pass(cfg, scorers, space, gallery, seen, cfg.seed, fit=True)]
    while sum(len(p["truth"]) for p in passes) < cfg.threshold.min_queries and len(passes) < cfg.threshold.max_splits:
        passes.append(_held_out_pass(cfg, scorers, space, gallery, seen, cfg.seed + len(passes), fit=False))
    records = {}
    if cfg.rerank.tune_weight and any(s.kind == "matcher" or s.kind in NEIGHBOUR_KINDS for s in scorers):
        pooled, records = _tune_weights(cfg, scorers, space, passes)
    else:
        pooled = _pooled_vote(cfg, scorers, space, passes)
    threshold = {"source": "tuned on held-out database identities", "splits": len(passes), **pooled.tuned}
    for scorer in scorers:
        if scorer.name in records:
            key = "matcher_weight" if scorer.kind == "matcher" else f"{scorer.kind}_weight"
            threshold.setdefault(key, records[scorer.name])
    if not cfg.threshold.per_dataset:
        threshold["per_dataset"] = {}
    if kind == "humpback":
        threshold["new_whale"] = tune_humpback_threshold(pooled.candidates, pooled.truth, pooled.known)
    tuning = {"best_scores": pooled.best_scores, "known": pooled.known, "datasets": pooled.datasets,
              "queries": int(len(pooled.truth)), "splits": len(passes), "identities": int(sum(p["identities"] for p in passes)),
              "new_identities": int(sum(len(set(p["truth"][~p["known"]])) for p in passes))}
    return threshold, tuning


def evaluate_outputs(cfg: EvalConfig, gallery: pd.DataFrame, query: pd.DataFrame, outputs: Sequence[ModelOutput],
                     kind: str = "animalclef", extra_scorers: Sequence[Scorer] = ()) -> Evaluation:
    """The open-set decision for every query from the models' outputs (rows: gallery, then query),
    with `extra_scorers` (a keypoint matcher) voting beside the models' own scorers."""
    n_gallery = len(gallery)
    all_gallery = np.arange(n_gallery)
    q_rows = np.arange(n_gallery, n_gallery + len(query))
    datasets = np.concatenate([gallery["dataset"].to_numpy(dtype=object), query["dataset"].to_numpy(dtype=object)])
    space = MatchSpace(gallery["identity"].to_numpy(dtype=object), datasets, namespaced_by_dataset(gallery),
                       cfg.retrieval)
    scorers = scorers_for(outputs) + list(extra_scorers) + neighbour_scorers(outputs, cfg.rerank.neighbours)
    if not cfg.rerank.tune_weight:
        for scorer in scorers:
            if scorer.kind in NEIGHBOUR_KINDS:
                scorer.weight = 1.0
    tuning = None
    if cfg.threshold.value is None:
        threshold, tuning = _tune(cfg, scorers, outputs, space, gallery, kind)
    else:
        fit_calibrators(scorers, space, all_gallery, cfg.calibration, cfg.seed, cfg.rerank.shortlist)
        threshold = {"source": "threshold.value", "global": float(cfg.threshold.value), "per_dataset": {}}
    # Queries are matched against the whole gallery with the calibrators fitted above.
    result = vote(scorers, space, q_rows, all_gallery, cfg.rerank.shortlist)
    best_ids, best_scores = best_of(result.candidates)
    datasets_q = query["dataset"].tolist()
    decided = decide(best_ids, best_scores, threshold, datasets_q)
    if kind == "humpback":
        whale_threshold = threshold.get("new_whale", {}).get("global", threshold["global"])
        fallback = gallery["identity"].value_counts().index[:5].tolist()
        predictions = [humpback_guesses(c, whale_threshold, fallback) for c in result.candidates]
    else:
        predictions = list(decided)
    return Evaluation(result.candidates, best_ids, best_scores, threshold, decided, predictions, tuning,
                      result.rankings, result.raw, {s.name: {"kind": s.kind, "stage": s.stage, "weight": s.weight,
                                                             "calibrator": s.calibrator.to_dict()} for s in scorers},
                      result.shortlist)

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

import copy
import zlib
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from core.errors import DataError
from core.schema import EvalConfig
from data.splits import open_set_split
from engine.evaluation.adaptive import choose_margin
from engine.evaluation.choice import AS_GIVEN, choose, fusion_members, scorings_for
from engine.evaluation.neighbour_scorers import NEIGHBOUR_KINDS, neighbour_scorers
from engine.evaluation.openset import (
    decide,
    humpback_guesses,
    score_at,
    thresholds_for,
    tune_humpback_threshold,
    tune_threshold,
)
from engine.evaluation.scorers import ImageRanking, MatchSpace, ModelOutput, Scorer, scorers_for
from engine.evaluation.voting import Vote, fit_calibrators, vote
from engine.retrieval import Candidates

TUNING_QUERY_FRACTION = 0.5  # of a known held-out identity's images used as validation queries
MIN_UNSEEN_IDENTITIES = 4  # per dataset, to tune on identities no model was trained on
MIN_HELD_IDENTITIES = 2  # per dataset: one known and one new at least
MATCHER_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # rerank.tune_weight: 0 = the matcher does not help here
PAIR_HEAD_FACTORS = (0.0, 0.25, 0.5, 1.0)  # rerank.tune_pair_weight: of a pair head's share of its model's weight


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
    skipped: int = 0  # queries certain on the global vote (rerank.adaptive): their shortlists not re-scored
    tuning_pairs: int = 0  # pairs the keypoint matcher matched to calibrate and tune, before the queries' pairs


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


def _tune_weight(cfg: EvalConfig, scorers: Sequence[Scorer], space: MatchSpace, passes: Sequence[Dict], kind: str,
                 options: Sequence[float], configured: float, scale: bool) -> tuple:
    """The weight of the `kind` scorers (absolute, or with `scale` a factor of each one's own weight)
    of `options` whose vote scores best on the validation queries (`configured` among equals), set
    on them; returns (pooled vote, record). Scores of the pairs do not depend on the weight, so each
    further weight only re-votes."""
    tuned = [s for s in scorers if s.kind == kind]
    own = [s.weight for s in tuned]
    tried: Dict[float, _Pooled] = {}

    def set_weight(value: float) -> None:
        for scorer, base in zip(tuned, own, strict=True):
            scorer.weight = base * value if scale else value

    for value in sorted({*options, configured}):
        set_weight(value)
        tried[value] = _pooled_vote(cfg, scorers, space, passes)
    per_dataset = cfg.threshold.per_dataset
    best = max(tried, key=lambda w: (round(tried[w].score(per_dataset), 9), w == configured))
    set_weight(best)
    return tried[best], {"chosen": best, "validation_score": {str(w): round(p.score(per_dataset), 6)
                                                              for w, p in tried.items()}}


def _tune(cfg: EvalConfig, scorers: Sequence[Scorer], space: MatchSpace, gallery: pd.DataFrame, kind: str,
          seen: Optional[set], calibration: str) -> tuple:
    """Fit the calibrators and tune the threshold (and, with rerank.tune_pair_weight and
    rerank.tune_weight, the pair heads' and the matcher's weights) on held-out database identities.

    A small database gives a handful of validation queries, on which a threshold is a coin toss, so
    further splits (other seeds) are drawn until threshold.min_queries validation queries are
    pooled, at most threshold.max_splits splits. The calibrators are those of the first split (the
    others are matched with the same calibrators, so their scores share one scale).
    """
    cfg = replace(cfg, calibration=calibration)
    passes = [_held_out_pass(cfg, scorers, space, gallery, seen, cfg.seed, fit=True)]
    while sum(len(p["truth"]) for p in passes) < cfg.threshold.min_queries and len(passes) < cfg.threshold.max_splits:
        passes.append(_held_out_pass(cfg, scorers, space, gallery, seen, cfg.seed + len(passes), fit=False))
    pooled, records = None, {}
    kinds = {s.kind for s in scorers}
    # A pair head first (trained on other individuals, maybe another species, it may rank pairs no
    # better than chance here), then the matcher, then each re-ranker of rerank.neighbours, each on
    # the vote the previous one left.
    if cfg.rerank.tune_pair_weight and "pair_head" in kinds:
        pooled, records["pair_head_weight"] = _tune_weight(cfg, scorers, space, passes, "pair_head",
                                                           PAIR_HEAD_FACTORS, 1.0, scale=True)
    if cfg.rerank.tune_weight and "matcher" in kinds:
        pooled, records["matcher_weight"] = _tune_weight(cfg, scorers, space, passes, "matcher", MATCHER_WEIGHTS,
                                                         cfg.rerank.weight, scale=False)
    for neighbours in (k for k in NEIGHBOUR_KINDS if cfg.rerank.tune_weight and k in kinds):
        # 0 among equals: a re-ranker without pixels votes only where it helps.
        pooled, records[f"{neighbours}_weight"] = _tune_weight(cfg, scorers, space, passes, neighbours,
                                                               MATCHER_WEIGHTS, 0.0, scale=False)
    if pooled is None:
        pooled = _pooled_vote(cfg, scorers, space, passes)
    if cfg.rerank.adaptive and any(s.stage == "shortlist" for s in scorers):
        records["adaptive"] = _adaptive_margin(cfg, scorers, space, passes, pooled)
    threshold = {"source": "tuned on held-out database identities", "splits": len(passes), **pooled.tuned, **records}
    if not cfg.threshold.per_dataset:
        threshold["per_dataset"] = {}
    if kind == "humpback":
        threshold["new_whale"] = tune_humpback_threshold(pooled.candidates, pooled.truth, pooled.known)
    tuning = {"best_scores": pooled.best_scores, "known": pooled.known, "datasets": pooled.datasets,
              "queries": int(len(pooled.truth)), "splits": len(passes), "identities": int(sum(p["identities"] for p in passes)),
              "new_identities": int(sum(len(set(p["truth"][~p["known"]])) for p in passes))}
    return threshold, tuning


def _adaptive_margin(cfg: EvalConfig, scorers: Sequence[Scorer], space: MatchSpace, passes: Sequence[Dict],
                     pooled: _Pooled) -> Dict[str, Any]:
    """rerank.adaptive: the certainty margin chosen on the validation queries at the tuned threshold
    (engine.evaluation.adaptive); the global scorers' vote matches nothing."""
    global_scorers = [s for s in scorers if s.stage == "global"]
    global_vote = [c for p in passes for c in vote(global_scorers, space, p["val_q"], p["val_g"]).candidates]
    per_dataset = cfg.threshold.per_dataset
    limits = thresholds_for(pooled.datasets, pooled.tuned if per_dataset else pooled.tuned["global"], len(pooled.truth))
    groups = np.concatenate([[f"{i}/{t}" for t in p["truth"]] for i, p in enumerate(passes)]).astype(object)

    def score(candidates) -> float:
        ids, best = best_of(candidates)
        return score_at(best, np.where(ids == pooled.truth, groups, None), groups, pooled.known, pooled.datasets,
                        pooled.tuned, per_dataset)

    return choose_margin(global_vote, pooled.candidates, limits, score)


@dataclass
class _Tuned:
    """One scoring (engine.evaluation.choice) with its calibrators fitted and threshold tuned."""

    name: str
    scorers: List[Scorer]
    threshold: Dict[str, Any]
    tuning: Dict[str, Any]

    def validation(self, per_dataset: bool) -> Dict[str, float]:
        """Its validation score per dataset (with one global threshold, the mean over datasets as "all")."""
        scores = self.threshold["validation"]
        return dict(scores["by_dataset"]) if per_dataset else {"all": float(scores["global"])}


def _seen_identities(outputs: Sequence[ModelOutput]) -> Optional[set]:
    """Identities to keep out of the held-out split (None: any); one set for every scoring, so that
    all are tuned and compared on the same split."""
    everyone = [*outputs, *fusion_members(outputs)]
    # A classifier can only vote for identities it was trained on, so it needs seen identities held out.
    if any(o.label_map is not None for o in everyone):
        return None
    return training_identities([o.info.get("training_identities") for o in everyone])


def _ensemble(cfg: EvalConfig, outputs: Sequence[ModelOutput], extra_scorers: List[Scorer]) -> List[Scorer]:
    """The models' own scorers, the extra ones (a keypoint matcher) and the re-rankers of
    rerank.neighbours (weight 0 until tuned; 1 with rerank.tune_weight=false)."""
    neighbours = neighbour_scorers(outputs, cfg.rerank.neighbours)
    if not cfg.rerank.tune_weight:
        for scorer in neighbours:
            scorer.weight = 1.0
    return scorers_for(outputs) + extra_scorers + neighbours


def _tune_scorings(cfg: EvalConfig, outputs: Sequence[ModelOutput], extra_scorers: Sequence[Scorer],
                   space: MatchSpace, gallery: pd.DataFrame, kind: str) -> List[_Tuned]:
    """Every scoring cfg.choose_scoring allows (only the ensemble as given without a fusion model),
    each tuned on the same held-out split; each has its own copies of the extra scorers (weights and
    calibrators differ, a matcher's cached pairs are shared)."""
    seen = _seen_identities(outputs)
    scorings = scorings_for(outputs, cfg.calibration, alternatives=cfg.choose_scoring)
    tuned = []
    for scoring in scorings:
        scorers = _ensemble(cfg, scoring.outputs, [copy.copy(s) for s in extra_scorers])
        tuned.append(_Tuned(scoring.name, scorers, *_tune(cfg, scorers, space, gallery, kind, seen, scoring.calibration)))
    return tuned


def _choice_record(tuned: Sequence[_Tuned], chosen: Dict[str, str], per_dataset: bool) -> Dict[str, Any]:
    return {"chosen": chosen, "per_dataset": per_dataset,
            "validation_score": {t.name: {d: round(v, 6) for d, v in t.validation(per_dataset).items()} for t in tuned},
            "rule": "per dataset, the scoring with the best open-set score on the held-out database split; "
                    "the ensemble as given wins ties"}


def _merged_threshold(tuned: Dict[str, _Tuned], chosen: Dict[str, str], per_dataset: bool) -> Dict[str, Any]:
    """The ensemble's threshold record, with each dataset's threshold from the scoring it chose."""
    base = dict(tuned[AS_GIVEN].threshold) if AS_GIVEN in tuned else dict(next(iter(tuned.values())).threshold)
    if not per_dataset:
        return dict(tuned[chosen["all"]].threshold)
    base["per_dataset"] = {d: tuned[name].threshold["per_dataset"][d] for d, name in chosen.items()}
    scores = [tuned[name].threshold["validation"]["by_dataset"][d] for d, name in chosen.items()]
    base["validation"] = {**base["validation"], "per_dataset": float(np.mean(scores)),
                          "by_dataset": {d: tuned[name].threshold["validation"]["by_dataset"][d]
                                         for d, name in chosen.items()}}
    return base


def _merged_tuning(tuned: Dict[str, _Tuned], chosen: Dict[str, str], per_dataset: bool) -> Dict[str, Any]:
    """The validation queries' best scores, each dataset's from the scoring it chose (the splits are shared)."""
    first = next(iter(tuned.values())).tuning
    if not per_dataset:
        return tuned[chosen["all"]].tuning
    scores = first["best_scores"].copy()
    for dataset, name in chosen.items():
        rows = first["datasets"] == dataset
        scores[rows] = tuned[name].tuning["best_scores"][rows]
    return {**first, "best_scores": scores}


def _adaptive_vote(scoring: _Tuned, space: MatchSpace, q_rows: np.ndarray, g_rows: np.ndarray, size: int) -> Vote:
    """`vote` with the scoring's rerank.adaptive margin, if it chose one."""
    margin = scoring.threshold.get("adaptive", {}).get("margin")
    limits = None if margin is None else thresholds_for(space.datasets[q_rows], scoring.threshold, len(q_rows))
    return vote(scoring.scorers, space, q_rows, g_rows, size, limits, margin)


def _vote_by_choice(tuned: Dict[str, _Tuned], chosen: Dict[str, str], space: MatchSpace, q_rows: np.ndarray,
                    g_rows: np.ndarray, size: int):
    """The queries' vote, each query's dataset deciding which scoring votes on it: (candidates,
    raw, rankings, shortlist) over every query, with the scorers that voted."""
    if set(chosen) == {"all"}:
        result = _adaptive_vote(tuned[chosen["all"]], space, q_rows, g_rows, size)
        return result, tuned[chosen["all"]].scorers
    query_sets = space.datasets[q_rows]
    candidates: Candidates = [[] for _ in q_rows]
    raw: Dict[str, Candidates] = {}
    rankings: Dict[str, ImageRanking] = {}
    short = None
    skipped = 0
    used: List[Scorer] = []
    for name in dict.fromkeys(chosen.get(d, AS_GIVEN) for d in query_sets.tolist()):
        positions = np.flatnonzero([chosen.get(d, AS_GIVEN) == name for d in query_sets.tolist()])
        result = _adaptive_vote(tuned[name], space, q_rows[positions], g_rows, size)
        skipped += result.skipped
        used.extend(tuned[name].scorers)
        for position, found in zip(positions, result.candidates, strict=True):
            candidates[position] = found
        for scorer, found in result.raw.items():
            full = raw.setdefault(scorer, [[] for _ in q_rows])
            for position, cands in zip(positions, found, strict=True):
                full[position] = cands
        for scorer, ranking in result.rankings.items():
            full = rankings.setdefault(scorer, ImageRanking.empty(len(q_rows), ranking.indices.shape[1]))
            full.indices[positions], full.scores[positions] = ranking.indices, ranking.scores
        if result.shortlist is not None:
            if short is None:
                short = np.full((len(q_rows), result.shortlist.shape[1]), -1, np.int64)
            short[positions] = result.shortlist
    return Vote(candidates, raw, rankings, short, skipped), used


def evaluate_outputs(cfg: EvalConfig, gallery: pd.DataFrame, query: pd.DataFrame, outputs: Sequence[ModelOutput],
                     kind: str = "animalclef", extra_scorers: Sequence[Scorer] = ()) -> Evaluation:
    """The open-set decision for every query from the models' outputs (rows: gallery, then query),
    with `extra_scorers` (a keypoint matcher) voting beside the models' own scorers. When an output
    is a fusion model (and cfg.choose_scoring), each dataset's queries are scored the way that did
    best on the held-out database split (engine.evaluation.choice)."""
    n_gallery = len(gallery)
    all_gallery = np.arange(n_gallery)
    q_rows = np.arange(n_gallery, n_gallery + len(query))
    datasets = np.concatenate([gallery["dataset"].to_numpy(dtype=object), query["dataset"].to_numpy(dtype=object)])
    space = MatchSpace(gallery["identity"].to_numpy(dtype=object), datasets, namespaced_by_dataset(gallery),
                       cfg.retrieval)
    tuning = None
    if cfg.threshold.value is None:
        per_dataset = cfg.threshold.per_dataset
        tuned = {t.name: t for t in _tune_scorings(cfg, outputs, extra_scorers, space, gallery, kind)}
        names = sorted(set(tuned[AS_GIVEN].threshold["validation"]["by_dataset"])) if per_dataset else ["all"]
        chosen = choose({n: t.validation(per_dataset) for n, t in tuned.items()}, names)
        threshold = _merged_threshold(tuned, chosen, per_dataset)
        tuning = _merged_tuning(tuned, chosen, per_dataset)
        if len(tuned) > 1:
            threshold["scoring_choice"] = _choice_record(list(tuned.values()), chosen, per_dataset)
    else:
        scorers = _ensemble(cfg, outputs, list(extra_scorers))
        fit_calibrators(scorers, space, all_gallery, cfg.calibration, cfg.seed, cfg.rerank.shortlist)
        threshold = {"source": "threshold.value", "global": float(cfg.threshold.value), "per_dataset": {}}
        tuned, chosen = {AS_GIVEN: _Tuned(AS_GIVEN, scorers, threshold, {})}, {"all": AS_GIVEN}
    tuning_pairs = _pairs_matched(extra_scorers)
    # Queries are matched against the whole gallery with the calibrators fitted above.
    result, used = _vote_by_choice(tuned, chosen, space, q_rows, all_gallery, cfg.rerank.shortlist)
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
                                                             "calibrator": s.calibrator.to_dict()} for s in used},
                      result.shortlist, result.skipped, tuning_pairs)


def _pairs_matched(scorers: Sequence[Scorer]) -> int:
    """Pairs the keypoint matchers among `scorers` have matched so far (not read from a cache)."""
    return sum(s.pairs.matched for s in scorers if s.kind == "matcher")

"""The open-set decision for every query: calibrators, weights and threshold tuned on a held-out split
of the database (heldout.py), then the ensemble's vote on the real queries.

* **Scores the threshold sees** are fused calibrated probabilities; every calibrator is strictly
  increasing, so a single model's decisions follow its raw scores' order exactly.
* **A fusion model** (with choose_scoring): each dataset's queries are scored by whichever of the
  fusion, a member, the blend or the soft vote did best on the held-out split (engine.scoring.choice).
* **Humpback**: where `new_whale` goes among the five guesses is tuned for MAP@5 on the same split.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from core.schema import EvalConfig, RerankConfig
from engine.identify.heldout import TuningRecord, best_of, training_identities, tune
from engine.identify.record import ThresholdRecord
from engine.openset import TunedThreshold, decide, humpback_guesses, thresholds_for
from engine.retrieval import Candidates
from engine.scoring.choice import AS_GIVEN, ScoringChoice, choose, fusion_members, scorings_for
from engine.scoring.neighbour_scorers import neighbour_scorers
from engine.scoring.scorers import ImageRanking, MatchSpace, ModelOutput, Scorer, scorers_for
from engine.scoring.voting import Vote, fit_calibrators, vote


@dataclass(kw_only=True)
class Evaluation:
    """Everything decided for the queries, plus what the tuning split saw (for the report)."""

    candidates: Candidates  # fused identity ranking per query, best first
    best_ids: np.ndarray
    best_scores: np.ndarray
    threshold: ThresholdRecord
    decided: np.ndarray  # identity or new_individual per query
    predictions: list  # what the submission holds (AnimalCLEF labels or Humpback guess lists)
    tuning: Optional[TuningRecord]  # what the held-out split's validation queries saw
    rankings: Dict[str, ImageRanking]  # per embedding scorer: top-k gallery images of each query
    raw: Dict[str, Candidates]  # per scorer: raw identity candidates of each query
    scorers: Dict[str, Dict[str, Any]]  # per scorer: kind, stage, weight, calibrator
    shortlist: Optional[np.ndarray] = None  # (Q, rerank.shortlist) gallery rows re-scored per query, if any
    skipped: int = 0  # queries certain on the global vote (rerank.adaptive): their shortlists not re-scored
    tuning_pairs: int = 0  # pairs the keypoint matcher matched to calibrate and tune, before the queries' pairs


def namespaced_by_dataset(gallery: pd.DataFrame) -> bool:
    """True when no identity appears in two datasets: then a query is only matched within its own
    dataset (a lynx is never a salamander), else against the whole gallery."""
    return bool(gallery.groupby("identity")["dataset"].nunique().max() <= 1)


@dataclass
class _Tuned:
    """One scoring (engine.scoring.choice) with its calibrators fitted and threshold tuned."""

    name: str
    scorers: List[Scorer]
    threshold: ThresholdRecord
    tuning: Optional[TuningRecord]

    def validation(self, per_dataset: bool) -> Dict[str, float]:
        """Its validation score per dataset (with one global threshold, the mean over datasets as "all")."""
        scores = self.threshold.threshold.validation
        return dict(scores.by_dataset) if per_dataset else {"all": float(scores.overall)}


def _seen_identities(outputs: Sequence[ModelOutput]) -> Optional[set]:
    """Identities to keep out of the held-out split (None: any); one set for every scoring, so that
    all are tuned and compared on the same split."""
    everyone = [*outputs, *fusion_members(outputs)]
    # A classifier can only vote for identities it was trained on, so it needs seen identities held out.
    if any(o.label_map is not None for o in everyone):
        return None
    return training_identities([o.info.training_identities if o.info else None for o in everyone])


def _ensemble(rerank: RerankConfig, outputs: Sequence[ModelOutput], extra_scorers: List[Scorer]) -> List[Scorer]:
    """The models' own scorers, the extra ones (a keypoint matcher) and the re-rankers of
    rerank.neighbours (weight 0 until tuned; 1 with rerank.tune_weight=false)."""
    neighbours = neighbour_scorers(outputs, rerank.neighbours)
    if not rerank.tune_weight:
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
        scorers = _ensemble(cfg.rerank, scoring.outputs, [copy.copy(s) for s in extra_scorers])
        tuned.append(_Tuned(scoring.name, scorers, *tune(cfg, scorers, space, gallery, kind, seen, scoring.calibration)))
    return tuned


def _choice_record(tuned: Sequence[_Tuned], chosen: Dict[str, str], per_dataset: bool) -> ScoringChoice:
    return ScoringChoice(chosen, per_dataset, {t.name: {d: round(v, 6) for d, v in t.validation(per_dataset).items()}
                                               for t in tuned})


def _merged_threshold(tuned: Dict[str, _Tuned], chosen: Dict[str, str], per_dataset: bool) -> ThresholdRecord:
    """The ensemble's threshold record, with each dataset's threshold from the scoring it chose."""
    if not per_dataset:
        return copy.deepcopy(tuned[chosen["all"]].threshold)
    base = copy.deepcopy(tuned[AS_GIVEN].threshold if AS_GIVEN in tuned else next(iter(tuned.values())).threshold)
    by_dataset = {d: tuned[name].threshold.threshold.validation.by_dataset[d] for d, name in chosen.items()}
    base.threshold.per_dataset = {d: tuned[name].threshold.threshold.per_dataset[d] for d, name in chosen.items()}
    base.threshold.validation = replace(base.threshold.validation, with_per_dataset=float(np.mean(list(by_dataset.values()))),
                                        by_dataset=by_dataset)
    return base


def _merged_tuning(tuned: Dict[str, _Tuned], chosen: Dict[str, str], per_dataset: bool) -> TuningRecord:
    """The validation queries' best scores, each dataset's from the scoring it chose (the splits are shared)."""
    first = next(iter(tuned.values())).tuning
    if not per_dataset:
        return tuned[chosen["all"]].tuning
    scores = first.best_scores.copy()
    for dataset, name in chosen.items():
        rows = first.datasets == dataset
        scores[rows] = tuned[name].tuning.best_scores[rows]
    return replace(first, best_scores=scores)


def _adaptive_vote(scoring: _Tuned, space: MatchSpace, q_rows: np.ndarray, g_rows: np.ndarray, size: int) -> Vote:
    """`vote` with the scoring's rerank.adaptive margin, if it chose one."""
    margin = None if scoring.threshold.adaptive is None else scoring.threshold.adaptive.margin
    limits = None if margin is None else thresholds_for(space.datasets[q_rows], scoring.threshold.threshold, len(q_rows))
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
    best on the held-out database split (engine.scoring.choice)."""
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
        names = sorted(set(tuned[AS_GIVEN].validation(per_dataset=True))) if per_dataset else ["all"]
        chosen = choose({n: t.validation(per_dataset) for n, t in tuned.items()}, names)
        threshold = _merged_threshold(tuned, chosen, per_dataset)
        tuning = _merged_tuning(tuned, chosen, per_dataset)
        if len(tuned) > 1:
            threshold.scoring_choice = _choice_record(list(tuned.values()), chosen, per_dataset)
    else:
        scorers = _ensemble(cfg.rerank, outputs, list(extra_scorers))
        fit_calibrators(scorers, space, all_gallery, cfg.calibration, cfg.seed, cfg.rerank.shortlist)
        threshold = ThresholdRecord("threshold.value", TunedThreshold(float(cfg.threshold.value)))
        tuned, chosen = {AS_GIVEN: _Tuned(AS_GIVEN, scorers, threshold, None)}, {"all": AS_GIVEN}
    tuning_pairs = _pairs_matched(extra_scorers)
    # Queries are matched against the whole gallery with the calibrators fitted above.
    result, used = _vote_by_choice(tuned, chosen, space, q_rows, all_gallery, cfg.rerank.shortlist)
    best_ids, best_scores = best_of(result.candidates)
    datasets_q = query["dataset"].tolist()
    decided = decide(best_ids, best_scores, threshold.threshold, datasets_q)
    if kind == "humpback":
        whale_threshold = threshold.new_whale["global"] if threshold.new_whale else threshold.threshold.overall
        fallback = gallery["identity"].value_counts().index[:5].tolist()
        predictions = [humpback_guesses(c, whale_threshold, fallback) for c in result.candidates]
    else:
        predictions = list(decided)
    return Evaluation(candidates=result.candidates, best_ids=best_ids, best_scores=best_scores, threshold=threshold,
                      decided=decided, predictions=predictions, tuning=tuning, rankings=result.rankings, raw=result.raw,
                      scorers={s.name: s.summary() for s in used},
                      shortlist=result.shortlist, skipped=result.skipped, tuning_pairs=tuning_pairs)


def _pairs_matched(scorers: Sequence[Scorer]) -> int:
    """Pairs the keypoint matchers among `scorers` have matched so far (not read from a cache)."""
    return sum(s.pairs.matched for s in scorers if s.kind == "matcher")

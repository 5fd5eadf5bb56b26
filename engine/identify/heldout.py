"""The held-out split of the database that tunes the open-set decision without query labels.

Some database identities are held out; a fraction of them act as "new" (all their images become
validation queries), the others send half their images to the validation queries; the validation
queries are matched against the rest of the database, on which the calibrators are fitted. When the
models' label maps show which identities they were trained on and at least MIN_UNSEEN_IDENTITIES of a
dataset's identities are unseen by all of them (train.py holds validation identities out), the
held-out identities are drawn from those: scores of training images are optimistic, so a threshold
tuned on them would not transfer. On the pooled validation queries the threshold is tuned, and the
weights of the pair heads, the matcher and the neighbour re-rankers are chosen, and each scorer's
options (the matcher's keypoint weightings, its geometry) are set.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from core.errors import DataError
from core.schema import EvalConfig
from data.splits import open_set_split
from engine.identify.record import ThresholdRecord, WeightChoice
from engine.openset import TunedThreshold, score_at, thresholds_for, tune_humpback_threshold, tune_threshold
from engine.retrieval import Candidates
from engine.scoring.adaptive import MarginChoice, choose_margin
from engine.scoring.neighbour_scorers import NEIGHBOUR_KINDS
from engine.scoring.scorers import MatchSpace, Scorer
from engine.scoring.voting import ShortlistCalibration, fit_calibrators, vote
from engine.scoring.weights import MATCHER_WEIGHTS, OPTION_MARGIN, PAIR_HEAD_FACTORS

TUNING_QUERY_FRACTION = 0.5  # of a known held-out identity's images used as validation queries
MIN_UNSEEN_IDENTITIES = 4  # per dataset, to tune on identities no model was trained on
MIN_HELD_IDENTITIES = 2  # per dataset: one known and one new at least


@dataclass
class HeldOutSplit:
    """One held-out split: gallery rows of its validation queries and of the rest of the database."""

    queries: np.ndarray
    database: np.ndarray
    truth: np.ndarray  # identity of each validation query
    datasets: np.ndarray  # dataset of each validation query
    known: np.ndarray  # whether its identity is in the split's database
    identities: int  # held-out identities
    calibration: Optional[ShortlistCalibration] = None  # the shortlist scorers' calibration pairs (the fitted split's)


@dataclass
class TuningRecord:
    """What the pooled validation queries saw (the report draws it) and how many there were."""

    best_scores: np.ndarray
    known: np.ndarray
    datasets: np.ndarray
    splits: int
    identities: int
    new_identities: int

    @property
    def queries(self) -> int:
        return len(self.best_scores)

    def summary(self) -> Dict[str, int]:
        return {"queries": self.queries, "identities": self.identities, "new_identities": self.new_identities}


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


def best_of(candidates: Candidates):
    """(best identity, its score) per query; None and -inf where a query has no candidate."""
    ids = np.array([c[0][0] if c else None for c in candidates], dtype=object)
    scores = np.array([c[0][1] if c else -np.inf for c in candidates], dtype=np.float64)
    return ids, scores


def held_out_pass(cfg: EvalConfig, scorers: Sequence[Scorer], space: MatchSpace, gallery: pd.DataFrame,
                  seen: Optional[set], seed: int, fit: bool) -> HeldOutSplit:
    """One held-out split of the database, its calibrators fitted on the rest of the database when `fit`."""
    all_gallery = np.arange(len(gallery))
    split = tuning_split(gallery, replace(cfg, seed=seed), seen)
    position = pd.Series(all_gallery, index=gallery["image_id"])
    val_q = position[split.loc[split["split"] == "query", "image_id"]].to_numpy()
    val_g = np.setdiff1d(all_gallery, val_q)
    calibration = fit_calibrators(scorers, space, val_g, cfg.calibration, cfg.seed, cfg.rerank.shortlist) if fit else None
    truth = space.labels[val_q]
    return HeldOutSplit(val_q, val_g, truth, space.datasets[val_q],
                        pd.Series(truth, dtype=object).isin(set(space.labels[val_g])).to_numpy(),
                        int(split["identity"].nunique()), calibration)


@dataclass
class Pooled:
    """The validation queries of every held-out split, and the threshold tuned on their vote."""

    candidates: Candidates
    best_scores: np.ndarray
    tuned: TunedThreshold
    truth: np.ndarray  # identity of each validation query
    known: np.ndarray  # whether it is in its split's validation database
    datasets: np.ndarray

    def score(self, per_dataset: bool) -> float:
        scores = self.tuned.validation
        return float(scores.with_per_dataset if per_dataset else scores.overall)


def pooled_vote(cfg: EvalConfig, scorers: Sequence[Scorer], space: MatchSpace, passes: Sequence[HeldOutSplit]) -> Pooled:
    candidates = [c for p in passes for c in vote(scorers, space, p.queries, p.database, cfg.rerank.shortlist).candidates]
    truth, known, datasets = (np.concatenate([getattr(p, key) for p in passes]) for key in ("truth", "known", "datasets"))
    val_ids, val_scores = best_of(candidates)
    # The same image held out twice is two validation queries; identities are told apart per split,
    # so a balanced accuracy weighs each (split, identity) once.
    groups = np.concatenate([[f"{i}/{t}" for t in p.truth] for i, p in enumerate(passes)]).astype(object)
    try:
        tuned = tune_threshold(val_scores, np.where(val_ids == truth, groups, None), groups, known, datasets,
                               per_dataset=cfg.threshold.per_dataset)
    except DataError as err:
        raise DataError(f"{err}; or set threshold.value") from err
    return Pooled(candidates, val_scores, tuned, truth, known, datasets)


def tune_weight(cfg: EvalConfig, scorers: Sequence[Scorer], space: MatchSpace, passes: Sequence[HeldOutSplit], kind: str,
                options: Sequence[float], configured: float, scale: bool) -> Tuple[Pooled, WeightChoice]:
    """The weight of the `kind` scorers (absolute, or with `scale` a factor of each one's own weight)
    of `options` whose vote scores best on the validation queries (`configured` among equals), set
    on them; returns (pooled vote, record). Scores of the pairs do not depend on the weight, so each
    further weight only re-votes."""
    tuned = [s for s in scorers if s.kind == kind]
    own = [s.weight for s in tuned]
    tried: Dict[float, Pooled] = {}

    def set_weight(value: float) -> None:
        for scorer, base in zip(tuned, own, strict=True):
            scorer.weight = base * value if scale else value

    for value in sorted({*options, configured}):
        set_weight(value)
        tried[value] = pooled_vote(cfg, scorers, space, passes)
    per_dataset = cfg.threshold.per_dataset
    best = max(tried, key=lambda w: (round(tried[w].score(per_dataset), 9), w == configured))
    set_weight(best)
    return tried[best], WeightChoice(best, {str(w): round(p.score(per_dataset), 6) for w, p in tried.items()})


def tune_option(cfg: EvalConfig, scorers: Sequence[Scorer], space: MatchSpace, passes: Sequence[HeldOutSplit],
                scorer: Scorer, option: str, values: Sequence, seen: Dict) -> Tuple[Pooled, WeightChoice]:
    """The value of one of `scorer`'s options whose vote scores best on the validation queries, set on
    it; the first of `values` unless another beats it by OPTION_MARGIN; the scorer is calibrated again for each value, on the
    pairs the first split calibrated it on (an option changes its raw scores). `seen` keeps each
    setting of all its options voted so far: options are set one after the other, and the next one's
    value as it stands is a setting voted already."""
    tried = {}
    for value in values:
        scorer.set_option(option, value)
        setting = tuple(sorted(scorer.option_values().items()))
        if setting not in seen:
            passes[0].calibration.refit(scorer, space)
            seen[setting] = (pooled_vote(cfg, scorers, space, passes), scorer.calibrator)
        tried[value] = seen[setting][0]
    per_dataset = cfg.threshold.per_dataset
    scores = {v: round(tried[v].score(per_dataset), 9) for v in values}
    better = [v for v in values[1:] if scores[v] >= scores[values[0]] + OPTION_MARGIN]
    best = max(better, key=lambda v: (scores[v], -list(values).index(v))) if better else values[0]
    scorer.set_option(option, best)
    scorer.calibrator = seen[tuple(sorted(scorer.option_values().items()))][1]
    return tried[best], WeightChoice(best, {str(v): round(p.score(per_dataset), 6) for v, p in tried.items()})


def tune(cfg: EvalConfig, scorers: Sequence[Scorer], space: MatchSpace, gallery: pd.DataFrame, kind: str,
          seen: Optional[set], calibration: str) -> Tuple[ThresholdRecord, TuningRecord]:
    """Fit the calibrators and tune the threshold (and, with rerank.tune_pair_weight and
    rerank.tune_weight, the pair heads' and the matcher's weights) on held-out database identities.

    A small database gives a handful of validation queries, on which a threshold is a coin toss, so
    further splits (other seeds) are drawn until threshold.min_queries validation queries are
    pooled, at most threshold.max_splits splits. The calibrators are those of the first split (the
    others are matched with the same calibrators, so their scores share one scale).
    """
    cfg = replace(cfg, calibration=calibration)
    passes = [held_out_pass(cfg, scorers, space, gallery, seen, cfg.seed, fit=True)]
    while sum(len(p.truth) for p in passes) < cfg.threshold.min_queries and len(passes) < cfg.threshold.max_splits:
        passes.append(held_out_pass(cfg, scorers, space, gallery, seen, cfg.seed + len(passes), fit=False))
    pooled, weights = None, {}
    kinds = {s.kind for s in scorers}
    # A pair head first (trained on other individuals, maybe another species, it may rank pairs no
    # better than chance here), then the matcher, then each re-ranker of rerank.neighbours, each on
    # the vote the previous one left.
    if cfg.rerank.tune_pair_weight and "pair_head" in kinds:
        pooled, weights["pair_head"] = tune_weight(cfg, scorers, space, passes, "pair_head",
                                                           PAIR_HEAD_FACTORS, 1.0, scale=True)
    # Each scorer option (the matcher's keypoint weightings) before the matcher's weight: an option
    # changes what the weight scales.
    options = {}
    for scorer in (s for s in scorers if cfg.rerank.tune_weight and passes[0].calibration is not None):
        seen: Dict = {}
        for option, values in scorer.options().items():
            pooled, options[f"{scorer.kind}: {option}"] = tune_option(cfg, scorers, space, passes, scorer, option, values,
                                                                      seen)
    if cfg.rerank.tune_weight and "matcher" in kinds:
        pooled, weights["matcher"] = tune_weight(cfg, scorers, space, passes, "matcher", MATCHER_WEIGHTS,
                                                         cfg.rerank.weight, scale=False)
    for neighbours in (k for k in NEIGHBOUR_KINDS if cfg.rerank.tune_weight and k in kinds):
        # 0 among equals: a re-ranker without pixels votes only where it helps.
        pooled, weights[neighbours] = tune_weight(cfg, scorers, space, passes, neighbours,
                                                               MATCHER_WEIGHTS, 0.0, scale=False)
    if pooled is None:
        pooled = pooled_vote(cfg, scorers, space, passes)
    tuned = pooled.tuned if cfg.threshold.per_dataset else replace(pooled.tuned, per_dataset={})
    threshold = ThresholdRecord("tuned on held-out database identities", tuned, len(passes), weights, options=options)
    if cfg.rerank.adaptive and any(s.stage == "shortlist" for s in scorers):
        threshold.adaptive = adaptive_margin(cfg.threshold.per_dataset, scorers, space, passes, pooled)
    if kind == "humpback":
        threshold.new_whale = tune_humpback_threshold(pooled.candidates, pooled.truth, pooled.known)
    tuning = TuningRecord(pooled.best_scores, pooled.known, pooled.datasets, len(passes),
                          int(sum(p.identities for p in passes)),
                          int(sum(len(set(p.truth[~p.known])) for p in passes)))
    return threshold, tuning


def adaptive_margin(per_dataset: bool, scorers: Sequence[Scorer], space: MatchSpace, passes: Sequence[HeldOutSplit],
                     pooled: Pooled) -> MarginChoice:
    """rerank.adaptive: the certainty margin chosen on the validation queries at the tuned threshold
    (engine.scoring.adaptive); the global scorers' vote matches nothing."""
    global_scorers = [s for s in scorers if s.stage == "global"]
    global_vote = [c for p in passes for c in vote(global_scorers, space, p.queries, p.database).candidates]
    limits = thresholds_for(pooled.datasets, pooled.tuned if per_dataset else pooled.tuned.overall, len(pooled.truth))
    groups = np.concatenate([[f"{i}/{t}" for t in p.truth] for i, p in enumerate(passes)]).astype(object)

    def score(candidates) -> float:
        ids, best = best_of(candidates)
        return score_at(best, np.where(ids == pooled.truth, groups, None), groups, pooled.known, pooled.datasets,
                        pooled.tuned, per_dataset)

    return choose_margin(global_vote, pooled.candidates, limits, score)

"""The ensemble: each scorer's calibrator fitted on database pairs, the global stage, the shortlist
re-scored by shortlist scorers, and the soft vote over all of them.

Flow for a set of query rows against gallery rows:
1. every global scorer proposes raw identity candidates, mapped through its calibrator;
2. if there are shortlist scorers, the global scorers shortlist the top `shortlist` gallery images
   of each query (images they propose, ranked by their weighted calibrated pair scores), the
   shortlist scorers score those pairs only, and each identity takes its best calibrated pair;
3. soft voting averages the calibrated candidates of all scorers with their weights.
Calibration pairs are drawn the same way among labelled database rows, never from queries.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from engine.retrieval import Candidates
from engine.scoring.adaptive import certain, mixed
from engine.scoring.calibration import fit_calibrator, soft_vote
from engine.scoring.scorers import GlobalScorer, ImageRanking, MatchSpace, Scorer

SHORTLIST = 25  # gallery images per query re-scored by shortlist scorers (rerank.shortlist)
MAX_SHORTLIST_CALIBRATION_QUERIES = 2000  # database images used to calibrate shortlist scorers


@dataclass
class Vote:
    """The fused identity candidates of each query, plus what each scorer saw (for the report)."""

    candidates: Candidates  # fused, calibrated, best first
    raw: Dict[str, Candidates]  # per scorer: raw identity candidates, best first
    rankings: Dict[str, ImageRanking]  # per scorer with an image ranking (embeddings)
    shortlist: Optional[np.ndarray] = None  # (Q, size) gallery rows re-scored, when there are shortlist scorers
    skipped: int = 0  # queries certain on the global vote alone (rerank.adaptive): none of their pairs re-scored


def _global(scorers: Sequence[Scorer]) -> List[GlobalScorer]:
    return [s for s in scorers if s.stage == "global"]


def _rescorers(scorers: Sequence[Scorer]) -> List[Scorer]:
    return [s for s in scorers if s.stage == "shortlist"]


def shortlist(scorers: Sequence[Scorer], space: MatchSpace, q_rows: np.ndarray, g_rows: np.ndarray,
              size: int = SHORTLIST, exclude_self: bool = False, found: Optional[Dict[str, tuple]] = None) -> np.ndarray:
    """(Q, size) gallery rows (-1 padded): the images the global scorers propose for each query, best
    first by their weighted mean calibrated pair score. With `exclude_self`, a row never shortlists
    itself (database rows matched against the database, for calibration). `found` holds what each
    global scorer's `candidates` already returned for these rows, by scorer name."""
    out = np.full((len(q_rows), size), -1, np.int64)
    if len(q_rows) == 0 or len(g_rows) == 0:
        return out
    global_scorers = _global(scorers)
    found = found or {}
    proposed = np.concatenate([s.propose(space, q_rows, g_rows, size + int(exclude_self), found.get(s.name))
                               for s in global_scorers], axis=1)
    pairs_q, pairs_g = [], []
    for i, row in enumerate(proposed):
        rows = np.unique(row[row >= 0])
        if exclude_self:
            rows = rows[rows != q_rows[i]]
        pairs_q.append(np.full(len(rows), i))
        pairs_g.append(rows)
    flat_q, flat_g = np.concatenate(pairs_q).astype(np.int64), np.concatenate(pairs_g).astype(np.int64)
    weights = np.array([s.weight for s in global_scorers], dtype=np.float64)
    fused = np.zeros(len(flat_q))
    for scorer, weight in zip(global_scorers, weights / weights.sum(), strict=True):
        fused += weight * scorer.calibrator(scorer.pair_scores(space, q_rows[flat_q], flat_g))
    order = np.lexsort((-fused, flat_q))  # by query, best first
    flat_q, flat_g = flat_q[order], flat_g[order]
    starts = np.searchsorted(flat_q, np.arange(len(q_rows)))
    ends = np.searchsorted(flat_q, np.arange(len(q_rows)), side="right")
    for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
        chosen = flat_g[start:min(end, start + size)]
        out[i, :len(chosen)] = chosen
    return out


def _pairs(short: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Flat (query position, gallery row) of a shortlist's filled slots."""
    positions, slots = np.nonzero(short >= 0)
    return positions, short[positions, slots]


def _identity_best(positions: np.ndarray, g_rows: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                   queries: int) -> Candidates:
    """Per query, each identity's best pair score among its shortlisted images, best first."""
    best: List[Dict] = [{} for _ in range(queries)]
    for q, g, score in zip(positions.tolist(), g_rows.tolist(), scores.tolist(), strict=True):
        identity = labels[g]
        if score > best[q].get(identity, -np.inf):
            best[q][identity] = score
    return [sorted(found.items(), key=lambda item: -item[1]) for found in best]


@dataclass
class ShortlistCalibration:
    """The labelled database pairs the shortlist scorers were calibrated on, kept so that one of them
    can be calibrated again after an option changed its scores (engine.identify.heldout)."""

    sample: np.ndarray  # database rows acting as queries
    rows: np.ndarray  # the database rows they were matched against
    q_rows: np.ndarray
    g_rows: np.ndarray
    method: str

    def refit(self, scorer: Scorer, space: MatchSpace) -> None:
        """`scorer`'s calibrator fitted again on these pairs."""
        scorer.prepare(space, self.sample, self.rows)
        same = space.labels[self.q_rows] == space.labels[self.g_rows]
        scorer.calibrator = fit_calibrator(scorer.pair_scores(space, self.q_rows, self.g_rows), same, self.method)


def learn_from_database(scorers: Sequence[Scorer], space: MatchSpace) -> None:
    """Shortlist scorers that learn from the labelled database (`database_shortlist`) get every
    database image's own shortlist among the database, drawn the way queries' are (the global
    scorers' calibrators fitted first)."""
    learners = [s for s in _rescorers(scorers) if s.database_shortlist]
    if not learners:
        return
    every = np.arange(len(space.labels))
    short = shortlist(scorers, space, every, every, max(s.database_shortlist for s in learners), exclude_self=True)
    for scorer in learners:
        scorer.learn(space, every, short)


def fit_calibrators(scorers: Sequence[Scorer], space: MatchSpace, rows: np.ndarray, method: str,
                    seed: int, size: int = SHORTLIST) -> Optional[ShortlistCalibration]:
    """Fit every scorer's calibrator on labelled pairs among the database `rows` (never queries).
    Shortlist scorers see database images' own shortlists of `size`, drawn the way queries' are,
    for at most the fewest `calibration_queries` any of them asks (matching is slow); those that
    learn from the database do so first (`learn_from_database`). Returns the shortlist scorers'
    calibration pairs (None without shortlist scorers)."""
    rng = np.random.default_rng(seed)
    for scorer in _global(scorers):
        scorer.calibrator = fit_calibrator(*scorer.calibration_pairs(space, rows, rng), method)
    rescorers = _rescorers(scorers)
    if not rescorers:
        return None
    learn_from_database(scorers, space)
    most = min(getattr(s, "calibration_queries", MAX_SHORTLIST_CALIBRATION_QUERIES) for s in rescorers)
    sample = rows if len(rows) <= most else np.sort(rng.choice(rows, most, replace=False))
    positions, g_rows = _pairs(shortlist(scorers, space, sample, rows, size, exclude_self=True))
    calibration = ShortlistCalibration(sample, rows, sample[positions], g_rows, method)
    for scorer in rescorers:
        calibration.refit(scorer, space)
    return calibration


def vote(scorers: Sequence[Scorer], space: MatchSpace, q_rows: np.ndarray, g_rows: np.ndarray,
         size: int = SHORTLIST, limits: Optional[np.ndarray] = None, margin: Optional[float] = None) -> Vote:
    """Fused candidates of `q_rows` against `g_rows` (scorers' calibrators already fitted); shortlist
    scorers re-score `size` gallery images per query. With a `margin` (rerank.adaptive), the queries
    certain at their thresholds `limits` on the global vote alone keep it, and none of their pairs is
    re-scored (engine.scoring.adaptive)."""
    raw: Dict[str, Candidates] = {}
    calibrated: List[Candidates] = []
    rankings: Dict[str, ImageRanking] = {}
    searched: Dict[str, tuple] = {}
    for scorer in _global(scorers):
        found, ranking = searched[scorer.name] = scorer.candidates(space, q_rows, g_rows)
        raw[scorer.name] = found
        calibrated.append(scorer.calibrated(found))
        if ranking is not None:
            rankings[scorer.name] = ranking
    rescorers = _rescorers(scorers)
    short = None
    sure = np.zeros(len(q_rows), bool)
    if rescorers:
        short = shortlist(scorers, space, q_rows, g_rows, size, found=searched)
        if margin is not None:
            global_vote = soft_vote(calibrated, [s.weight for s in _global(scorers)])
            sure = certain(global_vote, limits, margin)
            short[sure] = -1
        positions, pair_g = _pairs(short)
        for scorer in rescorers:
            scorer.prepare(space, q_rows, g_rows)
            scores = scorer.pair_scores(space, q_rows[positions], pair_g)
            found = _identity_best(positions, pair_g, scores, space.labels, len(q_rows))
            raw[scorer.name] = found
            calibrated.append(scorer.calibrated(found))
    weights = [s.weight for s in _global(scorers)] + [s.weight for s in rescorers]
    fused = soft_vote(calibrated, weights)
    if sure.any():
        fused = mixed(global_vote, fused, sure)
    return Vote(fused, raw, rankings, short, int(sure.sum()))

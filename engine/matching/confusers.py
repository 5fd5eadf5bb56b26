"""Confuser suppression: database keypoints that match other individuals count less.

A keypoint of a database photo that is matched in photos of *other* identities of the database is
a confuser: ground, rocks, vegetation, a camera's overlay, a frame edge, whatever photos of
different animals share (place recognition calls them confusing features: Knopp, Sivic and Pajdla,
ECCV 2010). The labelled database shows them without any trained weights: each database image is
matched against its own shortlist of database images (`shortlist` per image, the pair engine's
records, cached), and a keypoint counted in matches with images of n other identities weighs
(1 + n)^-power; a keypoint no other identity matches keeps weight 1. A query's match counts by the
weight of the database keypoint it lands on.

Only evidence from images of the gallery a vote matches against is used, and never from the query
image itself (a database image calibrating the matcher, or a held-out validation query), so the
scores the calibrator and the held-out split see are those a real query gets. The weights are
derived from the cached pair records on each run (milliseconds): they depend on which images and
labels the database holds, so they are not stored under an image's own key.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Set, Tuple

import numpy as np

from core.errors import ConfigError
from engine.matching.weighting import (
    KEYPOINT_WEIGHTINGS,
    KeypointWeighting,
    MatchBatch,
    counts_of,
    distinct_counts,
)


@KEYPOINT_WEIGHTINGS.register("confusers")
class Confusers(KeypointWeighting):
    """Database keypoints matched in images of n other identities weigh (1 + n)^-power."""

    def __init__(self, shortlist: int = 10, power: float = 1.0):
        if int(shortlist) < 1:
            raise ConfigError(f"confusers shortlist must be at least 1, got {shortlist}")
        if not power > 0:
            raise ConfigError(f"confusers power must be above 0, got {power}")
        self.database_shortlist = int(shortlist)
        self.power = float(power)
        # Per database row: (keypoint, other row, other identity code) of every counted match with
        # an image of another identity, sorted by keypoint.
        self._evidence: Dict[int, Tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._allowed: Optional[np.ndarray] = None
        self._others: Dict[int, Set[int]] = {}  # per database row, the rows its evidence came from
        self._counts: Optional[Tuple[np.ndarray, np.ndarray]] = None  # `_table`, for the allowed gallery

    def learn(self, labels: np.ndarray, rows: np.ndarray, shortlists: np.ndarray, counted) -> None:
        first = np.repeat(rows, shortlists.shape[1])
        second = shortlists.reshape(-1)
        keep = second >= 0
        first, second = first[keep], second[keep]
        other = labels[first] != labels[second]
        first, second = first[other], second[other]
        codes = {label: code for code, label in enumerate(sorted(set(labels.tolist()), key=str))}
        found: Dict[int, List[Tuple[np.ndarray, int]]] = {}
        for a, b, record in zip(first.tolist(), second.tolist(), self.pairs.records(first, second), strict=True):
            mask = counted(record)
            found.setdefault(a, []).append((record.first[mask], b))
            found.setdefault(b, []).append((record.second[mask], a))
        self._evidence = {}
        for row, parts in found.items():
            keypoints = np.concatenate([k for k, _ in parts]).astype(np.int64)
            others = np.concatenate([np.full(len(k), o, np.int64) for k, o in parts])
            order = np.argsort(keypoints, kind="stable")
            self._evidence[row] = (keypoints[order], others[order],
                                   np.array([codes[labels[o]] for o in others[order].tolist()], np.int64))
        self._others = {row: set(others.tolist()) for row, (_, others, _) in self._evidence.items()}
        self._counts = None

    def prepare(self, g_rows: np.ndarray, rows: int) -> None:
        self._allowed = np.zeros(rows, bool)
        self._allowed[g_rows] = True
        self._counts = None

    def _identities(self, row: int, without: int) -> Tuple[np.ndarray, np.ndarray]:
        """`distinct_counts` of a database row's keypoints: how many other identities each is matched
        in, among the allowed gallery's images other than `without`."""
        keypoints, others, codes = self._evidence[row]
        use = (others != without) if self._allowed is None else self._allowed[others] & (others != without)
        return distinct_counts(np.zeros(int(use.sum()), np.int64), keypoints[use], codes[use])

    def _table(self) -> Tuple[np.ndarray, np.ndarray]:
        """`distinct_counts` over every database row's evidence from the allowed gallery, by (row, keypoint)."""
        if self._counts is None:
            parts = [(np.full(len(k), row, np.int64), k, o, c) for row, (k, o, c) in self._evidence.items()]
            if not parts:
                self._counts = (np.zeros(0, np.int64),) * 2
            else:
                rows, keypoints, others, codes = (np.concatenate(p) for p in zip(*parts, strict=True))
                use = np.ones(len(others), bool) if self._allowed is None else self._allowed[others]
                self._counts = distinct_counts(rows[use], keypoints[use], codes[use])
        return self._counts

    def weights(self, batch: MatchBatch) -> List[np.ndarray]:
        second = batch.joined("second")
        identities = counts_of(self._table(), batch.per_match(batch.g_rows), second).astype(np.float64)
        starts = np.concatenate([[0], np.cumsum(batch.sizes())])
        for i, (record, q, g) in enumerate(zip(batch.records, batch.q_rows.tolist(), batch.g_rows.tolist(), strict=True)):
            # The query image's own evidence is left out when it could have given any (it is in the
            # allowed gallery: a database image calibrating the matcher).
            if g in self._others and q in self._others[g] and (self._allowed is None or self._allowed[q]):
                identities[starts[i]:starts[i + 1]] = counts_of(self._identities(g, without=q), 0, record.second)
        return batch.split((1.0 + identities) ** -self.power)

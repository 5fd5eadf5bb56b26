"""Foreground without a detector: keypoints that stay in place across a camera station's photos of
different individuals are background, and are dropped.

A camera trap or a fixed station photographs every animal in front of the same ground, rocks and
overlay, from the same place: between two of its photos (same image size) the background's
keypoints match at the same pixels, while an animal that walked in between moves. A match whose two
keypoints lie within `displacement` (a fraction of the image's diagonal) of each other in two
photos of the same size is a static match. A keypoint is background when it has static matches in
photos of other individuals: for a database image, any other identity among its own database
shortlist (`shortlist`, the pair engine's records, as for confusers); for a query, at least
`identities` different identities among the images it is matched against (one could be its own
individual, photographed again in the same place). Background keypoints weigh 0 on both sides of
every pair; the others 1. Photos of different sizes, or taken by moving cameras, have no static
matches and lose nothing; aligned face crops do (every face has its eyes at the same pixels), which
is why the held-out split decides per dataset whether this weighting is kept.

With `data.crop.detector` set, each image is a detector's box plus `data.bbox_padding` around it:
keypoints in that padding, outside the box, weigh 0 too (`in_box`).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Set, Tuple

import numpy as np

from core.errors import ConfigError
from engine.matching.pairs import Record
from engine.matching.weighting import (
    KEY_SPAN,
    KEYPOINT_WEIGHTINGS,
    KeypointWeighting,
    MatchBatch,
    counts_of,
    distinct_counts,
)


def static_matches(record: Record, first: dict, second: dict, displacement: float) -> np.ndarray:
    """(M,) bool: the record's matches whose keypoints lie within `displacement` times the diagonal
    of each other, when both images have the same size (none otherwise)."""
    size = first["image_size"]
    if len(record.first) == 0 or not np.array_equal(size, second["image_size"]):
        return np.zeros(len(record.first), bool)
    moved = np.linalg.norm(first["keypoints"][record.first] - second["keypoints"][record.second], axis=1)
    return moved <= displacement * float(np.hypot(*size))


@KEYPOINT_WEIGHTINGS.register("foreground")
class Foreground(KeypointWeighting):
    """Keypoints static across a station's photos of other individuals weigh 0 (module doc)."""

    def __init__(self, displacement: float = 0.02, identities: int = 1, shortlist: int = 10):
        if not 0 < displacement < 1:
            raise ConfigError(f"foreground displacement must be in (0, 1), got {displacement}")
        if int(identities) < 1 or int(shortlist) < 1:
            raise ConfigError(f"foreground identities and shortlist must be at least 1, got {identities}, {shortlist}")
        self.displacement = float(displacement)
        self.identities = int(identities)
        self.database_shortlist = int(shortlist)
        # Per database row: (keypoint, other row) of every static match with an image of another identity.
        self._static: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}
        self._others: Dict[int, Set[int]] = {}  # per database row, the rows its static matches came from
        self._background: Optional[np.ndarray] = None  # `_background_codes`, for the allowed gallery
        self._allowed: Optional[np.ndarray] = None
        self._boxes: Dict[int, Optional[np.ndarray]] = {}

    def learn(self, labels: np.ndarray, rows: np.ndarray, shortlists: np.ndarray, counted) -> None:
        store = self.pairs.store
        first = np.repeat(rows, shortlists.shape[1])
        second = shortlists.reshape(-1)
        keep = (second >= 0) & (labels[first] != labels[np.maximum(second, 0)])
        first, second = first[keep], second[keep]
        found: Dict[int, List[Tuple[np.ndarray, int]]] = {}
        for a, b, record in zip(first.tolist(), second.tolist(), self.pairs.records(first, second), strict=True):
            static = static_matches(record, store.features(a), store.features(b), self.displacement)
            if static.any():
                found.setdefault(a, []).append((record.first[static], b))
                found.setdefault(b, []).append((record.second[static], a))
        self._static = {row: (np.concatenate([k for k, _ in parts]).astype(np.int64),
                              np.concatenate([np.full(len(k), o, np.int64) for k, o in parts]))
                        for row, parts in found.items()}
        self._others = {row: set(others.tolist()) for row, (_, others) in self._static.items()}
        self._background = None

    def prepare(self, g_rows: np.ndarray, rows: int) -> None:
        self._allowed = np.zeros(rows, bool)
        self._allowed[g_rows] = True
        self._background = None

    def _database_background(self, row: int, without: int = -1) -> np.ndarray:
        """Keypoints of a database row static in allowed images of other identities, `without` one
        (the query itself, when it is a database image)."""
        keypoints, others = self._static[row]
        use = np.ones(len(others), bool) if self._allowed is None else self._allowed[others]
        return np.unique(keypoints[use & (others != without)])

    def _background_codes(self) -> np.ndarray:
        """Sorted codes row * KEY_SPAN + keypoint of every database keypoint that is background for the
        allowed gallery (no image left out)."""
        if self._background is None:
            parts = [row * KEY_SPAN + self._database_background(row) for row in self._static]
            self._background = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        return self._background

    def in_box(self, row: int) -> Optional[np.ndarray]:
        """(N,) bool: row's keypoints inside its detector box; None when its image is not cropped."""
        if row not in self._boxes:
            inside = self.pairs.store.inside_crop_box(row)
            self._boxes[row] = None if inside.all() else inside
        return self._boxes[row]

    def weights(self, batch: MatchBatch) -> List[np.ndarray]:
        store = self.pairs.store
        first, second = batch.joined("first"), batch.joined("second")
        queries, galleries = batch.per_match(batch.q_rows), batch.per_match(batch.g_rows)
        q_points, g_points, same, diagonal = [], [], [], []
        for record, q, g in zip(batch.records, batch.q_rows.tolist(), batch.g_rows.tolist(), strict=True):
            query, gallery = store.features(q), store.features(g)
            q_points.append(query["keypoints"][record.first])
            g_points.append(gallery["keypoints"][record.second])
            same.append(np.array_equal(query["image_size"], gallery["image_size"]))
            diagonal.append(float(np.hypot(*query["image_size"])))
        if not batch.records:
            return []
        moved = np.linalg.norm(np.concatenate(q_points) - np.concatenate(g_points), axis=1)
        static = batch.per_match(same) & (moved <= self.displacement * batch.per_match(diagonal))
        found = distinct_counts(queries[static], first[static], batch.per_match(batch.label_codes())[static])
        keep = counts_of(found, queries, first) < self.identities
        codes = galleries * KEY_SPAN + second
        background = self._background_codes()
        keep &= ~np.isin(codes, background)
        starts = np.concatenate([[0], np.cumsum(batch.sizes())])
        for i, (record, q, g) in enumerate(zip(batch.records, batch.q_rows.tolist(), batch.g_rows.tolist(), strict=True)):
            part = slice(starts[i], starts[i + 1])
            if g in self._others and q in self._others[g] and (self._allowed is None or self._allowed[q]):
                # The query image itself gave evidence: its own static matches are left out.
                keep[part] = counts_of(found, q, record.first) < self.identities
                keep[part] &= ~np.isin(record.second, self._database_background(g, without=q))
            for row, side in ((q, record.first), (g, record.second)):
                box = self.in_box(row)
                if box is not None:
                    keep[part] &= box[side]
        return batch.split(keep)

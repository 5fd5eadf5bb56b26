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

from typing import Dict, List, Optional, Tuple

import numpy as np

from core.errors import ConfigError
from engine.matching.pairs import Record
from engine.matching.weighting import (
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
        self._background: Dict[int, np.ndarray] = {}  # per database row, for the allowed gallery
        self._allowed: Optional[np.ndarray] = None
        self._boxes: Dict[int, np.ndarray] = {}

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
        self._background = {}

    def prepare(self, g_rows: np.ndarray, rows: int) -> None:
        self._allowed = np.zeros(rows, bool)
        self._allowed[g_rows] = True
        self._background = {}

    def _database_background(self, row: int, without: int) -> np.ndarray:
        """Keypoints of a database row static in allowed images of other identities, `without` one
        (the query itself, when it is a database image)."""
        if row not in self._static:
            return np.zeros(0, np.int64)
        keypoints, others = self._static[row]
        loo = (self._allowed is None or bool(self._allowed[without])) and bool((others == without).any())
        if not loo and row in self._background:
            return self._background[row]
        use = np.ones(len(others), bool) if self._allowed is None else self._allowed[others]
        found = np.unique(keypoints[use & (others != without)])
        if not loo:
            self._background[row] = found
        return found

    def in_box(self, row: int) -> np.ndarray:
        """(N,) bool: row's keypoints inside its detector box (all of them without a detector's crop)."""
        if row not in self._boxes:
            self._boxes[row] = self.pairs.store.inside_crop_box(row)
        return self._boxes[row]

    def weights(self, batch: MatchBatch) -> List[np.ndarray]:
        store = self.pairs.store
        static = [static_matches(r, store.features(q), store.features(g), self.displacement)
                  for r, q, g in zip(batch.records, batch.q_rows.tolist(), batch.g_rows.tolist(), strict=True)]
        moved = [r.first[s] for r, s in zip(batch.records, static, strict=True)]
        sizes = [len(m) for m in moved]
        found = distinct_counts(np.repeat(batch.q_rows, sizes), np.concatenate(moved),
                                np.repeat(batch.label_codes(), sizes))
        out = []
        for record, q, g in zip(batch.records, batch.q_rows.tolist(), batch.g_rows.tolist(), strict=True):
            keep = counts_of(found, q, record.first) < self.identities
            keep &= ~np.isin(record.second, self._database_background(g, q))
            keep &= self.in_box(q)[record.first] & self.in_box(g)[record.second]
            out.append(keep.astype(np.float64))
        return out

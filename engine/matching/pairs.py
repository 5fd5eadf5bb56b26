"""`PairMatcher`: the matches of (query row, gallery row) pairs, each pair matched once.

A pair's record holds, per match, the keypoint index on the query side and on the gallery side
and whether it is a geometric inlier; scores are computed from records (engine.matching.scorer),
so changing how matches are counted never matches again. The two images of a pair are matched in
a fixed order (lower row first), so (a, b) and (b, a) share one record. Records are kept in
memory for the run and on disk (the keypoint cache folder) under the two images' feature keys
and the match settings, so a second evaluation, or a larger shortlist, only matches new pairs.

Under several processes the pairs still to match are split (every world-th pair), each process
matches its share and the records are gathered, so every process holds them all.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
from tqdm.auto import tqdm

from core.array_cache import ArrayCache
from core.schema import RerankConfig
from engine.accel import rank_and_world
from engine.matching.keypoints import KeypointStore
from matchers import Features
from matchers.geometry import ransac_inliers

RECORD_VERSION = 1


@dataclass
class Record:
    """The matches of one pair, seen from its first image: keypoint indices on each side, inliers."""

    first: np.ndarray  # (M,) keypoint indices in the first image
    second: np.ndarray  # (M,) keypoint indices in the second image
    inlier: np.ndarray  # (M,) bool

    def flipped(self) -> Record:
        return Record(self.second, self.first, self.inlier)

    def arrays(self) -> Dict[str, np.ndarray]:
        return {"first": self.first, "second": self.second, "inlier": self.inlier}


def central(features: Features, region: float) -> np.ndarray:
    """Indices of the keypoints inside the centred box of `region` times the image's width and height."""
    points = features["keypoints"]
    if region >= 1 or len(points) == 0:
        return np.arange(len(points))
    size = features["image_size"].astype(np.float64)
    offset = np.abs(points - size / 2) / (size / 2)
    return np.flatnonzero((offset <= region).all(axis=1))


class PairMatcher:
    def __init__(self, store: KeypointStore, cfg: RerankConfig, cache: ArrayCache, accelerator=None,
                 show_progress: bool = True):
        self.store = store
        self.cfg = cfg
        self.cache = cache
        self.accelerator = accelerator
        self.show_progress = show_progress
        self._records: Dict[Tuple[int, int], Record] = {}
        self.matched = 0  # pairs this matcher ran (not read from memory or disk)
        self._settings = {"version": RECORD_VERSION, "geometry": cfg.geometry,
                          "ransac_threshold": float(cfg.ransac_threshold), "region": float(cfg.region)}

    def _key(self, pair: Tuple[int, int]) -> str:
        keys = [self.store.key(pair[0]), self.store.key(pair[1]), self._settings]
        return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()

    def records(self, q_rows: np.ndarray, g_rows: np.ndarray) -> List[Record]:
        """The record of each pair (q_rows[i], g_rows[i]), seen from the query."""
        pairs = [(int(q), int(g)) for q, g in zip(q_rows, g_rows, strict=True)]
        ordered = [(min(p), max(p)) for p in pairs]
        self._complete(sorted(set(ordered) - self._records.keys()))
        return [self._records[o] if o == p else self._records[o].flipped()
                for p, o in zip(pairs, ordered, strict=True)]

    def _complete(self, todo: List[Tuple[int, int]]) -> None:
        """Read or match every pair of `todo` (the same list in every process)."""
        if not todo:
            return
        missing = []
        for pair in todo:
            found = self.cache.load_group(self._key(pair)) if self.cache.enabled else None
            if found is not None and {"first", "second", "inlier"} <= set(found):
                self._records[pair] = Record(found["first"], found["second"], found["inlier"].astype(bool))
            else:
                missing.append(pair)
        rank, world = rank_and_world(self.accelerator)
        if world > 1:
            from accelerate.utils import broadcast_object_list

            missing = broadcast_object_list([missing])[0]  # the main process's list is the one all share
        if not missing:
            return
        self.store.prepare([row for pair in missing for row in pair], self.accelerator)
        mine = missing[rank::world]
        done = {}
        for pair in tqdm(mine, desc=f"matching ({self.store.matcher.name})", unit="pair",
                         disable=not mine or not self.show_progress or rank != 0, leave=False):
            done[pair] = self._match(pair)
            self.cache.save_group(self._key(pair), done[pair].arrays())
        if world > 1:
            from accelerate.utils import gather_object

            for part in gather_object([done]):
                done.update(part)
        self._records.update(done)

    def _match(self, pair: Tuple[int, int]) -> Record:
        f0, f1 = self.store.features(pair[0]), self.store.features(pair[1])
        keep0, keep1 = central(f0, self.cfg.region), central(f1, self.cfg.region)
        if len(keep0) < len(f0["keypoints"]) or len(keep1) < len(f1["keypoints"]):
            f0, f1 = _subset(f0, keep0), _subset(f1, keep1)
        matches, _ = self.store.matcher.match(f0, f1)
        self.matched += 1
        first, second = keep0[matches[:, 0]], keep1[matches[:, 1]]
        inlier = ransac_inliers(f0["keypoints"][matches[:, 0]], f1["keypoints"][matches[:, 1]],
                                self.cfg.geometry, self.cfg.ransac_threshold)
        return Record(first.astype(np.int32), second.astype(np.int32), inlier)

    def keypoints(self, row: int) -> np.ndarray:
        return self.store.features(row)["keypoints"]


def _subset(features: Features, keep: np.ndarray) -> Features:
    return {**features, "keypoints": features["keypoints"][keep], "descriptors": features["descriptors"][keep]}


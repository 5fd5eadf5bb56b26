"""`PairMatcher`: the matches of (query row, gallery row) pairs, each pair matched once.

A pair's record holds, per match, the keypoint index on the query side and on the gallery side
and whether it is a geometric inlier; scores are computed from records (engine.matching.scorer),
so changing how matches are counted never matches again. The two images of a pair are matched in
a fixed order (lower row first), so (a, b) and (b, a) share one record. Records are kept in
memory for the run and on disk (one SQLite file in the keypoint cache folder, `pair_records.sqlite`:
a file per pair cost as much as matching it) under the two images' feature keys and the match
settings, so a second evaluation, or a larger shortlist, only matches new pairs.

Pairs are matched in batches: the pairs still to match are grouped by a shared image (the "hub":
of a pair's two images, the one in more pairs to match; a query in eval.py, an image's own
neighbours when a graph is clustered), and each hub is matched against all its partners in one
`Matcher.match_many` call (SIFT: one matrix product; the same matches as one pair at a time).
Geometric verification (RANSAC) then runs only on pairs with at least `rerank.min_matches`
tentative matches: a pair with fewer cannot have more inliers than it has matches, so it is
recorded with none (0 = the geometry's own minimum, 8 for a fundamental matrix and 4 for a
homography, below which RANSAC cannot fit a model: the same inliers as verifying every pair).
`matched`, `verified` and `rejected` count what this matcher did.

The engine knows nothing of queries or thresholds: `records(first_rows, second_rows)` takes any
list of pairs (a shortlist, the edges of a k-nearest-neighbour graph) and returns one record per
pair, matched at most once per run and once per cache.

Under several processes each reads the cache, then the processes compare what they lack: a record
one of them lacks (its read of the shared SQLite file timed out) is sent by one that holds it, the
pairs none holds are split (every world-th pair), each process matches its share, and all records
are gathered, so every process holds them all. Within a process,
a thread-safe matcher (SIFT) matches and verifies several hubs at once in a pool of threads
(engine.matching.parallel): the same records, in the same order.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm.auto import tqdm

from core.array_cache import ArrayCache
from core.packed_arrays import PackedArrays
from core.schema import RerankConfig
from engine.accel import rank_and_world
from engine.matching.keypoints import KeypointStore
from engine.matching.parallel import mapper, worker_count
from matchers import Features
from matchers.geometry import min_points, ransac_inliers

RECORD_VERSION = 1
HUB_CHUNK = 64  # partners matched against one hub per match_many call (bounds the features held at once)
RECORDS_FILE = "pair_records.sqlite"


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


def central(features: Features, region: float) -> Optional[np.ndarray]:
    """Indices of the keypoints inside the centred box of `region` times the image's width and height;
    None for all of them (the whole image)."""
    points = features["keypoints"]
    if region >= 1:
        return None
    size = features["image_size"].astype(np.float64)
    offset = np.abs(points - size / 2) / (size / 2)
    return np.flatnonzero((offset <= region).all(axis=1))


class PairMatcher:
    def __init__(self, store: KeypointStore, cfg: RerankConfig, cache: ArrayCache, accelerator=None,
                 show_progress: bool = True):
        self.store = store
        self.cfg = cfg
        self.stored = PackedArrays(cache.directory / RECORDS_FILE if cache.enabled else None, what="pair match")
        self.accelerator = accelerator
        self.show_progress = show_progress
        self._records: Dict[Tuple[int, int], Record] = {}
        self.matched = 0  # pairs this matcher ran (not read from memory or disk)
        self.verified = 0  # of those, pairs with enough tentative matches to run RANSAC on
        self.rejected = 0  # of those, pairs recorded without inliers: fewer than min_matches tentative matches
        self.min_matches = max(int(cfg.min_matches), min_points(cfg.geometry))
        self._settings = {"version": RECORD_VERSION, "geometry": cfg.geometry,
                          "ransac_threshold": float(cfg.ransac_threshold), "region": float(cfg.region),
                          "matcher": store.matcher.match_settings()}
        if self.min_matches > min_points(cfg.geometry):  # else the records are those of verifying every pair
            self._settings["min_matches"] = self.min_matches
        self._settings_json = json.dumps(self._settings, sort_keys=True)

    def _key(self, pair: Tuple[int, int]) -> str:
        """sha256 of json.dumps([first key, second key, settings], sort_keys=True), the records' key in
        every cache so far, with the settings written once per matcher instead of once per pair."""
        text = f"[{json.dumps(self.store.key(pair[0]))}, {json.dumps(self.store.key(pair[1]))}, {self._settings_json}]"
        return hashlib.sha256(text.encode()).hexdigest()

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
        keys = {pair: self._key(pair) for pair in todo}
        stored = self.stored.load_many(keys.values())
        missing = []
        for pair, key in keys.items():
            found = stored.get(key)
            if found is not None and {"first", "second", "inlier"} <= set(found):
                self._records[pair] = Record(found["first"], found["second"], found["inlier"].astype(bool))
            else:
                missing.append(pair)
        rank, world = rank_and_world(self.accelerator)
        shared: Dict[Tuple[int, int], Record] = {}
        anywhere = bool(missing)
        if world > 1:
            missing, shared, anywhere = self._share_out(missing, rank, world)
        if not anywhere:
            return
        done = self._match(missing, keys, rank, world) if missing else {}
        if world > 1:
            from accelerate.utils import gather_object

            for part in gather_object([{**shared, **done}]):
                done.update(part)
        self._records.update(done)

    def _share_out(self, missing: List[Tuple[int, int]], rank: int,
                   world: int) -> Tuple[List[Tuple[int, int]], Dict[Tuple[int, int], Record], bool]:
        """(the pairs no process holds, the records this process shares, whether any process lacks any).

        Every process read the cache on its own, and a read that failed (a lock timeout) leaves one
        without records the others found: each pair some process lacks is shared by the first
        process that holds it, and matched (split among all) only where none does."""
        from accelerate.utils import gather_object

        lacking = [set(part) for part in gather_object([missing])]
        anywhere = set().union(*lacking)
        nowhere = sorted(set.intersection(*lacking))
        first_holder = {pair: next(r for r in range(world) if pair not in lacking[r]) for pair in anywhere - set(nowhere)}
        shared = {pair: self._records[pair] for pair, holder in first_holder.items() if holder == rank}
        return nowhere, shared, bool(anywhere)

    def _match(self, missing: List[Tuple[int, int]], keys: Dict[Tuple[int, int], str], rank: int,
               world: int) -> Dict[Tuple[int, int], Record]:
        """The records of this process's share of `missing` (every world-th pair), matched and stored."""
        self.store.prepare([row for pair in missing for row in pair], self.accelerator)
        mine = missing[rank::world]
        done = {}
        jobs = [(hub, partners[start:start + HUB_CHUNK], flipped) for hub, partners, flipped in hub_groups(mine)
                for start in range(0, len(partners), HUB_CHUNK)]
        with tqdm(total=len(mine), desc=f"matching ({self.store.matcher.name})", unit="pair",
                  disable=not mine or not self.show_progress or rank != 0, leave=False) as bar, \
                mapper(worker_count(self.store.matcher, self.accelerator)) as each:
            for records in each(lambda job: self._match_hub(*job), jobs):
                done.update(records)
                self._count(records.values())
                self.stored.save_many({keys[pair]: record.arrays() for pair, record in records.items()})
                bar.update(len(records))
        return done

    def _prepared(self, row: int) -> Tuple[Features, Optional[np.ndarray]]:
        """Row's features inside rerank.region, and their indices among all its keypoints (None: all)."""
        features = self.store.features(row)
        keep = central(features, self.cfg.region)
        return (features if keep is None else _subset(features, keep)), keep

    def _match_hub(self, hub: int, partners: Sequence[int], flipped: bool) -> Dict[Tuple[int, int], Record]:
        """The records of (hub, partner) pairs, or (partner, hub) with `flipped`, matched in one call."""
        f_hub, keep_hub = self._prepared(hub)
        prepared = [self._prepared(p) for p in partners]
        found = self.store.matcher.match_many(f_hub, [f for f, _ in prepared], flipped=flipped)
        out = {}
        for partner, (f_other, keep_other), (matches, _) in zip(partners, prepared, found, strict=True):
            if flipped:
                out[(partner, hub)] = self._record(matches, f_other, keep_other, f_hub, keep_hub)
            else:
                out[(hub, partner)] = self._record(matches, f_hub, keep_hub, f_other, keep_other)
        return out

    def _count(self, records) -> None:
        for record in records:
            self.matched += 1
            if len(record.first) < self.min_matches:
                self.rejected += 1
            else:
                self.verified += 1

    def _record(self, matches: np.ndarray, f0: Features, keep0: Optional[np.ndarray], f1: Features,
                keep1: Optional[np.ndarray]) -> Record:
        """One pair's record from its tentative matches (indices into the region's keypoints)."""
        first = matches[:, 0] if keep0 is None else keep0[matches[:, 0]]
        second = matches[:, 1] if keep1 is None else keep1[matches[:, 1]]
        if len(matches) < self.min_matches:
            inlier = np.zeros(len(matches), bool)
        else:
            inlier = ransac_inliers(f0["keypoints"][matches[:, 0]], f1["keypoints"][matches[:, 1]],
                                    self.cfg.geometry, self.cfg.ransac_threshold)
        return Record(first.astype(np.int32), second.astype(np.int32), inlier)

    def reverified(self, record: Record, first_row: int, second_row: int, geometry: str,
                   keep: np.ndarray) -> np.ndarray:
        """(M,) bool: the record's matches among `keep` that one model of `geometry` explains, fitted
        again on them (RANSAC at rerank.ransac_threshold); none when fewer than rerank.min_matches or
        the geometry's minimum are kept."""
        inlier = np.zeros(len(record.first), bool)
        kept = np.flatnonzero(keep)
        if len(kept) < max(int(self.cfg.min_matches), min_points(geometry)):
            return inlier
        points0 = self.store.features(first_row)["keypoints"][record.first[kept]]
        points1 = self.store.features(second_row)["keypoints"][record.second[kept]]
        inlier[kept] = ransac_inliers(points0, points1, geometry, self.cfg.ransac_threshold)
        return inlier

    def keypoints(self, row: int) -> np.ndarray:
        return self.store.features(row)["keypoints"]


def _subset(features: Features, keep: np.ndarray) -> Features:
    return {**features, "keypoints": features["keypoints"][keep], "descriptors": features["descriptors"][keep]}


def hub_groups(pairs: Sequence[Tuple[int, int]]) -> List[Tuple[int, List[int], bool]]:
    """[(hub, partners, flipped)]: every pair once, grouped by the image it shares with most pairs;
    flipped when the hub is the pairs' second image (pairs are (first, second) in a fixed order)."""
    degree = Counter(row for pair in pairs for row in pair)
    groups: Dict[Tuple[int, bool], List[int]] = {}
    for first, second in pairs:
        if degree[first] >= degree[second]:
            groups.setdefault((first, False), []).append(second)
        else:
            groups.setdefault((second, True), []).append(first)
    return [(hub, partners, flipped) for (hub, flipped), partners in groups.items()]

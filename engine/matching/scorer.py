"""The keypoint matcher as a shortlist scorer of the ensemble (engine.scoring.scorers).

A pair's raw score is its number of geometric inliers (rerank.score=inliers) or of matches, each
weighted by the keypoint weightings of rerank.weighting (engine.matching.weighting: confusers,
burstiness, foreground), each of which the held-out split keeps or drops (`options`). With
rerank.burstiness, a query keypoint that is matched in the shortlisted images of k different
identities counts 1/k, always: keypoints on a shared background (grass, a waterhole, a tank wall)
match every individual and so carry little evidence of any one. Like every scorer it gets its own
strictly increasing calibrator, fitted on database images' own shortlists (voting.fit_calibrators).
"""
from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict
from dataclasses import replace
from typing import Any, Dict, List, Tuple

import numpy as np
import pandas as pd

from core.array_cache import ArrayCache
from core.errors import ConfigError
from core.paths import resolve_cache_setting
from core.schema import EvalConfig, RerankConfig
from engine.matching import confusers, foreground  # noqa: F401  (register their weightings)
from engine.matching.keypoints import KeypointStore
from engine.matching.pairs import PairMatcher, Record
from engine.matching.weighting import (
    Burstiness,
    KeypointWeighting,
    MatchBatch,
    build_weighting,
    weighted_scores,
)
from engine.scoring.scorers import SCORERS, MatchSpace, Scorer


def counted_mask(record: Record, score: str) -> np.ndarray:
    """(M,) bool: the record's matches that count (its inliers, or all its matches)."""
    return record.inlier if score == "inliers" else np.ones(len(record.first), bool)


def counted(record: Record, score: str) -> np.ndarray:
    """Query-side keypoint indices of the matches that count."""
    return record.first[counted_mask(record, score)]


def pair_scores_of(records: List[Record], q_rows: np.ndarray, g_labels: np.ndarray, score: str,
                   burstiness: bool) -> np.ndarray:
    """(P,) raw scores of the pairs' records (q_rows[i] against an image of identity g_labels[i])."""
    batch = MatchBatch(records, np.asarray(q_rows), np.full(len(records), -1), g_labels,
                       [counted_mask(r, score) for r in records])
    return weighted_scores(batch, [Burstiness().weights(batch)] if burstiness else [])


def keypoint_weightings(cfg: RerankConfig) -> Dict[str, KeypointWeighting]:
    """rerank.weighting's weightings with their rerank.weighting_args (and burstiness with rerank.burstiness)."""
    unknown = sorted(set(cfg.weighting_args) - set(cfg.weighting))
    if unknown:
        raise ConfigError(f"rerank.weighting_args names '{unknown[0]}', which is not in rerank.weighting "
                          f"{cfg.weighting}")
    built = {name: build_weighting(name, cfg.weighting_args.get(name)) for name in cfg.weighting}
    if cfg.burstiness and "burstiness" not in built:
        built["burstiness"] = Burstiness()
    return built


@SCORERS.register("matcher")
class MatcherScorer(Scorer):
    """Keypoint matches of each shortlisted (query, database image) pair."""

    stage = "shortlist"
    weightings: Dict[str, KeypointWeighting] = {}  # read only; set per instance
    off: frozenset = frozenset()  # weightings the held-out split dropped (replaced, never changed in place)
    MEMO = 64  # pair-score calls whose weights are remembered: tuning votes the same pairs again and again
    _context = (0, b"")  # (times learnt, digest of the gallery rows prepared): part of the memo's keys
    _geometry = None  # a geometry of rerank.geometries the held-out split chose instead of rerank.geometry

    def __init__(self, pairs: PairMatcher, cfg: RerankConfig, weight: float):
        super().__init__(output=None, weight=weight)  # it scores images, not a model's outputs
        self.pairs = pairs
        self.cfg = cfg
        self.calibration_queries = cfg.calibration_queries
        self.weightings = keypoint_weightings(cfg)
        for weighting in self.weightings.values():
            weighting.bind(pairs)
        self._memo: OrderedDict = OrderedDict()

    def __copy__(self) -> MatcherScorer:
        """A copy with weightings of its own (each copy may learn from other shortlists), sharing the pair engine."""
        twin = object.__new__(type(self))
        twin.__dict__.update(self.__dict__)
        twin.weightings = {name: copy.deepcopy(w, {id(self.pairs): self.pairs}) for name, w in self.weightings.items()}
        twin._memo = OrderedDict()
        return twin

    @property
    def name(self) -> str:
        return f"{self.cfg.matcher} [matcher]"

    @property
    def database_shortlist(self) -> int:
        return max([w.database_shortlist for w in self.weightings.values()], default=0)

    @property
    def geometry(self) -> str:
        """The geometry pairs are verified with: rerank.geometry, or one of rerank.geometries chosen."""
        return self._geometry or self.cfg.geometry

    def options(self) -> Dict[str, Tuple[Any, ...]]:
        """Each weighting of rerank.weighting, off or on (off preferred among equals), then with
        rerank.geometries the geometry (rerank.geometry preferred)."""
        found: Dict[str, Tuple[Any, ...]] = {f"weighting {name}": (False, True) for name in self.cfg.weighting}
        others = [g for g in self.cfg.geometries if g != self.cfg.geometry]
        if others and self.cfg.score == "inliers":
            found["geometry"] = (self.cfg.geometry, *others)
        return found

    def option_values(self) -> Dict[str, Any]:
        return {**{f"weighting {name}": name not in self.off for name in self.cfg.weighting},
                "geometry": self.geometry}

    def set_option(self, name: str, value: Any) -> None:
        if name == "geometry":
            self._geometry = value
            return
        weighting = name.removeprefix("weighting ")
        self.off = self.off - {weighting} if value else self.off | {weighting}

    def learn(self, space: MatchSpace, rows: np.ndarray, shortlists: np.ndarray) -> None:
        self._context = (self._context[0] + 1, self._context[1])
        for weighting in self.weightings.values():
            if weighting.database_shortlist:
                weighting.learn(space.labels, rows, shortlists[:, :weighting.database_shortlist],
                                lambda record: counted_mask(record, self.cfg.score))

    def prepare(self, space: MatchSpace, q_rows: np.ndarray, g_rows: np.ndarray) -> None:
        self._context = (self._context[0], _digest(g_rows))
        for weighting in self.weightings.values():
            weighting.prepare(np.asarray(g_rows), len(space.datasets))

    def _weighed(self, labels: np.ndarray, q_rows: np.ndarray, g_rows: np.ndarray) -> Tuple[MatchBatch, List[np.ndarray]]:
        """The pairs' batch, its `counted` the matches that count under the geometry in use, and the
        weight of each match (the product of the weightings on; 1 without any). Another geometry than
        rerank.geometry fits each pair again on its stored matches, without those the weightings drop."""
        key = (self._context, _digest(q_rows), _digest(g_rows))
        if key not in self._memo:
            records = self.pairs.records(q_rows, g_rows)
            self._memo[key] = {"batch": MatchBatch(records, q_rows, g_rows, labels[g_rows],
                                                   [counted_mask(r, self.cfg.score) for r in records])}
            while len(self._memo) > self.MEMO:
                self._memo.popitem(last=False)
        self._memo.move_to_end(key)
        known = self._memo[key]  # the batch, and each weighting's weights of it whichever others are on
        batch = known["batch"]
        records = batch.records
        weights = [np.ones(len(r.first)) for r in records]
        for name in self.weightings:
            if name not in self.off:
                if name not in known:
                    known[name] = self.weightings[name].weights(batch)
                weights = [mine * found for mine, found in zip(weights, known[name], strict=True)]
        if self.geometry != self.cfg.geometry:
            verified = (self.geometry, self.off)
            if verified not in known:
                known[verified] = [self.pairs.reverified(r, q, g, self.geometry, w > 0) for r, q, g, w
                                   in zip(records, q_rows.tolist(), g_rows.tolist(), weights, strict=True)]
            batch = replace(batch, counted=known[verified])
        return batch, weights

    def pair_scores(self, space: MatchSpace, q_rows: np.ndarray, g_rows: np.ndarray) -> np.ndarray:
        batch, weights = self._weighed(space.labels, np.asarray(q_rows), np.asarray(g_rows))
        return weighted_scores(batch, [weights])

    def match_weights(self, labels: np.ndarray, q_row: int, g_rows: np.ndarray) -> List[np.ndarray]:
        """Per gallery row, the weight each match of (q_row, g) counts with in its score, 0 for those
        that do not count (the query's pairs with all of `g_rows` weighed together, as its shortlist is)."""
        g_rows = np.asarray(g_rows)
        batch, weights = self._weighed(labels, np.full(len(g_rows), q_row), g_rows)
        return [w * c for w, c in zip(weights, batch.counted, strict=True)]

    def describe(self) -> dict:
        matcher = self.pairs.store.matcher
        out = {**matcher.describe(), **matcher.match_settings(), "side": self.cfg.side, "score": self.cfg.score,
               "geometry": self.geometry, "ransac_threshold": self.cfg.ransac_threshold,
               "burstiness": self.cfg.burstiness, "region": self.cfg.region, "min_matches": self.pairs.min_matches}
        if self.cfg.weighting:
            out.update(weighting=[name for name in self.cfg.weighting if name not in self.off],
                       weighting_args=self.cfg.weighting_args)
        if self.cfg.geometries:
            out["geometries"] = self.cfg.geometries
        return out


def _digest(rows: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(rows, dtype=np.int64).tobytes(), digest_size=16).digest()


def build_matcher_scorer(cfg: EvalConfig, rows: pd.DataFrame, accelerator=None) -> MatcherScorer:
    """The matcher of cfg.rerank over the evaluation rows (gallery, then queries)."""
    from matchers import build_matcher

    rerank = cfg.rerank
    device = accelerator.device if accelerator is not None else None
    matcher = build_matcher(rerank.matcher, rerank.matcher_args, max_keypoints=rerank.max_keypoints, device=device)
    cache = ArrayCache(resolve_cache_setting(rerank.cache, "keypoints"), what="keypoint")
    main = accelerator is None or accelerator.is_main_process
    store = KeypointStore(matcher, rows, side=rerank.side, crop_to_bbox=cfg.data.crop_to_bbox,
                          bbox_padding=cfg.data.bbox_padding, orientation_rules=cfg.data.orientation_rules,
                          cache=cache, show_progress=main)
    return MatcherScorer(PairMatcher(store, rerank, cache, accelerator, show_progress=main), rerank, rerank.weight)

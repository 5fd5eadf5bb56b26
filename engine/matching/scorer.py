"""The keypoint matcher as a shortlist scorer of the ensemble (engine.scoring.scorers).

A pair's raw score is its number of geometric inliers (rerank.score=inliers) or of matches; with
rerank.burstiness, a query keypoint that is matched in the shortlisted images of k different
identities counts 1/k: keypoints on a shared background (grass, a waterhole, a tank wall) match
every individual and so carry little evidence of any one. Like every scorer it gets its own
strictly increasing calibrator, fitted on database images' own shortlists (voting.fit_calibrators).
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import pandas as pd

from core.array_cache import ArrayCache
from core.paths import resolve_cache_setting
from core.schema import EvalConfig, RerankConfig
from engine.matching.keypoints import KeypointStore
from engine.matching.pairs import PairMatcher, Record
from engine.scoring.scorers import SCORERS, MatchSpace, Scorer


def counted(record: Record, score: str) -> np.ndarray:
    """Query-side keypoint indices of the matches that count."""
    return record.first[record.inlier] if score == "inliers" else record.first


def pair_scores_of(records: List[Record], q_rows: np.ndarray, g_labels: np.ndarray, score: str,
                   burstiness: bool) -> np.ndarray:
    """(P,) raw scores of the pairs' records (q_rows[i] against an image of identity g_labels[i])."""
    kept = [counted(r, score) for r in records]
    if not burstiness:
        return np.array([len(k) for k in kept], dtype=np.float64)
    out = np.zeros(len(records))
    for q in np.unique(q_rows):
        at = np.flatnonzero(q_rows == q)
        identities: Dict[int, set] = {}
        for i in at:
            for keypoint in kept[i].tolist():
                identities.setdefault(keypoint, set()).add(g_labels[i])
        for i in at:
            out[i] = sum(1.0 / len(identities[k]) for k in kept[i].tolist())
    return out


@SCORERS.register("matcher")
class MatcherScorer(Scorer):
    """Keypoint matches of each shortlisted (query, database image) pair."""

    stage = "shortlist"

    def __init__(self, pairs: PairMatcher, cfg: RerankConfig, weight: float):
        super().__init__(output=None, weight=weight)  # it scores images, not a model's outputs
        self.pairs = pairs
        self.cfg = cfg
        self.calibration_queries = cfg.calibration_queries

    @property
    def name(self) -> str:
        return f"{self.cfg.matcher} [matcher]"

    def pair_scores(self, space: MatchSpace, q_rows: np.ndarray, g_rows: np.ndarray) -> np.ndarray:
        records = self.pairs.records(q_rows, g_rows)
        return pair_scores_of(records, np.asarray(q_rows), space.labels[g_rows], self.cfg.score, self.cfg.burstiness)

    def describe(self) -> dict:
        matcher = self.pairs.store.matcher
        return {**matcher.describe(), **matcher.match_settings(), "side": self.cfg.side, "score": self.cfg.score,
                "geometry": self.cfg.geometry, "ransac_threshold": self.cfg.ransac_threshold,
                "burstiness": self.cfg.burstiness, "region": self.cfg.region, "min_matches": self.pairs.min_matches}


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

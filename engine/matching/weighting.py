"""How much each matched keypoint counts: keypoint weightings, one registered class each.

Without a weighting, a pair's raw score is how many of its matches count (its geometric inliers, or
all its matches: rerank.score). With weightings (rerank.weighting, and rerank.burstiness), each
counted match counts the product of every weighting's weight for it, between 0 and 1, and the score
is their sum. A weighting reads the records the pair engine holds (engine.matching.pairs), so one
turned on or off re-scores pairs without matching them again; the held-out split of the database
chooses which to keep (engine.identify.heldout, `options` of the matcher scorer).

A weighting may learn from the labelled database before anything is scored (`learn`: every
database image against its own shortlist of `database_shortlist` database images, matched by the
pair engine once and cached like every pair), and is told which gallery rows a vote matches
against (`prepare`), so what it learnt from images outside them is never used: the held-out split
then sees only what a query would.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from core.errors import ConfigError
from core.registry import Registry
from engine.matching.pairs import PairMatcher, Record

KEYPOINT_WEIGHTINGS = Registry("keypoint weighting", name_attribute="name")


@dataclass
class MatchBatch:
    """Pairs scored together: the records of (q_rows[i], g_rows[i]), seen from the query, and which
    of each record's matches count."""

    records: Sequence[Record]
    q_rows: np.ndarray
    g_rows: np.ndarray
    g_labels: np.ndarray  # identity of each g_rows[i]
    counted: Sequence[np.ndarray]  # per record, (M,) bool

    def label_codes(self) -> np.ndarray:
        """(P,) an integer per distinct identity of g_labels."""
        return pd.factorize(pd.Series(self.g_labels, dtype=object))[0].astype(np.int64)

    def sizes(self) -> np.ndarray:
        """(P,) matches per record."""
        return np.array([len(r.first) for r in self.records], np.int64)

    def per_match(self, values: np.ndarray) -> np.ndarray:
        """A value per record, repeated for each of its matches (all records' matches in one array)."""
        return np.repeat(np.asarray(values), self.sizes())

    def joined(self, key: str) -> np.ndarray:
        """Every record's `first` or `second` keypoint indices in one int64 array, record after record."""
        parts = [getattr(r, key) for r in self.records]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def split(self, values: np.ndarray) -> List[np.ndarray]:
        """One array of all records' matches back into one per record."""
        return np.split(np.asarray(values, np.float64), np.cumsum(self.sizes())[:-1])


class KeypointWeighting(ABC):
    """Base class: the weight of each match of each record of a batch."""

    name = ""  # the registered name, set by KEYPOINT_WEIGHTINGS.register
    database_shortlist = 0  # database images per database image `learn` needs matched (0: it learns nothing)
    pairs: Optional[PairMatcher] = None  # the pair engine whose records it weighs (`bind`)

    def bind(self, pairs: PairMatcher) -> None:
        self.pairs = pairs

    def learn(self, labels: np.ndarray, rows: np.ndarray, shortlists: np.ndarray, counted) -> None:
        """Learn from the labelled database: `shortlists` (len(rows), database_shortlist) holds each
        database row's own shortlist (gallery rows, -1 padded; never itself); `labels` are the gallery
        rows' identities; `counted(record)` is the mask of a record's matches that count. Default: nothing."""
        return None

    def prepare(self, g_rows: np.ndarray, rows: int) -> None:
        """The gallery rows the next batches are matched against (of `rows` rows in all). Default: nothing."""
        return None

    @abstractmethod
    def weights(self, batch: MatchBatch) -> List[np.ndarray]:
        """Per record of the batch, (M,) weights of its matches in [0, 1] (only counted ones matter)."""


def weighted_scores(batch: MatchBatch, weights: Sequence[List[np.ndarray]]) -> np.ndarray:
    """(P,) raw scores: per pair the sum over its counted matches of the product of `weights` (each a
    weighting's `weights(batch)`); without any, the number of counted matches."""
    if not weights:
        return np.array([int(c.sum()) for c in batch.counted], dtype=np.float64)
    product = [c.astype(np.float64) for c in batch.counted]
    for one in weights:
        for mine, found in zip(product, one, strict=True):
            mine *= found
    return np.array([p.sum() for p in product], dtype=np.float64)


KEY_SPAN = np.int64(1) << np.int64(31)  # keypoint indices and rows stay below it


def distinct_counts(groups: np.ndarray, keys: np.ndarray, values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """For every distinct (group, key): how many distinct `values` occur with it. Returns the pairs
    as sorted codes group * KEY_SPAN + key, and their counts."""
    codes = np.asarray(groups, np.int64) * KEY_SPAN + np.asarray(keys, np.int64)
    values = np.asarray(values, np.int64)
    if len(codes) == 0:
        return codes, codes.copy()
    order = np.lexsort((values, codes))
    codes, values = codes[order], values[order]
    new = np.ones(len(codes), bool)
    new[1:] = (codes[1:] != codes[:-1]) | (values[1:] != values[:-1])
    return np.unique(codes[new], return_counts=True)


def counts_of(found: Tuple[np.ndarray, np.ndarray], group, keys: np.ndarray) -> np.ndarray:
    """The counts `distinct_counts` found for (group, each of keys), a group or one per key; 0 where
    it found none."""
    codes, counts = found
    wanted = np.asarray(group, np.int64) * KEY_SPAN + np.asarray(keys, np.int64)
    out = np.zeros(len(wanted), np.int64)
    if len(codes):
        at = np.clip(np.searchsorted(codes, wanted), 0, len(codes) - 1)
        hit = codes[at] == wanted
        out[hit] = counts[at[hit]]
    return out


def build_weighting(name: str, args: Optional[dict] = None) -> KeypointWeighting:
    return KEYPOINT_WEIGHTINGS.build(name, args)


@KEYPOINT_WEIGHTINGS.register("burstiness")
class Burstiness(KeypointWeighting):
    """A query keypoint whose counted matches fall in the shortlisted images of k different identities
    counts k^-power (power 1: 1/k, rerank.burstiness): keypoints on a shared background (grass, a
    waterhole, a tank wall, a camera's overlay) match every individual and so tell none apart."""

    def __init__(self, power: float = 1.0):
        if not power > 0:
            raise ConfigError(f"burstiness power must be above 0, got {power}")
        self.power = float(power)

    def weights(self, batch: MatchBatch) -> List[np.ndarray]:
        queries, first = batch.per_match(batch.q_rows), batch.joined("first")
        counted = np.concatenate(batch.counted) if batch.records else np.zeros(0, bool)
        found = distinct_counts(queries[counted], first[counted], batch.per_match(batch.label_codes())[counted])
        return batch.split(np.maximum(counts_of(found, queries, first), 1).astype(np.float64) ** -self.power)

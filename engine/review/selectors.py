"""Which pair a person is asked next, one registered class each (`--selector NAME`).

Every selector sees the same `Candidates`: the pairs whose answer the closure of earlier answers
does not already imply, each with its calibrated probability, the probability that an answer
changes the run's output (`flip`), how much of the output it changes (`impact`: pairs of images
whose togetherness changes, engine/review/tasks.py), and how far the scorers' own probabilities
disagree (`disagreement`: global embeddings against keypoint matches, 0 with one scorer). The
default selector also sees, with `--error-prior` above 0, the pairs the answers decide while the
model disagrees (verification questions, engine/review/tasks.py `doubted`): their `flip` is the
chance that an answer behind the decision was wrong. The two references see open pairs only.

* `default`: the largest expected change, flip x impact, where a pair the scorers disagree on
  counts as at least half as likely to flip as they are apart: for identification the queries
  nearest their threshold or with close top candidates, for clustering the merges and splits of
  the largest clusters. Ties go to the more uncertain pair.
* `uncertainty`: the pair whose probability is nearest 0.5.
* `random`: any candidate, uniformly.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from core.registry import Registry

SELECTORS = Registry("pair selector", name_attribute="name")


@dataclass
class Candidates:
    """Parallel arrays over the pairs that may be asked."""

    pair: np.ndarray  # index of the pair in the run's review.npz
    p: np.ndarray  # calibrated P(same individual)
    flip: np.ndarray  # probability that the answer changes the output
    impact: np.ndarray  # image pairs whose decision changes if it does
    disagreement: np.ndarray  # spread of the scorers' calibrated scores (0..1)

    def __len__(self) -> int:
        return len(self.pair)

    def take(self, keep: np.ndarray) -> Candidates:
        return Candidates(self.pair[keep], self.p[keep], self.flip[keep], self.impact[keep], self.disagreement[keep])

    def joined(self, other: Candidates) -> Candidates:
        return Candidates(*(np.concatenate([getattr(self, f), getattr(other, f)])
                            for f in ("pair", "p", "flip", "impact", "disagreement")))


class Selector(ABC):
    name = ""
    verifies = False  # also offered the verification questions (`--error-prior`); the references are not

    @abstractmethod
    def scores(self, candidates: Candidates, rng: np.random.Generator) -> np.ndarray:
        """Higher is asked first."""

    def pick(self, candidates: Candidates, rng: np.random.Generator) -> int:
        """The position in `candidates` of the pair to ask (candidates is not empty)."""
        return int(np.argmax(self.scores(candidates, rng)))


@SELECTORS.register("default")
class ExpectedChange(Selector):
    """The largest expected change of the output (see the module doc)."""

    verifies = True

    def scores(self, candidates, rng):
        flip = np.maximum(candidates.flip, candidates.disagreement / 2)
        uncertain = 0.5 - np.abs(candidates.p - 0.5)
        return flip * candidates.impact + 1e-6 * uncertain


@SELECTORS.register("uncertainty")
class Uncertainty(Selector):
    """The probability nearest 0.5."""

    def scores(self, candidates, rng):
        return -np.abs(candidates.p - 0.5)


@SELECTORS.register("random")
class Random(Selector):
    """Any candidate, uniformly."""

    def scores(self, candidates, rng):
        return rng.random(len(candidates))

"""Thresholds for datasets without train images (`cluster.unlabelled`), one registered strategy each.

A dataset without labelled train images (AnimalCLEF 2026's lizards, a folder of new photos beside a
labelled gallery) cannot tune its own threshold on held-out identities. A strategy sets it from what
there is: the labelled datasets' held-out curves (tuning.py) and the dataset's own graph. It returns
the threshold, a line saying why, and the thresholds it could as well have chosen, from which the
count's interval is drawn (population.py). The default was chosen by leaving each labelled
development dataset out in turn (docs/clustering.md).

* `transfer`: the thresholds best on average over the labelled datasets (for the clusters, and for
  the count): on calibrated probabilities P(same individual) a threshold means the same on every
  dataset, if the calibration transfers to a species whose photos look like none of the others'.
  Could-have-been: the bootstrap of the labelled datasets' validation (datasets and identities drawn
  with replacement).
* `mixture`: from the dataset's own edges. A two-component Gaussian mixture of the raw similarity of
  its graph's edges (photos of one individual / of two) estimates the share of its edges that join
  photos of one individual; the threshold is the one at which that share of its edges falls inside
  clusters; it sets the count too. It needs no calibration to transfer, only that the two kinds of
  edges form two modes. Could-have-been: the mixture refitted on edges drawn with replacement.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
from sklearn.mixture import GaussianMixture

from core.registry import Registry
from engine.cluster.bootstrap import REPLICATES
from engine.cluster.graph import Graph
from engine.cluster.methods import Clusterer
from engine.cluster.search import MEAN
from engine.cluster.tuning import Tuned

UNLABELLED = Registry("unlabelled_threshold", name_attribute="name")
MIN_EDGES = 30  # fewer edges cannot fit a mixture: `mixture` takes the transfer's threshold
REFINE = 6  # bisections of the threshold between the two grid values around the wanted share


@dataclass
class Unlabelled:
    """What a strategy may read of one dataset without its own tuned threshold."""

    dataset: str
    graph: Graph  # its images and their edges' P(same individual)
    anchors: np.ndarray  # identity code per node, -1 for an image to cluster
    similarity: np.ndarray  # raw similarity of each edge (the embedding scorers' mean)
    clusterer: Clusterer
    tuned: Tuned  # the labelled datasets' held-out validation
    plausible_count: Dict[str, List[float]]  # the bootstrap of its count thresholds (bootstrap.py), per dataset and MEAN
    seed: int


@dataclass
class ThresholdChoice:
    """The thresholds one dataset is clustered at (its clusters, its count), who set them and why."""

    threshold: float  # the clusters written
    strategy: str  # a registered strategy, "own" (tuned on its train identities) or "cluster.threshold"
    why: str
    count_threshold: float  # the population estimate is its number of clusters at this threshold
    count_plausible: List[float] = field(default_factory=list)  # what that could as well have been (empty: no interval)
    alternatives: Dict[str, ThresholdChoice] = field(default_factory=dict)  # what every other registered strategy chose
    at_end: Optional[str] = None  # "lowest" / "highest": at that end of the searched range

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"threshold": self.threshold, "strategy": self.strategy, "why": self.why,
                               "count_threshold": self.count_threshold}
        if self.alternatives:
            out["alternatives"] = {name: {"threshold": c.threshold, "count_threshold": c.count_threshold}
                                   for name, c in sorted(self.alternatives.items())}
        if self.at_end:
            out["at_search_end"] = self.at_end
        return out


class Strategy(ABC):
    name = ""  # the registered name

    @abstractmethod
    def choose(self, case: Unlabelled) -> ThresholdChoice:
        """The dataset's threshold."""


@UNLABELLED.register("transfer")
class Transfer(Strategy):
    def choose(self, case):
        tuned = case.tuned
        return ThresholdChoice(tuned.overall, self.name, f"the threshold best on average over {', '.join(sorted(tuned.per_dataset))} "
                               f"(validation {tuned.criterion.upper()} on their held-out train identities)",
                               tuned.count.overall, list(case.plausible_count[MEAN]))


def same_share(similarity: np.ndarray, seed: int) -> float:
    """The weight of the upper component of a two-component Gaussian mixture of `similarity`."""
    mixture = GaussianMixture(2, random_state=seed).fit(np.asarray(similarity, dtype=np.float64).reshape(-1, 1))
    return float(mixture.weights_[int(np.argmax(mixture.means_.ravel()))])


class ShareCurve:
    """The share of a graph's edges inside clusters, against the threshold (falling as it rises)."""

    def __init__(self, graph: Graph, anchors: np.ndarray, clusterer: Clusterer, grid: List[float]):
        self.graph, self.anchors, self.clusterer = graph, anchors, clusterer
        self.points: Dict[float, float] = {}
        self._add(list(grid))

    def _add(self, thresholds: List[float]) -> None:
        for t, labels in zip(thresholds, self.clusterer.labels(self.graph, self.anchors, thresholds), strict=True):
            self.points[t] = float(np.mean(labels[self.graph.i] == labels[self.graph.j])) if len(self.graph.i) else 0.0

    def _curve(self) -> tuple:
        ts = np.array(sorted(self.points))
        return ts, np.minimum.accumulate(np.array([self.points[t] for t in ts]))

    def threshold_for(self, share: float, refine: bool = True) -> float:
        """The threshold at which `share` of the edges are inside clusters (refined by bisection)."""
        ts, shares = self._curve()
        above = np.flatnonzero(shares >= share)
        if len(above) == 0:
            return float(ts[0])
        if above[-1] == len(ts) - 1:
            return float(ts[-1])
        low, high = ts[above[-1]], ts[above[-1] + 1]
        for _ in range(REFINE if refine else 0):
            middle = (low + high) / 2
            self._add([middle])
            low, high = (middle, high) if self.points[middle] >= share else (low, middle)
        if refine:
            return float((low + high) / 2)
        ts, shares = self._curve()
        # shares fall as thresholds rise: interpolate the threshold against the share, both reversed
        return float(np.interp(share, shares[::-1], ts[::-1]))


@UNLABELLED.register("mixture")
class Mixture(Strategy):
    def choose(self, case):
        similarity = np.asarray(case.similarity, dtype=np.float64)
        if len(similarity) < MIN_EDGES or np.ptp(similarity) == 0:
            fallback = Transfer().choose(case)
            fallback.why = f"{len(similarity)} edges cannot fit a mixture, so {fallback.why}"
            return fallback
        share = same_share(similarity, case.seed)
        curve = ShareCurve(case.graph, case.anchors, case.clusterer, case.tuned.search.grid)
        threshold = curve.threshold_for(share)
        rng = np.random.default_rng(case.seed)
        plausible = [curve.threshold_for(same_share(rng.choice(similarity, len(similarity)), case.seed), refine=False)
                     for _ in range(REPLICATES)]
        return ThresholdChoice(threshold, self.name, f"a two-component mixture of its {len(similarity)} edges' "
                               f"similarities puts {share:.0%} of them between photos of one individual, and at this "
                               f"threshold {share:.0%} of its edges fall inside clusters", threshold, plausible)

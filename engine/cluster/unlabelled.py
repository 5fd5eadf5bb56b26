"""Thresholds for datasets without train images (`cluster.unlabelled`), one registered strategy each.

A dataset without labelled train images (AnimalCLEF 2026's lizards, a folder of new photos beside a
labelled gallery) cannot tune its own thresholds on held-out identities. A strategy sets them from
what there is: the labelled datasets' held-out curves (tuning.py) and the dataset's own graph. It
sets two: the clusters' threshold and the threshold the population is counted at, and says why.
Each strategy is also checked on the labelled datasets left out one at a time (assign.py): their
train images clustered as if unlabelled at what it would have set without them; how far those
counts land from the truth widens the count's interval (population.py). The default was chosen by
leaving each labelled development dataset out in turn (docs/clustering.md).

* `transfer`: the thresholds best on average over the labelled datasets (for the clusters, and for
  the count): on calibrated probabilities P(same individual) a threshold means the same on every
  dataset, if the calibration transfers to a species whose photos look like none of the others'.
  Its thresholds could as well have been those of the bootstrap of the labelled datasets'
  validation (datasets and identities drawn with replacement, bootstrap.py).
* `unanchored`: the same, but on the labelled datasets' train images clustered without anchors, as
  a dataset without train images is: anchors (two identities' train images never merge) hold the
  clusters of anchored validation images apart, so a threshold tuned with them merges too much
  where there are none. Could-have-been: the labelled datasets drawn with replacement.
* `mixture`: from the dataset's own edges. A two-component Gaussian mixture of the raw similarity of
  its graph's edges (photos of one individual / of two) estimates the share of its edges that join
  photos of one individual; both thresholds are the one at which that share of its edges falls
  inside clusters. It needs no calibration to transfer, only that the two kinds of edges form two
  modes. Its threshold could as well have been that of the mixture refitted on edges drawn with
  replacement.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from core.registry import Registry
from engine.cluster.bootstrap import REPLICATES, Replicates
from engine.cluster.criteria import CRITERIA
from engine.cluster.graph import Graph
from engine.cluster.methods import Clusterer
from engine.cluster.search import MEAN
from engine.cluster.tuning import Optimum, Tuned

UNLABELLED = Registry("unlabelled_threshold", name_attribute="name")
MIN_EDGES = 30  # fewer edges cannot fit a mixture: `mixture` takes the transfer's thresholds
REFINE = 6  # bisections of the threshold between the two grid values around the wanted share


@dataclass
class Target:
    """A dataset whose thresholds are set without its labels."""

    dataset: str
    graph: Graph  # its images and their edges' P(same individual)
    anchors: np.ndarray  # identity code per node, -1 for an image to cluster
    similarity: np.ndarray  # raw similarity of each edge (the embedding scorers' mean)
    truth: Optional[np.ndarray] = None  # identity per node, when a labelled dataset plays the part


@dataclass
class Context:
    """What every strategy may read besides its target."""

    clusterer: Clusterer
    tuned: Tuned  # the labelled datasets' held-out validation
    count_replicates: Replicates  # its bootstrap for the count's threshold
    seed: int
    labelled: Dict[str, Target] = field(default_factory=dict)  # each labelled dataset's train images, as if unlabelled
    # per labelled dataset, per criterion: its curve along the grid when clustered as if unlabelled
    alone_curves: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)

    def alone(self, dataset: str, criterion: str) -> np.ndarray:
        """`criterion` along the tuning's grid for the labelled `dataset` clustered without anchors."""
        if dataset not in self.alone_curves:
            target, grid = self.labelled[dataset], self.tuned.search.grid
            found = self.clusterer.labels(target.graph, target.anchors, grid)
            self.alone_curves[dataset] = {name: np.array([CRITERIA.build(name).score(target.truth, labels)
                                                          for labels in found])
                                          for name in {self.tuned.criterion, self.tuned.count.criterion}}
        return self.alone_curves[dataset][criterion]


@dataclass
class Setting:
    """What a strategy set for one target."""

    threshold: float  # the clusters'
    count_threshold: float  # the population count's
    why: str
    count_thresholds: List[float] = field(default_factory=list)  # what the count's could as well have been


class Strategy(ABC):
    name = ""  # the registered name

    @abstractmethod
    def set(self, target: Target, context: Context, tuned_on: Sequence[str], draws: bool) -> Setting:
        """The target's thresholds, from the labelled datasets `tuned_on` only (the others are left
        out to check the strategy); with `draws`, also what the count's could as well have been."""


@dataclass
class ThresholdChoice:
    """The thresholds one dataset is clustered and counted at, who set them and why."""

    threshold: float  # the clusters written
    strategy: str  # a registered strategy, "own" (tuned on its train identities) or "cluster.threshold"
    why: str
    count_threshold: float  # the population estimate is its number of clusters at this threshold
    # (threshold, log error) pairs: a threshold the count's could as well have been, and how far a
    # count read that way landed from the truth where the truth was known (population.py)
    count_draws: List[Tuple[float, float]] = field(default_factory=list)
    alternatives: Dict[str, ThresholdChoice] = field(default_factory=dict)  # what every other strategy chose
    at_end: Optional[str] = None  # "lowest" / "highest": at that end of the searched range
    checked: str = ""  # how the strategy did on the labelled datasets left out in turn

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"threshold": self.threshold, "strategy": self.strategy, "why": self.why,
                               "count_threshold": self.count_threshold}
        if self.checked:
            out["left_out_check"] = self.checked
        if self.alternatives:
            out["alternatives"] = {name: {"threshold": c.threshold, "count_threshold": c.count_threshold,
                                          "left_out_check": c.checked}
                                   for name, c in sorted(self.alternatives.items())}
        if self.at_end:
            out["at_search_end"] = self.at_end
        return out


def mean_choice(optimum: Optimum, datasets: Sequence[str]) -> float:
    """The threshold `optimum`'s criterion picks on the mean curve of `datasets`."""
    curve = np.mean([optimum.search.curves[d] for d in sorted(datasets)], axis=0)
    return CRITERIA.build(optimum.criterion).choose(curve, optimum.search.grid)


@UNLABELLED.register("transfer")
class Transfer(Strategy):
    def set(self, target, context, tuned_on, draws):
        tuned = context.tuned
        return Setting(mean_choice(tuned.partition, tuned_on), mean_choice(tuned.count, tuned_on),
                       f"the thresholds best on average over {', '.join(sorted(tuned_on))} (validation "
                       f"{tuned.criterion.upper()}, and {tuned.count.criterion.upper()} for the count, on their held-out "
                       "train identities)", list(context.count_replicates.thresholds[MEAN]) if draws else [])


@UNLABELLED.register("unanchored")
class Unanchored(Strategy):
    def set(self, target, context, tuned_on, draws):
        tuned, grid = context.tuned, context.tuned.search.grid
        if not tuned_on:
            return Transfer().set(target, context, tuned_on, draws)

        def choose(criterion: str, datasets: Sequence[str]) -> float:
            curve = np.mean([context.alone(d, criterion) for d in datasets], axis=0)
            return CRITERIA.build(criterion).choose(curve, grid)

        rng = np.random.default_rng(context.seed)
        drawn = [choose(tuned.count.criterion, rng.choice(sorted(tuned_on), len(tuned_on)))
                 for _ in range(REPLICATES if draws else 0)]
        return Setting(choose(tuned.criterion, tuned_on), choose(tuned.count.criterion, tuned_on),
                       f"the thresholds best on average over {', '.join(sorted(tuned_on))} when their train images are "
                       f"clustered without anchors, as this dataset is (validation {tuned.criterion.upper()}, and "
                       f"{tuned.count.criterion.upper()} for the count)", drawn)


BINS = 256  # the mixture is fitted to a histogram of the similarities: its cost does not grow with the edges
EM_STEPS = 3000
EM_TOLERANCE = 1e-10


def histogram(similarity: np.ndarray) -> tuple:
    """(bin centres, counts) of the similarities."""
    counts, edges = np.histogram(np.asarray(similarity, dtype=np.float64), bins=BINS)
    return (edges[:-1] + edges[1:]) / 2, counts.astype(np.float64)


def fit_mixture(centres: np.ndarray, counts: np.ndarray, start: Optional[tuple] = None) -> tuple:
    """(weights, means, variances) of a two-component Gaussian mixture fitted by EM to a histogram
    (bin centres, counts), from `start` or from the histogram's lower and upper halves."""
    total = counts.sum()
    mean = float((counts * centres).sum() / total)
    spread = max(float((counts * (centres - mean) ** 2).sum() / total), 1e-12)
    floor = spread * 1e-4  # a component may not shrink onto one bin
    if start is None:
        below = np.cumsum(counts) <= total / 2
        if not below.any() or below.all():
            below = centres <= np.median(centres)
        halves = [below, ~below]
        start = (np.array([counts[h].sum() / total for h in halves]),
                 np.array([(counts[h] * centres[h]).sum() / max(counts[h].sum(), 1e-12) for h in halves]),
                 np.full(2, spread / 4))
    weights, means, variances = (np.array(v, dtype=np.float64) for v in start)
    previous = -np.inf
    for _ in range(EM_STEPS):
        density = weights * np.exp(-(centres[:, None] - means) ** 2 / (2 * variances)) / np.sqrt(2 * np.pi * variances)
        per_bin = density.sum(axis=1, keepdims=True) + 1e-300
        likelihood = float((counts * np.log(per_bin[:, 0])).sum())
        responsibility = density / per_bin * counts[:, None]
        mass = responsibility.sum(axis=0) + 1e-12
        weights, means = mass / total, (responsibility * centres[:, None]).sum(axis=0) / mass
        variances = np.maximum((responsibility * (centres[:, None] - means) ** 2).sum(axis=0) / mass, floor)
        if likelihood - previous < EM_TOLERANCE * abs(likelihood):
            break
        previous = likelihood
    return weights, means, variances


def upper_weight(mixture: tuple) -> float:
    """The share of the component with the higher mean: edges between photos of one individual."""
    weights, means, _ = mixture
    return float(weights[int(np.argmax(means))])


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
        # shares fall as thresholds rise: the threshold interpolated against the share, both reversed
        return float(np.interp(share, shares[::-1], ts[::-1]))


@UNLABELLED.register("mixture")
class Mixture(Strategy):
    def set(self, target, context, tuned_on, draws):
        similarity = np.asarray(target.similarity, dtype=np.float64)
        if len(similarity) < MIN_EDGES or np.ptp(similarity) == 0:
            fallback = Transfer().set(target, context, tuned_on, draws)
            fallback.why = f"{len(similarity)} edges cannot fit a mixture, so {fallback.why}"
            return fallback
        centres, counts = histogram(similarity)
        mixture = fit_mixture(centres, counts)
        share = upper_weight(mixture)
        curve = ShareCurve(target.graph, target.anchors, context.clusterer, context.tuned.search.grid)
        threshold = curve.threshold_for(share)
        rng = np.random.default_rng(context.seed)
        # edges drawn with replacement: the histogram's counts drawn from their multinomial, each
        # refit started from the full fit
        drawn = [curve.threshold_for(upper_weight(fit_mixture(centres, rng.multinomial(
                     len(similarity), counts / counts.sum()).astype(np.float64), mixture)), refine=False)
                 for _ in range(REPLICATES if draws else 0)]
        return Setting(threshold, threshold, f"a two-component mixture of its {len(similarity)} edges' similarities "
                       f"puts {share:.0%} of them between photos of one individual, and at this threshold {share:.0%} "
                       "of its edges fall inside clusters", drawn)

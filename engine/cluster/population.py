"""The number of individuals per dataset, with a 90 % interval (population.csv, metrics.json,
manifest.json, the report's population table).

The clusters written are tuned for ARI (or `cluster.criterion`), which counts pairs of images: it
will split or merge individuals when that gets more pairs right, so their number is a biased count.
The estimate is the number of clusters the dataset's test images form at the count's own threshold
(`cluster.count_criterion`: by default where the held-out validation images formed as many clusters
as they show individuals; a strategy's own for a dataset without train images, unlabelled.py).

The interval has three parts, drawn together. Which threshold: the count's threshold as the
bootstrap of the validation (or the strategy) could as well have chosen it. How far a count read
that way lands from the truth: for a dataset with train images, the count of the validation
identities a bootstrap replicate did not draw, at that replicate's threshold (bootstrap.py); for one
without, the count of each labelled dataset left out in turn and clustered as if unlabelled at what
the strategy sets from the others (assign.py). And chance: what each individual adds to a count
varies (its spread, measured with that error), so the test's own individuals move it too. Each draw
is the test images' count at the drawn threshold, divided by the drawn error, plus that chance.

The draws are read both ways: divided by each drawn error, and multiplied by it; the interval runs
from the lower to the higher end of the two readings' central 90 %. The held-out images say how far counts land, but not on which side for the test:
known individuals with few test photos join other individuals' clusters (the count falls), new
individuals with many are split (it rises), and the test's mix of the two is not the held-out one,
nor is an unlabelled species' the left-out datasets'. Read one way only, the interval missed the
truth on the side the held-out images did not point to (docs/results.md).
docs/clustering.md measures how often it holds the true count.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from engine.cluster.bootstrap import CountError
from engine.cluster.graph import Graph
from engine.cluster.methods import Clusterer

LEVEL = 0.90
POPULATION_FILE = "population.csv"


@dataclass
class PopulationEstimate:
    dataset: str
    test_images: int
    individuals: int  # the estimate: clusters of its test images at count_threshold
    low: Optional[int]  # the 90 % interval; None when the threshold was given (nothing to draw from)
    high: Optional[int]
    count_threshold: float
    clusters: int  # in clusters.csv and the submission, at `threshold`
    joined_train_identities: int  # of those clusters, how many joined a train identity
    threshold: float
    strategy: str  # who set the thresholds (unlabelled.ThresholdChoice)
    true_individuals: Optional[int] = None  # where the test images carry identities

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def clusters_at(graph: Graph, anchors: np.ndarray, clusterer: Clusterer,
                thresholds: Sequence[float]) -> Dict[float, np.ndarray]:
    """The clusters of the graph's nodes at each distinct threshold."""
    distinct = sorted({float(t) for t in thresholds})
    return dict(zip(distinct, clusterer.labels(graph, anchors, distinct), strict=True)) if distinct else {}


def interval(count: int, draws: Sequence[Tuple[float, CountError]], counts: Dict[float, int], images: int,
             seed: int = 0) -> tuple:
    """(low, high): the central LEVEL of the truths the draws point to, read both ways (see the module
    doc), widened to hold `count`, and no more individuals than the `images` they were counted on."""
    if not len(draws):
        return None, None
    ends = np.array([_central(draws, counts, direction, seed) for direction in (1.0, -1.0)])
    low, high = ends[:, 0].min(), ends[:, 1].max()
    return int(min(max(np.floor(low), 1), count)), int(min(max(np.ceil(high), count), images))


def _central(draws: Sequence[Tuple[float, CountError]], counts: Dict[float, int], direction: float, seed: int) -> tuple:
    """The central LEVEL of the truths the draws point to. A draw (threshold, error) says: the count at
    that threshold, divided by how far such counts landed (direction 1: a count that landed 20 % high
    says the truth may be 20 % lower; -1: its mirror image, 20 % higher), give or take what the test's
    own individuals add by chance (the error's spread per individual)."""
    rng = np.random.default_rng(seed)
    values = []
    for t, error in draws:
        centre = counts[float(t)] * np.exp(-direction * error.log_error)
        values.append(centre + rng.normal(0.0, np.sqrt(max(centre, 1.0) * error.spread)))
    tail = (1 - LEVEL) / 2 * 100
    return tuple(np.percentile(values, [tail, 100 - tail]))


def write_population(path: Path, estimates: List[PopulationEstimate]) -> None:
    pd.DataFrame([e.to_dict() for e in estimates]).rename(
        columns={"low": "low_90", "high": "high_90"}).to_csv(path, index=False)


def read_population(folder: Path) -> List[Dict[str, Any]]:
    """population.csv of an output folder as records (None where a cell is empty); [] without one."""
    path = Path(folder) / POPULATION_FILE
    if not path.is_file():
        return []
    frame = pd.read_csv(path)
    return [{k: (None if pd.isna(v) else v) for k, v in row.items()} for row in frame.to_dict("records")]

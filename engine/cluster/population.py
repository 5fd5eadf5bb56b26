"""The number of individuals per dataset, with a 90 % interval (population.csv, metrics.json,
manifest.json, the report's population table).

The clusters written are tuned for ARI (or `cluster.criterion`), which counts pairs of images: it
will split or merge individuals when that gets more pairs right, so their number is a biased
count. The estimate is instead the number of clusters the dataset's test images form at the count's
own threshold: the one at which the held-out validation images formed as many clusters as they
show individuals (criteria.py `count`; a strategy's own for a dataset without train images,
unlabelled.py). The interval: the test images clustered again at every count threshold the
validation could as well have chosen (its bootstrap, bootstrap.py, or the strategy's), the 5th and
95th percentiles of those counts. docs/clustering.md measures how often it holds the true count.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

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


def interval(count: int, plausible: Sequence[float], counts: Dict[float, int]) -> tuple:
    """(low, high): the central LEVEL of the counts at the plausible thresholds, widened to hold `count`."""
    if not len(plausible):
        return None, None
    values = np.array([counts[float(t)] for t in plausible], dtype=np.float64)
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail], method="nearest")
    return int(min(low, count)), int(max(high, count))


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

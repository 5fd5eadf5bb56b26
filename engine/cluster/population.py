"""The number of individuals per dataset, with a 90 % interval (population.csv, metrics.json,
manifest.json, the report's population table).

The clusters written are tuned for ARI (or `cluster.criterion`), which counts pairs of images: it
will split or merge individuals when that gets more pairs right, so their number is a biased count.
The estimate is the number of clusters the dataset's test images form at the count's own threshold
(`cluster.count_criterion`: by default where the held-out validation images formed as many clusters
as they show individuals; a strategy's own for a dataset without train images, unlabelled.py).

The interval has two parts, drawn together. Which threshold: the count's threshold as the bootstrap
of the validation (or the strategy) could as well have chosen it. How far a count read that way
lands from the truth: for a dataset with train images, the count of the validation identities a
bootstrap replicate did not draw, at that replicate's threshold (bootstrap.py); for one without,
the count of each labelled dataset left out in turn and clustered as if unlabelled at what the
strategy sets from the others (assign.py). Each draw is the test images' count at the drawn
threshold, divided by the drawn error; the interval holds the central 90 % of the draws.
docs/clustering.md measures how often it holds the true count.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

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


def interval(count: int, draws: Sequence[Tuple[float, float]], counts: Dict[float, int]) -> tuple:
    """(low, high): the central LEVEL of the counts the draws give, widened to hold `count`. A draw
    (threshold, log error) gives the count at that threshold, corrected by that error (a count that
    landed 20 % above the truth says the truth may be 20 % below this one)."""
    if not len(draws):
        return None, None
    values = np.array([counts[float(t)] * np.exp(-e) for t, e in draws], dtype=np.float64)
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return int(min(np.floor(low), count)), int(max(np.ceil(high), count))


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

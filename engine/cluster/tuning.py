"""The clustering threshold, tuned by ARI on held-out labelled identities, never on test labels.

The test is simulated on the train images of each dataset: `cluster.holdout_fraction` of its
identities are held out; `cluster.unknown_fraction` of those leave whole (new individuals), the
others send half their images to the validation set (known individuals photographed again). The
validation images are clustered with the remaining train images as anchors, at every threshold
of `cluster.grid`, and scored by ARI; `cluster.splits` such splits are averaged. Each dataset
takes the threshold of its own best ARI, and a dataset without train images takes the one that
is best on average over the others: on calibrated probabilities P(same individual) a threshold
means the same on every dataset, so it transfers (on raw cosines it would not).
The calibrators are fitted on the first split's remaining train images, as in the query pipeline.
With a keypoint matcher (and rerank.tune_weight), its weight in the edges' soft vote is tuned the
same way, as the query pipeline tunes it: each weight of MATCHER_WEIGHTS gets its thresholds tuned,
and the weight whose validation ARI is best wins (the configured one among equals). The graph and
its edges' scores are computed once: every further weight only re-votes and re-clusters.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

from core.errors import DataError
from core.schema import ClusterConfig, EvalConfig
from data.splits import open_set_split
from engine.cluster.graph import Graph, edge_scores, fused_probabilities, graph_edges
from engine.cluster.methods import Clusterer
from engine.scoring.scorers import MatchSpace, Scorer
from engine.scoring.voting import fit_calibrators
from engine.scoring.weights import MATCHER_WEIGHTS

MIN_HELD_IDENTITIES = 2


@dataclass
class Tuned:
    per_dataset: Dict[str, float]  # thresholds of the datasets with train images
    overall: float  # best on average over those datasets: for datasets without train images
    curves: Dict[str, List[float]]  # validation ARI per threshold of the grid, per dataset
    images: int  # validation images, all splits together

    def best_ari(self, per_dataset: bool) -> float:
        """Validation ARI at the chosen thresholds: each dataset at its own, or all at one."""
        curves = np.array(list(self.curves.values()))
        return float(curves.max(axis=1).mean() if per_dataset else curves.mean(axis=0).max())


def anchor_codes(labels: np.ndarray) -> np.ndarray:
    """Identity code per node, -1 where there is no identity."""
    codes, _ = pd.factorize(pd.Series(labels, dtype=object))
    return codes.astype(np.int64)


@dataclass
class ClusterThresholds:
    """The threshold each dataset is clustered at, and where it comes from (the report and the files show it)."""

    method: str  # cluster.method
    source: str
    overall: float
    per_dataset: Dict[str, float] = field(default_factory=dict)
    validation_ari: Optional[Dict[str, List[float]]] = None  # per dataset (and "all"): ARI along the grid
    grid: Optional[List[float]] = None
    matcher_weight: Optional[Dict[str, Any]] = None  # chosen, and the validation ARI of each weight
    transferred: List[str] = field(default_factory=list)  # datasets that took the overall threshold

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"method": self.method, "per_dataset": self.per_dataset, "source": self.source,
                               "overall": self.overall}
        if self.validation_ari is not None:
            out.update(validation_ari=self.validation_ari, grid=self.grid)
        if self.matcher_weight is not None:
            out["matcher_weight"] = self.matcher_weight
        out["transferred"] = self.transferred
        return out


def held_out_split(gallery: pd.DataFrame, cluster: ClusterConfig, seed: int) -> np.ndarray:
    """Positions (in `gallery`) of the validation images of one simulated test."""
    held = []
    for dataset, part in gallery.groupby("dataset", sort=True):
        identities = sorted(part["identity"].unique())
        if len(identities) < MIN_HELD_IDENTITIES:
            continue
        wanted = min(max(MIN_HELD_IDENTITIES, round(cluster.holdout_fraction * len(identities))), len(identities))
        rng = np.random.default_rng([seed, zlib.crc32(str(dataset).encode())])
        held.append(part[part["identity"].isin(set(rng.permutation(identities)[:wanted]))])
    if not held:
        raise DataError("no dataset has two train identities to simulate the test on: set cluster.threshold")
    split = open_set_split(pd.concat(held), unknown_fraction=cluster.unknown_fraction, query_fraction=0.5, seed=seed)
    queries = set(split.loc[split["split"] == "query", "image_id"])
    return np.flatnonzero(gallery["image_id"].isin(queries).to_numpy())


def best_of_curve(curve: Sequence[float], grid: Sequence[float]) -> float:
    """The middle threshold of the longest run of best values (robust to plateaus)."""
    values = np.asarray(curve, dtype=np.float64)
    best = np.isclose(values, values.max(), rtol=0, atol=1e-9)
    bounds = np.diff(np.concatenate([[0], best.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(bounds == 1), np.flatnonzero(bounds == -1) - 1
    i = int(np.argmax(stops - starts))
    return float(grid[(starts[i] + stops[i]) // 2])


def tune_thresholds(cfg: EvalConfig, scorers: Sequence[Scorer], space: MatchSpace, gallery: pd.DataFrame,
                    clusterer: Clusterer, weightings: Optional[Sequence[Sequence[float]]] = None) -> List[Tuned]:
    """Fit the calibrators and tune the thresholds on held-out train identities (see the module doc),
    once per weighting (a soft-voting weight per scorer; by default the scorers' own). The graph
    over the train images and its edges' calibrated scores do not depend on the split or on the
    weights: they are computed once."""
    grid = sorted(cfg.cluster.grid)
    n_gallery = len(gallery)
    splits = [held_out_split(gallery, cfg.cluster, cfg.seed + s) for s in range(cfg.cluster.splits)]
    fit_calibrators(scorers, space, np.setdiff1d(np.arange(n_gallery), splits[0]), cfg.calibration, cfg.seed,
                    cfg.rerank.shortlist)
    a, b = graph_edges(scorers, space, np.arange(n_gallery), cfg.cluster.neighbours)
    scores = edge_scores(scorers, space, a, b) if len(a) else [np.zeros(0)] * len(scorers)
    codes = anchor_codes(space.labels[:n_gallery])
    out = []
    for weights in weightings or [[s.weight for s in scorers]]:
        graph = Graph(n_gallery, a, b, fused_probabilities(scores, weights, len(a)))  # node e is row e
        sums: Dict[str, np.ndarray] = {}
        seen: Dict[str, int] = {}
        for val_q in splits:
            anchors = np.where(np.isin(np.arange(n_gallery), val_q), -1, codes)
            if not cfg.cluster.anchors:
                anchors = np.full(n_gallery, -1)
            for dataset in sorted(set(space.datasets[val_q].tolist())):
                members = np.flatnonzero(space.datasets[:n_gallery] == dataset)
                labelled = np.isin(members, val_q)
                found = clusterer.labels(graph.subgraph(members), anchors[members], grid)
                truth = space.labels[members][labelled].astype(str)
                curve = np.array([adjusted_rand_score(truth, labels[labelled]) for labels in found])
                sums[dataset] = sums.get(dataset, 0) + curve
                seen[dataset] = seen.get(dataset, 0) + 1
        curves = {d: (sums[d] / seen[d]).tolist() for d in sorted(sums)}
        per_dataset = {d: best_of_curve(c, grid) for d, c in curves.items()}
        overall = best_of_curve(np.mean([curves[d] for d in curves], axis=0), grid)
        out.append(Tuned(per_dataset, overall, curves, sum(len(v) for v in splits)))
    return out


def tune(cfg: EvalConfig, scorers: Sequence[Scorer], space: MatchSpace, gallery: pd.DataFrame,
         clusterer: Clusterer) -> Tuple[Tuned, Optional[Dict[str, Any]]]:
    """The thresholds, and with a keypoint matcher its weight (see the module doc): (tuned, the
    weight's record or None)."""
    matchers = [s for s in scorers if s.kind == "matcher"]
    if not matchers or not cfg.rerank.tune_weight:
        return tune_thresholds(cfg, scorers, space, gallery, clusterer)[0], None
    options = sorted({*MATCHER_WEIGHTS, cfg.rerank.weight})
    weightings = [[w if s.kind == "matcher" else s.weight for s in scorers] for w in options]
    tried = dict(zip(options, tune_thresholds(cfg, scorers, space, gallery, clusterer, weightings), strict=True))
    per_dataset = cfg.cluster.per_dataset
    best = max(tried, key=lambda w: (round(tried[w].best_ari(per_dataset), 9), w == cfg.rerank.weight))
    for matcher in matchers:
        matcher.weight = best
    return tried[best], {"chosen": best, "validation_ari": {str(w): round(t.best_ari(per_dataset), 6)
                                                           for w, t in tried.items()}}

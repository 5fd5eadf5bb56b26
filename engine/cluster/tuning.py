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
Before the weight, each of the matcher's options (a keypoint weighting on or off, the geometry)
is chosen the same way, one after the other: its first value unless another raises the
validation criterion by OPTION_MARGIN, as the query pipeline chooses them. An option changes the
matcher's raw scores, so each value tried is calibrated and its edges scored again.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from core.errors import DataError
from core.schema import ClusterConfig, EvalConfig
from core.schema_rules import SAME_CRITERION
from data.splits import open_set_split
from engine.cluster.bootstrap import Replicates, ValidationPart, replicates
from engine.cluster.criteria import CRITERIA
from engine.cluster.criteria import codes as criteria_codes
from engine.cluster.graph import Graph, edge_scores, fused_probabilities, graph_edges
from engine.cluster.methods import Clusterer
from engine.cluster.search import MEAN, Search, widened_search
from engine.scoring.scorers import MatchSpace, Scorer
from engine.scoring.voting import fit_calibrators
from engine.scoring.weights import MATCHER_WEIGHTS, OPTION_MARGIN

MIN_HELD_IDENTITIES = 2


@dataclass
class Optimum:
    """The thresholds one criterion chose on the held-out validation."""

    criterion: str  # a registered cluster_criterion
    per_dataset: Dict[str, float]  # thresholds of the datasets with train images
    overall: float  # best on average over those datasets: for datasets without train images
    search: Search  # the criterion along the (widened) grid, per dataset

    def chosen(self) -> Dict[str, float]:
        return {**self.per_dataset, MEAN: self.overall}


@dataclass
class Tuned:
    partition: Optimum  # cluster.criterion: the clusters written
    count: Optimum  # cluster.count_criterion: the population estimate's threshold
    images: int  # validation images, all splits together
    parts: List[ValidationPart] = field(default_factory=list)  # what the curves were scored on
    graph: Optional[Graph] = None  # the train images' graph (node e is train row e), at the weights tuned

    @property
    def per_dataset(self) -> Dict[str, float]:
        return self.partition.per_dataset

    @property
    def overall(self) -> float:
        return self.partition.overall

    @property
    def search(self) -> Search:
        return self.partition.search

    @property
    def criterion(self) -> str:
        return self.partition.criterion

    @property
    def curves(self) -> Dict[str, List[float]]:
        return self.partition.search.curves

    def replicates(self, optimum: Optimum, seed: int) -> Replicates:
        """What the validation could as well have chosen for `optimum`, and the count errors (bootstrap.py)."""
        return replicates(self.parts, optimum.search.grid, optimum.chosen(), CRITERIA.build(optimum.criterion), seed)

    def best_score(self, per_dataset: bool) -> float:
        """The validation criterion at the chosen thresholds: each dataset at its own, or all at one."""
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
    criterion: str = "ari"  # cluster.criterion: what `validation` holds
    validation: Optional[Dict[str, List[float]]] = None  # per dataset: the criterion along the searched grid
    grid: Optional[List[float]] = None  # every threshold the search tried, ascending
    ends: Dict[str, str] = field(default_factory=dict)  # curves whose best is an end of the searched range
    matcher_weight: Optional[Dict[str, Any]] = None  # chosen, and the validation criterion of each weight
    transferred: List[str] = field(default_factory=list)  # datasets without their own tuned threshold
    choices: Dict[str, Any] = field(default_factory=dict)  # per dataset: its ThresholdChoice (assign.py)

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"method": self.method, "per_dataset": self.per_dataset, "source": self.source,
                               "overall": self.overall}
        if self.validation is not None:
            out.update(criterion=self.criterion, validation=self.validation, grid=self.grid, at_search_end=self.ends)
        if self.matcher_weight is not None:
            out["matcher_weight"] = self.matcher_weight
        out["transferred"] = self.transferred
        if self.choices:
            out["set_by"] = {d: c.to_dict() for d, c in sorted(self.choices.items())}
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


def tune_thresholds(cfg: EvalConfig, scorers: Sequence[Scorer], space: MatchSpace, gallery: pd.DataFrame,
                    clusterer: Clusterer, weightings: Optional[Sequence[Sequence[float]]] = None) -> List[Tuned]:
    """Fit the calibrators and tune the thresholds on held-out train identities (see the module doc),
    once per weighting (a soft-voting weight per scorer; by default the scorers' own). The graph
    over the train images and its edges' calibrated scores do not depend on the split or on the
    weights: they are computed once."""
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
        parts = list(_validation_parts(cfg.cluster.anchors, graph, space, codes, splits))
        records = [ValidationPart(dataset, criteria_codes(truth), {}) for dataset, _, _, _, truth in parts]
        partition = _optimum(cfg.cluster.criterion, parts, records, clusterer, cfg.cluster.grid)
        count = (partition if cfg.cluster.count_criterion in (SAME_CRITERION, cfg.cluster.criterion)
                 else _optimum(cfg.cluster.count_criterion, parts, records, clusterer, cfg.cluster.grid))
        out.append(Tuned(partition, count, sum(len(v) for v in splits), records, graph))
    return out


def _optimum(name: str, parts: List[tuple], records: List[ValidationPart], clusterer: Clusterer,
             grid: Sequence[float]) -> Optimum:
    """The thresholds criterion `name` chooses; the validation images are clustered once per threshold
    (`records` keep what earlier searches found)."""
    criterion = CRITERIA.build(name)

    def evaluate(thresholds: List[float]) -> Dict[str, np.ndarray]:
        sums: Dict[str, np.ndarray] = {}
        seen: Dict[str, int] = {}
        for (dataset, subgraph, anchors, labelled, _), record in zip(parts, records, strict=True):
            missing = [t for t in thresholds if t not in record.found]
            found = clusterer.labels(subgraph, anchors, missing) if missing else []
            record.found.update({t: labels[labelled] for t, labels in zip(missing, found, strict=True)})
            curve = np.array([criterion.score(record.truth, record.found[t]) for t in thresholds])
            sums[dataset] = sums.get(dataset, 0) + curve
            seen[dataset] = seen.get(dataset, 0) + 1
        return {d: sums[d] / seen[d] for d in sorted(sums)}

    search = widened_search(evaluate, grid)
    return Optimum(name, {d: criterion.choose(c, search.grid) for d, c in search.curves.items()},
                   criterion.choose(search.mean(), search.grid), search)


def _validation_parts(anchored: bool, graph: Graph, space: MatchSpace, codes: np.ndarray,
                      splits: Sequence[np.ndarray]) -> Iterator[tuple]:
    """(dataset, its subgraph, anchors, which of its nodes are validation images, their identities)
    per split and dataset: what each threshold is scored on."""
    n_gallery = graph.n
    for val_q in splits:
        anchors = np.where(np.isin(np.arange(n_gallery), val_q), -1, codes) if anchored else np.full(n_gallery, -1)
        for dataset in sorted(set(space.datasets[val_q].tolist())):
            members = np.flatnonzero(space.datasets[:n_gallery] == dataset)
            labelled = np.isin(members, val_q)
            yield dataset, graph.subgraph(members), anchors[members], labelled, space.labels[members][labelled].astype(str)


def tune(cfg: EvalConfig, scorers: Sequence[Scorer], space: MatchSpace, gallery: pd.DataFrame,
         clusterer: Clusterer) -> Tuple[Tuned, Optional[Dict[str, Any]]]:
    """The thresholds, and with a keypoint matcher its weight (see the module doc): (tuned, the
    weight's record or None)."""
    matchers = [s for s in scorers if s.kind == "matcher"]
    if not matchers or not cfg.rerank.tune_weight:
        return tune_thresholds(cfg, scorers, space, gallery, clusterer)[0], None
    per_dataset = cfg.cluster.per_dataset
    chosen_options = {}
    for matcher in matchers:
        seen: Dict[tuple, float] = {}  # each setting of all the matcher's options tuned so far
        for option, values in matcher.options().items():
            tried_values = {}
            for value in values:
                matcher.set_option(option, value)
                setting = tuple(sorted(matcher.option_values().items()))
                if setting not in seen:
                    seen[setting] = tune_thresholds(cfg, scorers, space, gallery, clusterer)[0].best_score(per_dataset)
                tried_values[value] = seen[setting]
            better = [v for v in values[1:] if tried_values[v] >= tried_values[values[0]] + OPTION_MARGIN]
            best_value = max(better, key=lambda v: (tried_values[v], -list(values).index(v))) if better else values[0]
            matcher.set_option(option, best_value)
            chosen_options[option] = {"chosen": best_value,
                                      "validation": {str(v): round(c, 6) for v, c in tried_values.items()}}
    options = sorted({*MATCHER_WEIGHTS, cfg.rerank.weight})
    weightings = [[w if s.kind == "matcher" else s.weight for s in scorers] for w in options]
    tried = dict(zip(options, tune_thresholds(cfg, scorers, space, gallery, clusterer, weightings), strict=True))
    best = max(tried, key=lambda w: (round(tried[w].best_score(per_dataset), 9), w == cfg.rerank.weight))
    for matcher in matchers:
        matcher.weight = best
    record = {"chosen": best, "criterion": cfg.cluster.criterion,
              "validation": {str(w): round(t.best_score(per_dataset), 6) for w, t in tried.items()}}
    if chosen_options:
        record["options"] = chosen_options
    return tried[best], record

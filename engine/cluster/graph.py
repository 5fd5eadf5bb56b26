"""The sparse similarity graph clustering works on: faiss k-nearest neighbours of every image under
every global scorer (within its dataset), each distinct pair once, then every scorer's calibrated
score of every edge, soft-voted into P(same individual).

Memory is O(N k): the graph is three arrays of about N x k x (global scorers) entries, never a
dense N x N matrix. Edge scores go through the scorers' `pair_scores` seam
(engine/scoring/scorers.py), so a shortlist scorer (keypoint matcher, Siamese pair head) scores
the graph's edges exactly as it scores a query's shortlist, with its caches and process split.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from core.schema import RetrievalConfig
from engine.retrieval import build_index, exact_search, l2_normalize, search
from engine.scoring.scorers import MatchSpace, Scorer


@dataclass
class Graph:
    """Edges (i[e], j[e]) between node indices 0..n-1 (i < j), with P(same individual) `p`, and each
    scorer's own calibrated score of each edge where it was computed (NaN: a scorer of weight 0)."""

    n: int
    i: np.ndarray
    j: np.ndarray
    p: np.ndarray
    by_scorer: Optional[np.ndarray] = None  # (edges, scorers), in the order of the scorers voting

    def subgraph(self, nodes: np.ndarray) -> Graph:
        """The graph induced on `nodes` (sorted node indices), renumbered 0..len(nodes)-1."""
        position = np.full(self.n, -1, np.int64)
        position[nodes] = np.arange(len(nodes))
        keep = (position[self.i] >= 0) & (position[self.j] >= 0)
        return Graph(len(nodes), position[self.i[keep]], position[self.j[keep]], self.p[keep],
                     None if self.by_scorer is None else self.by_scorer[keep])


def unique_pairs(a: np.ndarray, b: np.ndarray) -> tuple:
    """Distinct unordered pairs (min, max) of a[e], b[e], self-pairs dropped, sorted."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    low, high = np.minimum(a, b), np.maximum(a, b)
    keep = low != high
    pairs = np.unique(np.stack([low[keep], high[keep]], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def knn_pairs(embeddings: np.ndarray, nodes: np.ndarray, k: int, retrieval: RetrievalConfig) -> tuple:
    """(a, b): each node's k nearest other nodes by cosine (faiss; `retrieval.index` for large sets)."""
    if len(nodes) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    x = l2_normalize(embeddings[nodes])
    width = min(k + 1, len(nodes))
    if retrieval.index == "flat":
        _, found = exact_search(x, x, width)
    else:
        _, found = search(build_index(x, retrieval), x, width)
    a = np.repeat(nodes, width)
    b = np.where(found >= 0, nodes[np.maximum(found, 0)], -1).ravel()
    keep = b >= 0
    return a[keep], b[keep]


def graph_edges(scorers: Sequence[Scorer], space: MatchSpace, nodes: np.ndarray, k: int) -> tuple:
    """The distinct pairs among `nodes` (row indices of the space) that any global scorer with an
    embedding puts among an image's k nearest neighbours, within each dataset."""
    found_a, found_b = [], []
    for scorer in scorers:
        embeddings = getattr(scorer.output, "embeddings", None) if scorer.stage == "global" else None
        if embeddings is None:
            continue
        for dataset in sorted(set(space.datasets[nodes].tolist())):
            members = nodes[space.datasets[nodes] == dataset]
            a, b = knn_pairs(embeddings, members, k, space.retrieval)
            found_a.append(a)
            found_b.append(b)
    if not found_a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return unique_pairs(np.concatenate(found_a), np.concatenate(found_b))


def vote_weights(weights: Sequence[float]) -> np.ndarray:
    """Soft-voting weights summing to 1 (equal ones when none is positive)."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.sum() <= 0:
        weights = np.ones(len(weights))
    return weights / weights.sum()


def edge_scores(scorers: Sequence[Scorer], space: MatchSpace, a: np.ndarray, b: np.ndarray,
                needed: Optional[Sequence[bool]] = None) -> List[Optional[np.ndarray]]:
    """Each scorer's calibrated score of each pair (a[e], b[e]); None for scorers not `needed`."""
    return [scorer.calibrator(scorer.pair_scores(space, a, b)) if needed is None or needed[k] else None
            for k, scorer in enumerate(scorers)]


def fused_probabilities(scores: Sequence[Optional[np.ndarray]], weights: Sequence[float], edges: int) -> np.ndarray:
    """The scorers' calibrated edge scores averaged with `weights` (scorers of weight 0 left out)."""
    fused = np.zeros(edges)
    for score, weight in zip(scores, vote_weights(weights), strict=True):
        if weight > 0:
            fused += weight * score
    return fused


def edge_probabilities(scorers: Sequence[Scorer], space: MatchSpace, a: np.ndarray,
                       b: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """P(same individual) of each pair (a[e], b[e]): every scorer's calibrated score, averaged with
    the scorers' weights (the soft vote of the query pipeline, on pairs); and the (edges, scorers)
    calibrated scores it averaged (NaN for scorers of weight 0, not computed)."""
    by_scorer = np.full((len(a), len(scorers)), np.nan)
    if len(a) == 0:
        return np.zeros(0), by_scorer
    weights = vote_weights([s.weight for s in scorers])
    scores = edge_scores(scorers, space, a, b, weights > 0)
    for k, score in enumerate(scores):
        if score is not None:
            by_scorer[:, k] = score
    return fused_probabilities(scores, weights, len(a)), by_scorer


def build_graph(scorers: Sequence[Scorer], space: MatchSpace, nodes: np.ndarray, k: int) -> Graph:
    """The graph over `nodes` (sorted row indices), its node e standing for row nodes[e]."""
    a, b = graph_edges(scorers, space, nodes, k)
    p, by_scorer = edge_probabilities(scorers, space, a, b)
    position = np.full(int(nodes.max()) + 1 if len(nodes) else 0, -1, np.int64)
    position[nodes] = np.arange(len(nodes))
    return Graph(len(nodes), position[a], position[b], p, by_scorer)


def raw_similarity(scorers: Sequence[Scorer], space: MatchSpace, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The mean raw score of the pairs (a[e], b[e]) under the embedding scorers (a cosine each):
    what a dataset's own score distribution is read from, before any calibration."""
    found = [s.pair_scores(space, a, b) for s in scorers if s.kind == "embedding"]
    return np.mean(found, axis=0) if found and len(a) else np.zeros(len(a))

"""Clustering methods over the sparse P(same individual) graph, one registered class each.

Every method takes the graph, the anchors (one identity code per node, -1 for an image to cluster)
and a list of thresholds, and returns one label array per threshold. Anchors are the labelled
train images: the images of one identity always share a cluster, two identities never do, and an
image to cluster joins an identity's cluster only through edges whose probability passes the
threshold: the open-set decision of the query pipeline ("known when its calibrated probability
reaches the threshold"), made on the graph.

* `agglomerative`: average linkage on 1 - P over the graph: two clusters merge, best first, while
  the mean P of the graph's edges between them is at least the threshold. Pairs the k-NN graph does
  not hold are unobserved, not "different" (a dense N x N matrix is what the graph avoids). Every
  threshold is read off one pass (the merge heights).
* `components`: the threshold graph (edges with P >= threshold), connected components, with a
  minimum-edge rule against chaining (`min_edges` = m: an edge counts only if m - 1 triangles of
  such edges support it, so one stray edge cannot join two individuals); anchors of two identities
  are never joined (edges are added strongest first, refusing those).
* `leiden`: community detection with the Leiden algorithm (leidenalg, igraph) on the constant
  Potts model, resolution = threshold: a community's edges must average more than the resolution
  per pair of its members; anchors' memberships are fixed to their identity.
"""
from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from typing import Dict, List, Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from core.errors import ConfigError
from core.registry import Registry
from engine.cluster.graph import Graph

CLUSTERERS = Registry("clusterer", name_attribute="name")


def _canonical(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0, 1, ... in order of first appearance (equal partitions, equal arrays)."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse].astype(np.int64)


class Clusterer(ABC):
    name = ""  # the registered name

    @abstractmethod
    def labels(self, graph: Graph, anchors: np.ndarray, thresholds: Sequence[float]) -> List[np.ndarray]:
        """One (n,) label array per threshold."""


class _UnionFind:
    """Disjoint sets with the identity code of each set's anchors (-1: none), for the constraint."""

    def __init__(self, anchors: np.ndarray):
        self.parent = list(range(len(anchors)))
        self.code = [int(c) for c in anchors]
        by_code: Dict[int, int] = {}
        for node, code in enumerate(self.code):
            if code >= 0:
                self.parent[node] = by_code.setdefault(code, node)

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> bool:
        """Join the sets of a and b unless they hold anchors of two identities; True when joined."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        ca, cb = self.code[ra], self.code[rb]
        if ca >= 0 and cb >= 0:
            return False
        self.parent[rb] = ra
        self.code[ra] = max(ca, cb)
        return True

    def labels(self) -> np.ndarray:
        return _canonical(np.array([self.find(x) for x in range(len(self.parent))]))


@CLUSTERERS.register("agglomerative")
class Agglomerative(Clusterer):
    """Average linkage over the sparse graph (see the module doc)."""

    def merges(self, graph: Graph, anchors: np.ndarray, lowest: float) -> List[tuple]:
        """(height, a, b) of every merge down to `lowest`, in order: a heap of cluster pairs keyed by
        their mean edge probability, pairs re-keyed as clusters merge (lazy deletion by version)."""
        sets = _UnionFind(anchors)
        root = [sets.find(x) for x in range(graph.n)]
        total: Dict[int, Dict[int, float]] = {}
        count: Dict[int, Dict[int, int]] = {}
        for a, b, p in zip(graph.i.tolist(), graph.j.tolist(), graph.p.tolist(), strict=True):
            ra, rb = root[a], root[b]
            if ra == rb:
                continue
            for x, y in ((ra, rb), (rb, ra)):
                total.setdefault(x, {})[y] = total.get(x, {}).get(y, 0.0) + p
                count.setdefault(x, {})[y] = count.get(x, {}).get(y, 0) + 1
        code = {r: sets.code[r] for r in set(root)}
        version = {r: 0 for r in set(root)}
        heap = [(-total[x][y] / count[x][y], x, y, 0, 0) for x in total for y in total[x] if x < y]
        heapq.heapify(heap)
        out = []
        while heap:
            negative, x, y, vx, vy = heapq.heappop(heap)
            if -negative < lowest:
                break
            if version.get(x) != vx or version.get(y) != vy:
                continue  # a stale entry: one of the two merged since
            if code[x] >= 0 and code[y] >= 0:
                continue  # two identities' anchors never merge
            out.append((-negative, x, y))
            # merge y into x: sum the edge statistics of their neighbours
            tx, cx = total.setdefault(x, {}), count.setdefault(x, {})
            for z, value in total.pop(y, {}).items():
                n = count[y][z]
                del total[z][y], count[z][y]
                if z == x:
                    continue
                tx[z] = tx.get(z, 0.0) + value
                cx[z] = cx.get(z, 0) + n
                total[z][x], count[z][x] = tx[z], cx[z]
            count.pop(y, None)
            tx.pop(y, None), cx.pop(y, None)
            code[x] = max(code[x], code.pop(y))
            version.pop(y)
            version[x] += 1
            for z in tx:
                a, b = (x, z) if x < z else (z, x)
                heapq.heappush(heap, (-tx[z] / cx[z], a, b, version[a], version[b]))
        return out

    def labels(self, graph, anchors, thresholds):
        thresholds = list(thresholds)
        merges = self.merges(graph, anchors, min(thresholds)) if thresholds else []
        results = []
        for t in thresholds:
            sets = _UnionFind(anchors)
            for height, x, y in merges:
                if height < t:
                    break
                sets.union(x, y)
            results.append(sets.labels())
        return results


@CLUSTERERS.register("components")
class Components(Clusterer):
    """Connected components of the threshold graph with a minimum-edge rule (see the module doc)."""

    def __init__(self, min_edges: int = 1):
        if int(min_edges) < 1:
            raise ConfigError(f"clusterer 'components': min_edges must be >= 1, got {min_edges}")
        self.min_edges = int(min_edges)

    def _kept(self, graph: Graph, t: float) -> np.ndarray:
        keep = graph.p >= t
        if self.min_edges <= 1 or not keep.any():
            return keep
        i, j = graph.i[keep], graph.j[keep]
        adjacency = coo_matrix((np.ones(len(i)), (i, j)), shape=(graph.n, graph.n)).tocsr()
        adjacency = adjacency + adjacency.T
        triangles = (adjacency @ adjacency).multiply(adjacency).tocsr()  # common neighbours of each kept edge
        support = np.asarray(triangles[i, j]).ravel()
        kept = np.zeros(len(graph.p), bool)
        kept[np.flatnonzero(keep)] = support >= self.min_edges - 1
        return kept

    def labels(self, graph, anchors, thresholds):
        results = []
        anchored = (np.asarray(anchors) >= 0).any()
        for t in thresholds:
            kept = self._kept(graph, t)
            if not anchored:  # no constraint: scipy's connected components
                matrix = coo_matrix((np.ones(int(kept.sum())), (graph.i[kept], graph.j[kept])), shape=(graph.n, graph.n))
                results.append(_canonical(connected_components(matrix, directed=False)[1]))
                continue
            sets = _UnionFind(anchors)
            order = np.flatnonzero(kept)[np.argsort(-graph.p[kept], kind="stable")]
            for a, b in zip(graph.i[order].tolist(), graph.j[order].tolist(), strict=True):
                sets.union(a, b)
            results.append(sets.labels())
        return results


@CLUSTERERS.register("leiden")
class Leiden(Clusterer):
    """Leiden communities under the constant Potts model (see the module doc); needs
    `pip install -e ".[cluster]"` (igraph, leidenalg)."""

    def __init__(self, iterations: int = -1, seed: int = 0):
        self.iterations = int(iterations)
        self.seed = int(seed)

    def labels(self, graph, anchors, thresholds):
        try:
            import igraph
            import leidenalg
        except ImportError as err:
            raise ConfigError(f"cluster.method=leiden needs igraph and leidenalg: pip install -e \".[cluster]\" ({err})") from err
        anchors = np.asarray(anchors)
        g = igraph.Graph(n=graph.n, edges=np.stack([graph.i, graph.j], axis=1).tolist())
        g.es["weight"] = graph.p.tolist()
        start = _UnionFind(anchors).labels()  # each identity's anchors together, the others alone
        fixed = (anchors >= 0).tolist()
        results = []
        for t in thresholds:
            partition = leidenalg.CPMVertexPartition(g, initial_membership=start.tolist(), weights="weight",
                                                     resolution_parameter=float(t))
            optimiser = leidenalg.Optimiser()
            optimiser.set_rng_seed(self.seed)
            optimiser.optimise_partition(partition, n_iterations=self.iterations, is_membership_fixed=fixed)
            results.append(_canonical(np.asarray(partition.membership)))
        return results

"""Clustering methods over the sparse P(same individual) graph, one registered class each.

Every method takes the graph, the anchors (one identity code per node, -1 for an image to cluster)
and a list of thresholds, and returns one label array per threshold. Anchors are the labelled
train images: the images of one identity always share a cluster, two identities never do, and an
image to cluster joins an identity's cluster only through edges whose probability passes the
threshold: the open-set decision of the query pipeline ("known when its calibrated probability
reaches the threshold"), made on the graph. Pair constraints (a person's answers: must-link,
cannot-link; engine/cluster/constraints.py) are honoured the same way: every method joins nodes
only through `ConstrainedSets`, so a must-linked pair always shares a cluster and a cannot-linked
pair (and the sets around it) never does.

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
from typing import Dict, List, Optional, Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from core.errors import ConfigError
from core.registry import Registry
from engine.cluster.constraints import ConstrainedSets, PairConstraints, canonical
from engine.cluster.graph import Graph

CLUSTERERS = Registry("clusterer", name_attribute="name")


class Clusterer(ABC):
    name = ""  # the registered name

    @abstractmethod
    def labels(self, graph: Graph, anchors: np.ndarray, thresholds: Sequence[float],
               constraints: Optional[PairConstraints] = None) -> List[np.ndarray]:
        """One (n,) label array per threshold."""


@CLUSTERERS.register("agglomerative")
class Agglomerative(Clusterer):
    """Average linkage over the sparse graph (see the module doc)."""

    def merges(self, graph: Graph, anchors: np.ndarray, lowest: float,
               constraints: Optional[PairConstraints] = None) -> List[tuple]:
        """(height, a, b) of every merge down to `lowest`, in order: a heap of cluster pairs keyed by
        their mean edge probability, pairs re-keyed as clusters merge (lazy deletion by version)."""
        sets = ConstrainedSets(anchors, constraints)
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
            if not sets.union(x, y):
                continue  # two identities' anchors, or a cannot-link, keep them apart
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
            version.pop(y)
            version[x] += 1
            for z in tx:
                a, b = (x, z) if x < z else (z, x)
                heapq.heappush(heap, (-tx[z] / cx[z], a, b, version[a], version[b]))
        return out

    def labels(self, graph, anchors, thresholds, constraints=None):
        thresholds = list(thresholds)
        if not thresholds:
            return []
        merges = self.merges(graph, anchors, min(thresholds), constraints)
        # Merge heights never rise (an average of averages no higher than the last merge), so the
        # clusters at a threshold are those of the merges down to it: one pass from the highest
        # threshold down serves them all.
        sets = ConstrainedSets(anchors, constraints)
        found, done = {}, 0
        for t in sorted(set(thresholds), reverse=True):
            while done < len(merges) and merges[done][0] >= t:
                sets.union(merges[done][1], merges[done][2])
                done += 1
            found[t] = sets.labels()
        return [found[t] for t in thresholds]


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

    def labels(self, graph, anchors, thresholds, constraints=None):
        results = []
        anchored = (np.asarray(anchors) >= 0).any() or bool(constraints)
        for t in thresholds:
            kept = self._kept(graph, t)
            if not anchored:  # no constraint: scipy's connected components
                matrix = coo_matrix((np.ones(int(kept.sum())), (graph.i[kept], graph.j[kept])), shape=(graph.n, graph.n))
                results.append(canonical(connected_components(matrix, directed=False)[1]))
                continue
            sets = ConstrainedSets(anchors, constraints)
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

    def labels(self, graph, anchors, thresholds, constraints=None):
        try:
            import igraph
            import leidenalg
        except ImportError as err:
            raise ConfigError(f"cluster.method=leiden needs igraph and leidenalg: pip install -e \".[cluster]\" ({err})") from err
        anchors = np.asarray(anchors)
        if constraints:
            return self._constrained(graph, anchors, thresholds, constraints)
        g = igraph.Graph(n=graph.n, edges=np.stack([graph.i, graph.j], axis=1).tolist())
        g.es["weight"] = graph.p.tolist()
        start = ConstrainedSets(anchors).labels()  # each identity's anchors together, the others alone
        fixed = (anchors >= 0).tolist()
        return [canonical(self._optimised(leidenalg, g, start, fixed, t)) for t in thresholds]

    def _optimised(self, leidenalg, g, start: np.ndarray, fixed: list, t: float, sizes=None) -> np.ndarray:
        partition = leidenalg.CPMVertexPartition(g, initial_membership=start.tolist(), weights="weight",
                                                 node_sizes=sizes, resolution_parameter=float(t))
        optimiser = leidenalg.Optimiser()
        optimiser.set_rng_seed(self.seed)
        optimiser.optimise_partition(partition, n_iterations=self.iterations, is_membership_fixed=fixed)
        return np.asarray(partition.membership)

    def _constrained(self, graph: Graph, anchors: np.ndarray, thresholds, constraints: PairConstraints) -> list:
        """Must-linked images (and each identity's anchors) contracted into one node, weighted by its
        size in the Potts model, so no move can part them; a community holding a cannot-linked pair
        is then split by joining its edges strongest first through ConstrainedSets."""
        import igraph
        import leidenalg

        groups = ConstrainedSets(anchors, PairConstraints(must=constraints.must)).labels()
        count = int(groups.max()) + 1 if len(groups) else 0
        across = groups[graph.i] != groups[graph.j]
        a, b = groups[graph.i[across]], groups[graph.j[across]]
        low, high = np.minimum(a, b), np.maximum(a, b)
        merged = coo_matrix((graph.p[across], (low, high)), shape=(count, count)).tocsr().tocoo()  # sums repeated pairs
        g = igraph.Graph(n=count, edges=np.stack([merged.row, merged.col], axis=1).tolist())
        g.es["weight"] = merged.data.tolist()
        sizes = np.bincount(groups, minlength=count).tolist()
        code = np.full(count, -1, np.int64)
        np.maximum.at(code, groups, anchors)  # a group's anchor code, where one of its images has one
        order = np.argsort(-graph.p, kind="stable")
        results = []
        for t in thresholds:
            community = self._optimised(leidenalg, g, np.arange(count), (code >= 0).tolist(), t, sizes)[groups]
            sets = ConstrainedSets(anchors, constraints)
            inside = order[community[graph.i[order]] == community[graph.j[order]]]
            for x, y in zip(graph.i[inside].tolist(), graph.j[inside].tolist(), strict=True):
                sets.union(x, y)
            results.append(sets.labels())
        return results

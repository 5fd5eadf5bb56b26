"""What a clusterer must respect besides the graph: anchors (train images of known identities),
must-links (two images of one individual) and cannot-links (two images of two individuals).

`ConstrainedSets` is the one union-find every clusterer joins nodes through: a set carries the
identity code of its anchors (-1: none) and the sets it may never join. A must-link is a union
made before any edge is looked at; a cannot-link between two nodes holds between their whole
sets, and keeps holding as either set grows. A union that would break a constraint is refused
(returns False), so a clusterer that joins only through `union` honours every constraint.
A must-link that contradicts the anchors or a cannot-link is refused too: contradictions are the
caller's to settle before clustering (engine/review shows them to the reviewer).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Set

import numpy as np


def _pairs(values=None) -> np.ndarray:
    return np.zeros((0, 2), np.int64) if values is None else np.asarray(values, np.int64).reshape(-1, 2)


@dataclass
class PairConstraints:
    """Node pairs (rows of (m, 2) arrays) that must share a cluster, and that must not."""

    must: np.ndarray = field(default_factory=_pairs)
    cannot: np.ndarray = field(default_factory=_pairs)

    def __post_init__(self):
        self.must, self.cannot = _pairs(self.must), _pairs(self.cannot)

    def __bool__(self) -> bool:
        return bool(len(self.must) or len(self.cannot))

    def subset(self, nodes: np.ndarray, n: int) -> PairConstraints:
        """The constraints among `nodes` (sorted node indices of a graph of n nodes), renumbered
        0..len(nodes)-1 as Graph.subgraph renumbers them."""
        position = np.full(n, -1, np.int64)
        position[nodes] = np.arange(len(nodes))

        def inside(pairs: np.ndarray) -> np.ndarray:
            mapped = position[pairs] if len(pairs) else pairs
            return mapped[(mapped >= 0).all(axis=1)] if len(mapped) else mapped

        return PairConstraints(inside(self.must), inside(self.cannot))


class ConstrainedSets:
    """Disjoint sets over n nodes under anchors and pair constraints (see the module doc)."""

    def __init__(self, anchors: np.ndarray, constraints: Optional[PairConstraints] = None):
        self.parent = list(range(len(anchors)))
        self.code = [int(c) for c in anchors]
        self.apart: Dict[int, Set[int]] = {}  # root -> roots it may never join
        by_code: Dict[int, int] = {}
        for node, code in enumerate(self.code):
            if code >= 0:
                self.parent[node] = by_code.setdefault(code, node)
        if constraints:
            for a, b in constraints.cannot.tolist():
                self.forbid(a, b)
            for a, b in constraints.must.tolist():
                self.union(a, b)

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def forbid(self, a: int, b: int) -> bool:
        """Keep the sets of a and b apart from now on; False when they are one set already."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        self.apart.setdefault(ra, set()).add(rb)
        self.apart.setdefault(rb, set()).add(ra)
        return True

    def can_join(self, a: int, b: int) -> bool:
        """True when the sets of a and b are one, or may become one."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        ca, cb = self.code[ra], self.code[rb]
        return not (ca >= 0 and cb >= 0 and ca != cb) and rb not in self.apart.get(ra, ())

    def union(self, a: int, b: int) -> bool:
        """Join the sets of a and b unless a constraint keeps them apart; True when joined."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb or not self.can_join(ra, rb):
            return False
        self.parent[rb] = ra
        self.code[ra] = max(self.code[ra], self.code[rb])
        moved = self.apart.pop(rb, set())
        if moved:
            own = self.apart.setdefault(ra, set())
            for other in moved:
                own.add(other)
                partners = self.apart[other]
                partners.discard(rb)
                partners.add(ra)
        return True

    def roots(self) -> np.ndarray:
        return np.array([self.find(x) for x in range(len(self.parent))], np.int64)

    def labels(self) -> np.ndarray:
        return canonical(self.roots())


def canonical(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0, 1, ... in order of first appearance (equal partitions, equal arrays)."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse].astype(np.int64)


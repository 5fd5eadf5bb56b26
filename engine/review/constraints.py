"""A person's answers as constraints: *same* is a must-link, *different* a cannot-link.

The closure starts from what the run knew (the identities of database or train images: images of
one identity are one set, two identities never join) and adds the active answers in the order
they were given. Must-links close transitively (a union-find, engine/cluster/constraints.py), and
a cannot-link holds between the two whole sets. A new answer that goes against the closure is a
`Conflict`: it names the earlier answers it contradicts (the chain of *same* answers that joined
the two images, or the *different* answers that keep their sets apart) and whether the dataset's
own labels take part. The reviewer decides which to keep; nothing is dropped silently.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from engine.cluster.constraints import ConstrainedSets, PairConstraints

SAME, DIFFERENT, NOT_SURE, SKIP = "same", "different", "not_sure", "skip"
VERDICTS = (SAME, DIFFERENT, NOT_SURE, SKIP)
LINKS = (SAME, DIFFERENT)  # the verdicts that constrain


@dataclass(frozen=True)
class Answer:
    """One stored answer about the images of rows a and b."""

    id: int
    a: int
    b: int
    verdict: str
    reviewer: str = ""


@dataclass
class Conflict:
    """A new answer against the closure: the earlier answers it contradicts."""

    verdict: str
    against: List[int] = field(default_factory=list)  # ids of the earlier answers
    labels: bool = False  # the dataset's own labels take part (they cannot be overruled)

    def to_dict(self) -> Dict[str, object]:
        return {"verdict": self.verdict, "against": list(self.against), "labels": self.labels}


class Closure:
    """The must-link / cannot-link closure of `answers` over images with identity codes `anchors`."""

    def __init__(self, anchors: np.ndarray, answers: Iterable[Answer] = ()):
        self.anchors = np.asarray(anchors, np.int64)
        self.sets = ConstrainedSets(self.anchors)
        self.same: Dict[int, List[Tuple[int, int]]] = {}  # image -> (other image, answer id) of *same* answers
        self.different: List[Answer] = []
        for answer in answers:
            self.add(answer)

    def add(self, answer: Answer) -> None:
        """Add an answer the closure accepts (check it first); not-sure and skip constrain nothing."""
        if answer.verdict == SAME:
            self.sets.union(answer.a, answer.b)
            self.same.setdefault(answer.a, []).append((answer.b, answer.id))
            self.same.setdefault(answer.b, []).append((answer.a, answer.id))
        elif answer.verdict == DIFFERENT:
            self.sets.forbid(answer.a, answer.b)
            self.different.append(answer)

    def roots(self) -> np.ndarray:
        return self.sets.roots()

    def known(self, a: int, b: int) -> Optional[str]:
        """SAME or DIFFERENT when the closure already decides the pair, else None."""
        if self.sets.find(a) == self.sets.find(b):
            return SAME
        return None if self.sets.can_join(a, b) else DIFFERENT

    def check(self, a: int, b: int, verdict: str) -> Optional[Conflict]:
        """The conflict a new answer would make, or None when the closure accepts it."""
        decided = self.known(a, b)
        if verdict not in LINKS or decided is None or decided == verdict:
            return None
        if verdict == DIFFERENT:  # a and b are one set: the chain that joined them
            chain, labels = self._chain(a, lambda x: x == b)
            return Conflict(verdict, chain, labels)
        ra, rb = self.sets.find(a), self.sets.find(b)
        against = [d.id for d in self.different if {self.sets.find(d.a), self.sets.find(d.b)} == {ra, rb}]
        labels = False
        if not against:  # two identities: the chains that tied a and b to theirs
            for x in (a, b):
                chain, _ = self._chain(x, lambda y: self.anchors[y] >= 0)
                against += chain
            labels = True
        return Conflict(verdict, sorted(set(against)), labels)

    def _chain(self, start: int, goal) -> Tuple[List[int], bool]:
        """Answer ids along the shortest path of *same* answers and shared identities from `start` to
        an image where goal(image), and whether the path went through the dataset's labels."""
        if goal(start):
            return [], bool(self.anchors[start] >= 0)
        by_code: Dict[int, List[int]] = {}
        if (self.anchors >= 0).any():
            members = np.flatnonzero(self.anchors >= 0)
            for row, code in zip(members.tolist(), self.anchors[members].tolist(), strict=True):
                by_code.setdefault(code, []).append(row)
        came: Dict[int, Tuple[int, Optional[int]]] = {start: (start, None)}
        queue = deque([start])
        while queue:
            x = queue.popleft()
            steps = list(self.same.get(x, []))
            if self.anchors[x] >= 0:
                steps += [(y, None) for y in by_code[int(self.anchors[x])] if y != x]
            for y, answer in steps:
                if y in came:
                    continue
                came[y] = (x, answer)
                if goal(y):
                    ids, labels = [], False
                    while y != start:
                        y, answer = came[y]
                        if answer is None:
                            labels = True
                        else:
                            ids.append(answer)
                    return sorted(ids), labels
                queue.append(y)
        return [], False

    def pair_constraints(self, rows: Optional[np.ndarray] = None) -> PairConstraints:
        """Every must-link and cannot-link (among `rows`, renumbered as Graph.subgraph does)."""
        must = [(a, b) for a, pairs in self.same.items() for b, _ in pairs if a < b]
        cannot = [(d.a, d.b) for d in self.different]
        found = PairConstraints(must, cannot)
        return found if rows is None else found.subset(rows, len(self.anchors))

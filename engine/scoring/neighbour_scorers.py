"""Re-ranking without pixels: shortlist scorers computed from a model's embeddings and their
neighbourhood (engine.neighbourhood), voting beside the global scorers and the keypoint matcher.

* `kreciprocal`: minus the k-reciprocal distance (Zhong et al., CVPR 2017) of each pair;
* `alpha_qe`: the cosine of the alpha-expanded query with each database image;
* `dba`: the cosine of the query with each database image augmented by its own database neighbours.

They re-score the shortlist the global scorers propose, get their own calibrator (fitted on the
database's own shortlists, like the matcher's) and a weight chosen on the held-out database split
that tunes the threshold (rerank.neighbours; weight 0: it does not help on this data). Each needs
the set it scores in (the k-reciprocal graph spans queries and database, DBA the database), so
`prepare(space, q_rows, g_rows)` builds it once per set, per dataset when rows only match within
their dataset. A row never expands with itself (database images act as queries when the
calibrators are fitted).
"""
from __future__ import annotations

import hashlib
from abc import abstractmethod
from collections import OrderedDict
from typing import Dict, List, Sequence, Tuple

import numpy as np

from core.schema_rules import NEIGHBOUR_RERANKERS
from engine.neighbourhood import expanded, k_reciprocal_distance, k_reciprocal_encoding
from engine.scoring.scorers import SCORERS, MatchSpace, ModelOutput, Scorer

NEIGHBOUR_KINDS = NEIGHBOUR_RERANKERS  # rerank.neighbours: the kinds registered below
PREPARED_SETS = 12  # sets kept prepared: up to threshold.max_splits held-out splits (many only for small databases), the calibration set and the queries


class NeighbourScorer(Scorer):
    """A shortlist scorer of pairs within a prepared set: rows are mapped to their set's local state."""

    stage = "shortlist"
    calibration_queries = 2000  # cheap: as many database shortlists as the other scorers allow

    def __init__(self, output: ModelOutput, weight: float):
        super().__init__(output, weight)
        self._prepared: OrderedDict[str, Tuple[Dict[int, Tuple[int, int]], list]] = OrderedDict()
        self._current = ""

    def prepare(self, space: MatchSpace, q_rows: np.ndarray, g_rows: np.ndarray) -> None:
        key = hashlib.sha1(np.asarray(q_rows, np.int64).tobytes() + b"|" + np.asarray(g_rows, np.int64).tobytes())
        self._current = key.hexdigest()
        if self._current in self._prepared:
            self._prepared.move_to_end(self._current)
            return
        where: Dict[int, Tuple[int, int]] = {}
        states = []
        for positions, gallery in space.groups(np.asarray(q_rows), np.asarray(g_rows)):
            queries = np.setdiff1d(np.asarray(q_rows)[positions], gallery)
            states.append(self._state(queries, gallery))
            for local, row in enumerate(np.concatenate([queries, gallery]).tolist()):
                where[row] = (len(states) - 1, local)
        self._prepared[self._current] = (where, states)
        if len(self._prepared) > PREPARED_SETS:
            self._prepared.popitem(last=False)

    def pair_scores(self, space, q_rows, g_rows):
        where, states = self._prepared[self._current]
        out = np.empty(len(q_rows))
        located = [(where[int(q)], where[int(g)]) for q, g in zip(q_rows, g_rows, strict=True)]
        group = np.array([a[0] for a, _ in located], np.int64)
        first = np.array([a[1] for a, _ in located], np.int64)
        second = np.array([b[1] for _, b in located], np.int64)
        for index, state in enumerate(states):
            at = group == index
            if at.any():
                out[at] = self._scores(state, first[at], second[at])
        return out

    @property
    def name(self) -> str:
        return f"{self.output.name} [{self.kind}]"

    @abstractmethod
    def _state(self, queries: np.ndarray, gallery: np.ndarray):
        """What the scores of a set need, for its rows [queries (not in the gallery), gallery]."""

    @abstractmethod
    def _scores(self, state, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """(P,) scores of the pairs (first[i], second[i]), positions in the set's rows."""


@SCORERS.register("kreciprocal")
class KReciprocalScorer(NeighbourScorer):
    """Minus the k-reciprocal distance over the set's faiss top-(k1 + 1) graph (queries and database)."""

    def __init__(self, output: ModelOutput, weight: float, k1: int = 20, k2: int = 6, lambda_value: float = 0.3):
        super().__init__(output, weight)
        self.k1, self.k2, self.lambda_value = k1, k2, lambda_value

    def _state(self, queries, gallery):
        x = self.output.embeddings[np.concatenate([queries, gallery])]
        return x, k_reciprocal_encoding(x, self.k1, self.k2)[0]

    def _scores(self, state, first, second):
        x, v = state
        return -k_reciprocal_distance(x, v, first, second, self.lambda_value)


@SCORERS.register("alpha_qe")
class AlphaQueryExpansionScorer(NeighbourScorer):
    """cos(alpha-QE(query), database image): the query plus its k nearest database images, weighted
    by cos^alpha."""

    def __init__(self, output: ModelOutput, weight: float, k: int = 3, alpha: float = 3.0):
        super().__init__(output, weight)
        self.k, self.alpha = k, alpha

    def _state(self, queries, gallery):
        x = self.output.embeddings[np.concatenate([queries, gallery])]
        # Queries and database rows acting as queries (calibration) expand over the database, never with themselves.
        return expanded(x, x[len(queries):], self.k, self.alpha, exclude_self=True), x

    def _scores(self, state, first, second):
        queries, x = state
        return np.einsum("ij,ij->i", queries[first].astype(np.float64), x[second].astype(np.float64))


@SCORERS.register("dba")
class DatabaseAugmentationScorer(NeighbourScorer):
    """cos(query, DBA(database image)): each database image plus its k nearest database images,
    weighted by cos^alpha."""

    def __init__(self, output: ModelOutput, weight: float, k: int = 3, alpha: float = 3.0):
        super().__init__(output, weight)
        self.k, self.alpha = k, alpha

    def _state(self, queries, gallery):
        x = self.output.embeddings[np.concatenate([queries, gallery])]
        return x, expanded(x, x[len(queries):], self.k, self.alpha, exclude_self=True)

    def _scores(self, state, first, second):
        x, augmented = state
        return np.einsum("ij,ij->i", x[first].astype(np.float64), augmented[second].astype(np.float64))


def neighbour_scorers(outputs: Sequence[ModelOutput], kinds: Sequence[str]) -> List[Scorer]:
    """One scorer of each kind per model (rerank.neighbours), at weight 0 until one is chosen."""
    return [SCORERS.build(kind, output=output, weight=0.0) for kind in kinds for output in outputs]

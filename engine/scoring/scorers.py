"""Scorers: the members of the soft-voting ensemble, one registered class per kind.

Every scorer offers the same two things:
* `pair_scores(space, q_rows, g_rows)`: a raw score for any (query row, gallery row) pairs, and
* `calibration_pairs(...)`: labelled database pairs (raw score, same individual?) drawn the way
  queries are matched, on which its own calibrator is fitted (engine.scoring.calibration).
A **global** scorer also proposes candidates from the whole gallery (`candidates`, `propose`); a
**shortlist** scorer only re-scores the pairs the global stage shortlisted (a Siamese pair head
here, the keypoint matcher in engine.matching.scorer), because it is too slow or too narrow to
search a whole gallery.
A new kind of scorer is one class registered in SCORERS; `scorers_for` says which kinds a model
output brings.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from core.registry import Registry
from core.schema import RetrievalConfig
from engine.retrieval import Candidates, retrieve, to_candidates
from engine.scoring.calibration import Calibrator, pair_scores_for_calibration

SCORERS = Registry("scorer", name_attribute="kind")
CANDIDATES = 20  # identities per query and scorer entering the vote: enough for the decision and top-5
PAIR_NEIGHBOURS = 10  # calibration pairs of a global scorer: each database image against its top-k


@dataclass
class ModelInfo:
    """What the manifest records of a model, and which identities it was trained on."""

    spec: str
    checksum: str
    architecture: Optional[str]
    embed_dim: int
    classes: Optional[int] = None  # a classifier's number of classes
    votes_with: str = "embedding"  # or "softmax"
    pair_head: bool = False
    training_identities: Optional[Dict[str, int]] = None  # its label map, when it records one
    input_size: Optional[int] = None  # preprocessing, for a model that reads images
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    cache_keys: Optional[Dict[str, str]] = None  # its outputs' keys in the embedding cache
    members: Optional[List[Dict[str, str]]] = None  # a fusion model's members: spec and checksum

    def manifest(self, weight: float) -> Dict[str, Any]:
        """The manifest's entry: the training identities counted, not listed; fields that do not apply left out."""
        fields = {k: v for k, v in vars(self).items() if k != "training_identities"}
        kept = {k: v for k, v in fields.items() if v is not None or k in ("architecture", "classes")}
        return {**kept, "weight": weight, "training_identities": len(self.training_identities or {})}


@dataclass
class ModelOutput:
    """One model's vectors for the evaluation rows (the gallery rows first, then the queries)."""

    name: str
    embeddings: np.ndarray
    logits: Optional[np.ndarray] = None
    label_map: Optional[Dict[str, int]] = None  # set when the model votes with its softmax
    weight: float = 1.0
    info: Optional[ModelInfo] = None
    pair_head: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None  # (N, D) x (N, D) -> (N,) logits
    members: List[ModelOutput] = field(default_factory=list)  # a fusion model's members, for the eval-time choice


@dataclass
class MatchSpace:
    """What every scorer matches in: row r < len(labels) is a gallery row with identity labels[r];
    `datasets` covers every row. With `by_dataset`, rows are only matched within their dataset."""

    labels: np.ndarray
    datasets: np.ndarray
    by_dataset: bool
    retrieval: RetrievalConfig

    def groups(self, q_rows: np.ndarray, g_rows: np.ndarray) -> List[Tuple[np.ndarray, np.ndarray]]:
        """[(positions in q_rows, gallery rows)] to match: one group per query dataset, or one in all."""
        if not self.by_dataset:
            return [(np.arange(len(q_rows)), g_rows)]
        q_sets, g_sets = self.datasets[q_rows], self.datasets[g_rows]
        return [(np.flatnonzero(q_sets == name), g_rows[g_sets == name]) for name in sorted(set(q_sets.tolist()))]


@dataclass
class ImageRanking:
    """One scorer's top-k gallery images per query: gallery rows (-1 padded) and their raw scores."""

    indices: np.ndarray
    scores: np.ndarray

    @classmethod
    def empty(cls, queries: int, k: int) -> ImageRanking:
        return cls(np.full((queries, k), -1, np.int64), np.full((queries, k), -np.inf))

    def labels(self, gallery_labels: np.ndarray) -> np.ndarray:
        """(Q, k) identities of the retrieved images, None where nothing was retrieved."""
        names = np.append(gallery_labels, None).astype(object)
        return names[np.where(self.indices >= 0, self.indices, len(gallery_labels))]


@dataclass
class ScorerSummary:
    """What a scorer voted with, as the report and manifest.json show it."""

    kind: str
    stage: str
    weight: float
    calibrator: Dict[str, Any]  # Calibrator.to_dict()

    def to_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, "stage": self.stage, "weight": self.weight, "calibrator": self.calibrator}


class Scorer(ABC):
    """Base class: a name, a voting weight, a calibrator fitted by the caller, raw pair scores."""

    kind = ""  # the registered name, set by SCORERS.register
    stage = "global"

    def __init__(self, output: ModelOutput, weight: float):
        self.output = output
        self.weight = weight
        self.calibrator: Optional[Calibrator] = None

    @property
    def name(self) -> str:
        """The model's name for its global scorer, with the kind added for the others."""
        return self.output.name if self.stage == "global" else f"{self.output.name} [{self.kind}]"

    def summary(self) -> ScorerSummary:
        return ScorerSummary(self.kind, self.stage, self.weight, self.calibrator.to_dict())

    @abstractmethod
    def pair_scores(self, space: MatchSpace, q_rows: np.ndarray, g_rows: np.ndarray) -> np.ndarray:
        """(P,) raw scores of the pairs (q_rows[i], g_rows[i]), higher = more alike."""

    def prepare(self, space: MatchSpace, q_rows: np.ndarray, g_rows: np.ndarray) -> None:
        """Called before a shortlist scorer scores pairs of `q_rows` against `g_rows`: a scorer whose
        pair scores depend on the whole set (a neighbourhood graph) builds it here. Default: nothing."""
        return None

    # A shortlist scorer that learns from the labelled database (keypoint confusers): how many of its
    # own shortlist each database image needs scored for `learn`; 0: it learns nothing.
    database_shortlist = 0

    def learn(self, space: MatchSpace, rows: np.ndarray, shortlists: np.ndarray) -> None:
        """Called by voting.fit_calibrators, before calibrating, when `database_shortlist` is set:
        `shortlists` (len(rows), database_shortlist) holds every database row's own shortlist
        (gallery rows, -1 padded; never the row itself). Default: nothing."""
        return None

    def options(self) -> Dict[str, Tuple[Any, ...]]:
        """Settings that change this scorer's raw scores, for the held-out split to choose: name -> the
        values to try, the first preferred among equals. Default: none."""
        return {}

    def option_values(self) -> Dict[str, Any]:
        """The value each option has now (`options`' names)."""
        return {}

    def set_option(self, name: str, value: Any) -> None:
        raise KeyError(f"{self.name} has no option {name!r}")

    def calibrated(self, raw: Candidates) -> Candidates:
        """The same candidates with calibrated scores (the map is strictly increasing: order kept)."""
        out = []
        for found in raw:
            if not found:
                out.append([])
                continue
            identities, scores = zip(*found, strict=True)
            out.append(list(zip(identities, self.calibrator(np.asarray(scores)).tolist(), strict=True)))
        return out


class GlobalScorer(Scorer):
    """A scorer that searches the whole gallery."""

    @abstractmethod
    def candidates(self, space: MatchSpace, q_rows: np.ndarray,
                   g_rows: np.ndarray) -> Tuple[Candidates, Optional[ImageRanking]]:
        """Raw identity candidates per query (best first), and the image ranking where there is one."""

    @abstractmethod
    def calibration_pairs(self, space: MatchSpace, rows: np.ndarray,
                          rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        """(raw scores, same individual?) of labelled pairs among the database `rows`."""

    @abstractmethod
    def propose(self, space: MatchSpace, q_rows: np.ndarray, g_rows: np.ndarray, count: int,
                found: Optional[Tuple[Candidates, Optional[ImageRanking]]] = None) -> np.ndarray:
        """(Q, count) gallery rows this scorer would shortlist (-1 padded); `found` is what
        `candidates` already returned for these rows, so the search is not run twice."""


@SCORERS.register("embedding")
class EmbeddingScorer(GlobalScorer):
    """Cosine similarity of L2-normalised embeddings, searched with faiss; identity score = the
    retrieval's aggregation (max over the identity's images by default)."""


    def pair_scores(self, space, q_rows, g_rows):
        x = self.output.embeddings
        return np.einsum("ij,ij->i", x[q_rows].astype(np.float64), x[g_rows].astype(np.float64))

    def candidates(self, space, q_rows, g_rows):
        k = space.retrieval.k
        found: Candidates = [[] for _ in q_rows]
        ranking = ImageRanking.empty(len(q_rows), k)
        x = self.output.embeddings
        for positions, gallery_rows in space.groups(q_rows, g_rows):
            if len(gallery_rows) == 0 or len(positions) == 0:
                continue  # a dataset with no database images: its queries can only be new individuals
            result = retrieve(x[q_rows[positions]], x[gallery_rows], space.labels[gallery_rows], space.retrieval)
            for position, cands in zip(positions, to_candidates(result.identities, result.identity_codes,
                                                                result.identity_scores, top=CANDIDATES),
                                       strict=True):
                found[position] = cands
            width = result.indices.shape[1]
            ranking.indices[positions, :width] = np.where(result.indices >= 0,
                                                          gallery_rows[np.maximum(result.indices, 0)], -1)
            ranking.scores[positions, :width] = result.scores
        return found, ranking

    def propose(self, space, q_rows, g_rows, count, found=None):
        ranking = (found or self.candidates(space, q_rows, g_rows))[1]
        return ranking.indices[:, :count]

    def calibration_pairs(self, space, rows, rng):
        scores, same = [], []
        for _, group in space.groups(rows, rows):
            if len(group) >= 2:
                s, y = pair_scores_for_calibration(self.output.embeddings[group], space.labels[group],
                                                   k=PAIR_NEIGHBOURS, rng=rng)
                scores.append(s)
                same.append(y)
        return _joined(scores, same)


@SCORERS.register("softmax")
class SoftmaxScorer(GlobalScorer):
    """A classifier's softmax over the identities it was trained on, restricted to the gallery's
    identities (renormalised); a pair's score is the query's probability of the gallery image's
    identity. Logits are averaged over TTA views by the extraction."""


    def _probabilities(self, q_rows: np.ndarray, allowed: set) -> Tuple[np.ndarray, np.ndarray]:
        """(Q, C) probabilities over the allowed classes, and the class names."""
        label_map = self.output.label_map
        names = np.empty(len(label_map), dtype=object)
        for identity, index in label_map.items():
            names[index] = identity
        logits = self.output.logits[q_rows].astype(np.float64, copy=True)
        blocked = np.array([name not in allowed for name in names])
        logits[:, blocked] = -np.inf
        if blocked.all():
            return np.zeros_like(logits), names
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True), names

    def pair_scores(self, space, q_rows, g_rows):
        index = self.output.label_map
        scores = np.zeros(len(q_rows))
        for positions, gallery_rows in space.groups(q_rows, np.unique(g_rows)):
            probs, _ = self._probabilities(q_rows[positions], set(space.labels[gallery_rows]))
            classes = np.array([index.get(space.labels[g], -1) for g in g_rows[positions]])
            scores[positions] = np.where(classes >= 0, probs[np.arange(len(positions)), np.maximum(classes, 0)], 0.0)
        return scores

    def candidates(self, space, q_rows, g_rows):
        found: Candidates = [[] for _ in q_rows]
        for positions, gallery_rows in space.groups(q_rows, g_rows):
            if len(gallery_rows) == 0 or len(positions) == 0:
                continue
            probs, names = self._probabilities(q_rows[positions], set(space.labels[gallery_rows]))
            top = min(CANDIDATES, probs.shape[1])
            best = np.argsort(-probs, axis=1, kind="stable")[:, :top]
            for position, classes, row in zip(positions, best, probs, strict=True):
                found[position] = [(names[c], float(row[c])) for c in classes if row[c] > 0]
        return found, None

    def propose(self, space, q_rows, g_rows, count, found=None):
        """The images of each query's most probable identities, best identity first."""
        found = (found or self.candidates(space, q_rows, g_rows))[0]
        by_identity: Dict[Any, List[int]] = {}
        for g in g_rows.tolist():
            by_identity.setdefault(space.labels[g], []).append(g)
        out = np.full((len(q_rows), count), -1, np.int64)
        for i, cands in enumerate(found):
            rows = [g for identity, _ in cands for g in by_identity.get(identity, [])][:count]
            out[i, :len(rows)] = rows
        return out

    def calibration_pairs(self, space, rows, rng):
        """Each database image against its top identities: the probability and whether it is right."""
        scores, same = [], []
        for positions, group in space.groups(rows, rows):
            found = self.candidates(space, rows[positions], group)[0]
            for row, cands in zip(rows[positions], found, strict=True):
                for identity, prob in cands[:PAIR_NEIGHBOURS]:
                    scores.append(prob)
                    same.append(identity == space.labels[row])
        return np.asarray(scores, dtype=np.float64), np.asarray(same, dtype=bool)


@SCORERS.register("pair_head")
class PairHeadScorer(Scorer):
    """A Siamese model's trained pair head on two embeddings: the logit of "same individual".
    It re-scores the shortlist only (one forward per pair)."""

    stage = "shortlist"

    def pair_scores(self, space, q_rows, g_rows):
        x = self.output.embeddings
        return np.asarray(self.output.pair_head(x[q_rows], x[g_rows]), dtype=np.float64)


def _joined(scores: Sequence[np.ndarray], same: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    if not scores:
        return np.zeros(0), np.zeros(0, bool)
    return np.concatenate(scores).astype(np.float64), np.concatenate(same).astype(bool)


def scorer_kinds(output: ModelOutput) -> List[str]:
    """The scorers a model output brings: its softmax or its embedding, plus its pair head if any."""
    kinds = ["softmax" if output.label_map is not None else "embedding"]
    if output.pair_head is not None:
        kinds.append("pair_head")
    return kinds


def scorers_for(outputs: Sequence[ModelOutput]) -> List[Scorer]:
    """Every output's scorers; a model's weight is shared equally by its scorers, so a model with a
    pair head has the same say in the vote as one without."""
    built = []
    for output in outputs:
        kinds = scorer_kinds(output)
        built.extend(SCORERS.build(kind, output=output, weight=output.weight / len(kinds)) for kind in kinds)
    return built

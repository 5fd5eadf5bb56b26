"""The run's output under a person's answers, one registered class per eval.py task.

A task state knows the decisions of its run as the answers so far leave them, which pairs are
still open (`candidates`, for the selectors), how an answer changes the decisions, and the final
decisions the outputs are written from (`decide`).

* `identify`: a query joins the identity a person confirmed (a *same* answer, directly or through
  other queries); otherwise its best candidate identity no person rejected, if that reaches the
  threshold; otherwise it is new. So a query whose every candidate above the threshold was
  rejected becomes new. Decisions are recomputed from the closure at every step (vectorised).
* `cluster`: the clusters as the run's clusterer makes them under the constraints. After an
  answer they change locally (a *same* across two clusters merges them; a *different* inside one
  re-clusters its images under the constraints), which keeps the next pair fast on large runs;
  `decide` re-clusters every dataset under all the constraints, with every registered clusterer.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

import numpy as np
import pandas as pd

from core.registry import Registry
from data.table import NEW_INDIVIDUAL
from engine.cluster.constraints import PairConstraints, canonical
from engine.cluster.graph import Graph
from engine.cluster.methods import CLUSTERERS
from engine.cluster.pipeline import cluster_names
from engine.review.constraints import DIFFERENT, SAME, Answer, Closure
from engine.review.offload import WorkerClusterer
from engine.review.refit import (
    answers_calibration,
    best_expected_threshold,
    candidate_thresholds,
    recalibrated,
    refitted,
    with_answers,
)
from engine.review.run import ReviewRun
from engine.review.selectors import Candidates

REVIEW_TASKS = Registry("review task")
PERSON, MODEL = "person", "model"  # who made a decision (the decided_by column)


@dataclass
class Decisions:
    """What a task decided for its query (test) images, in their order."""

    values: List[str]  # identity or new_individual; or the cluster name
    by_person: np.ndarray  # (queries,) bool: a person's answer decided it
    joined: List[Optional[str]] = field(default_factory=list)  # task=cluster: the train identity a cluster holds


class TaskState(ABC):
    def __init__(self, run: ReviewRun, thresholds: Dict[str, float]):
        self.run = run
        self.thresholds = thresholds  # shared with the session, which re-fits them
        data = run.data
        self.pair_a, self.pair_b, self.pair_p = data.pair_a, data.pair_b, data.pair_p
        self.datasets = data.images["dataset"].to_numpy(dtype=object)
        self.queries = np.flatnonzero(data.images["is_query"].to_numpy(bool))
        self.pair_dataset = self.datasets[self.pair_a] if len(self.pair_a) else np.zeros(0, object)

    def reset(self, closure: Closure, datasets: Optional[List[str]] = None) -> None:
        """Recompute the decisions of `datasets` (all: None) from scratch under `closure`."""
        for dataset in datasets or self.decided_datasets():
            self.install(dataset, self.recompute(closure.pair_constraints(self.rows(dataset)), dataset,
                                                 self.thresholds[dataset]))

    def refit(self, dataset: str, a: np.ndarray, b: np.ndarray, p: np.ndarray, same: np.ndarray,
              current: float, min_answers: int) -> Optional[float]:
        """`dataset`'s threshold re-fitted from the answered pairs (rows a[i], b[i], the run's
        probability p[i]; a person said same[i]), or None while they are too few
        (engine/review/refit.py): for identification, the threshold that separates them best."""
        return refitted(p, same, current, min_answers)

    def decided_datasets(self) -> List[str]:
        return sorted(set(self.datasets[self.queries].tolist()))

    def rows(self, dataset: str) -> np.ndarray:
        return np.flatnonzero(self.datasets == dataset)

    def recompute(self, constraints: PairConstraints, dataset: str, threshold: float):
        """The heavy part of reset for one dataset, reading nothing that answers change (so that it may
        run outside the session's lock); None where the decisions need no recomputing."""
        return None

    def install(self, dataset: str, result) -> None:
        """Take what recompute found as the dataset's decisions."""
        return None

    def offload(self) -> None:
        """Compute `refit` and `recompute` in a worker process from now on (the server's background
        work, engine/review/offload.py); a task that computes nothing heavy there ignores it."""
        return None

    def close(self) -> None:
        """Stop what `offload` started."""
        return None

    @abstractmethod
    def after(self, closure: Closure, answer: Answer) -> None:
        """Update the decisions after `answer` joined `closure`."""

    @abstractmethod
    def candidates(self, closure: Closure) -> Candidates:
        """Every pair still open, for the selectors."""

    def doubted(self, closure: Closure, error_prior: float) -> Candidates:
        """The pairs of query images the answers decide (each through a person's answer: a query image
        has no label) whose decision the model doubts, as verification questions. Asked, an answer
        that disagrees is a contradiction the reviewer settles, so a wrong earlier answer comes out.
        `flip` is the chance that the decision is wrong: a person wrong `error_prior` of the time
        against the model's probability of the other verdict (Bayes)."""
        ra, rb, open_ = _open_pairs(closure, self.pair_a, self.pair_b)
        at = np.flatnonzero(~open_ & self.asks_about(self.pair_a, self.pair_b))
        same = ra[at] == rb[at]
        p = self.pair_p[at]
        doubt = np.where(same, 1 - p, p)
        wrong = error_prior * doubt
        flip = np.divide(wrong, wrong + (1 - error_prior) * (1 - doubt), out=np.zeros_like(doubt),
                         where=(wrong + (1 - error_prior) * (1 - doubt)) > 0)
        return Candidates(at, p, flip, self.impact(at), np.zeros(len(at)))

    def asks_about(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(pairs,) bool: pairs a person may be asked about."""
        return np.ones(len(a), bool)

    def impact(self, at: np.ndarray) -> np.ndarray:
        """Image pairs whose decision changes with the answer on each pair `at`."""
        return np.ones(len(at))

    @abstractmethod
    def changes(self, closure: Closure) -> Dict[str, int]:
        """What the answers changed so far, for the progress line."""

    @abstractmethod
    def decide(self, closure: Closure) -> Decisions:
        """The final decisions under every constraint."""


def _open_pairs(closure: Closure, a: np.ndarray, b: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(roots of a, roots of b, open mask): a pair is open when the closure decides neither way."""
    roots = closure.roots()
    code = np.asarray(closure.sets.code, np.int64)[roots]
    ra, rb = roots[a], roots[b]
    ca, cb = code[ra], code[rb]
    open_ = (ra != rb) & ~((ca >= 0) & (cb >= 0) & (ca != cb))
    apart = closure.sets.apart
    if apart:
        maybe = np.flatnonzero(open_ & np.isin(ra, list(apart)))
        for k in maybe.tolist():
            if int(rb[k]) in apart[int(ra[k])]:
                open_[k] = False
    return ra, rb, open_


@REVIEW_TASKS.register("identify")
class IdentifyState(TaskState):
    def __init__(self, run, thresholds):
        super().__init__(run, thresholds)
        self.identity = run.images["identity"].to_numpy(dtype=object)
        self.row_codes = run.anchors()
        self.code_identity = {int(c): self.identity[r] for r, c in enumerate(self.row_codes.tolist()) if c >= 0}
        self.query_position = np.full(len(self.identity), -1, np.int64)
        self.query_position[self.queries] = np.arange(len(self.queries))
        self.model = self._decisions(None)[0]  # the run's own decisions

    def limits(self) -> np.ndarray:
        return np.array([self.thresholds[d] for d in self.pair_dataset], np.float64)

    def _decisions(self, closure: Optional[Closure]) -> Tuple[List[str], np.ndarray, np.ndarray]:
        """(decision per query, decided by a person, open mask over pairs)."""
        if closure is None:
            open_ = np.ones(len(self.pair_a), bool)
            confirmed = np.full(len(self.queries), -1, np.int64)
            touched = np.zeros(len(self.queries), bool)
        else:
            ra, _, open_ = _open_pairs(closure, self.pair_a, self.pair_b)
            roots = closure.roots()
            codes = np.asarray(closure.sets.code, np.int64)
            confirmed = codes[roots[self.queries]]
            touched = np.zeros(len(self.queries), bool)
            touched[self.query_position[self.pair_a[~open_]]] = True  # a rejected candidate
        values = [NEW_INDIVIDUAL] * len(self.queries)
        limits = self.limits()
        usable = np.flatnonzero(open_ & (self.pair_p >= limits))
        order = usable[np.argsort(-self.pair_p[usable], kind="stable")]
        for k in order.tolist():
            q = self.query_position[self.pair_a[k]]
            if values[q] == NEW_INDIVIDUAL:
                values[q] = str(self.identity[self.pair_b[k]])
        for q in np.flatnonzero(confirmed >= 0).tolist():
            values[q] = str(self.code_identity[int(confirmed[q])])
        return values, (confirmed >= 0) | touched, open_

    def after(self, closure, answer):
        return None

    def candidates(self, closure):
        _, _, open_ = _open_pairs(closure, self.pair_a, self.pair_b)
        at = np.flatnonzero(open_)
        p = self.pair_p[at]
        q = self.pair_a[at]
        order = np.lexsort((-p, q))  # per query, best first
        at, p, q = at[order], p[order], q[order]
        first = np.r_[True, q[1:] != q[:-1]] if len(q) else np.zeros(0, bool)
        second = np.zeros(len(q), np.float64)
        follows = np.r_[q[1:] == q[:-1], False] if len(q) else np.zeros(0, bool)
        second[:-1][follows[:-1]] = p[1:][follows[:-1]]
        limits = self.limits()[at]
        known = p >= limits
        close = np.divide(second, p + second, out=np.zeros_like(p), where=(p + second) > 0)
        flip = np.where(first, np.where(known, np.maximum(1 - p, close), p), p)
        return Candidates(at, p, flip, np.ones(len(at)), np.zeros(len(at)))

    def changes(self, closure):
        values, by_person, _ = self._decisions(closure)
        changed = [v != m for v, m in zip(values, self.model, strict=True)]
        return {"identities confirmed": int(sum(v != NEW_INDIVIDUAL for v, p in zip(values, by_person, strict=True) if p)),
                "turned new": int(sum(c and v == NEW_INDIVIDUAL for v, c in zip(values, changed, strict=True))),
                "decisions changed": int(sum(changed))}

    def decide(self, closure):
        values, by_person, _ = self._decisions(closure)
        return Decisions(values, by_person)


@REVIEW_TASKS.register("cluster")
class ClusterState(TaskState):
    def __init__(self, run, thresholds):
        super().__init__(run, thresholds)
        data, settings = run.data, run.data.settings
        self.clusterer = CLUSTERERS.build(settings.method, settings.method_args)
        self.heavy = self.clusterer  # what clusters whole datasets for refit and recompute (see offload)
        self.anchors = run.anchors()
        self.graph = Graph(len(data.images), data.pair_a, data.pair_b, data.pair_p)
        self.members = {d: np.flatnonzero(self.datasets == d) for d in sorted(set(self.datasets[self.queries]))}
        self.subgraphs = {d: self.graph.subgraph(m) for d, m in self.members.items()}
        self.is_query = data.images["is_query"].to_numpy(bool)
        self.labels = data.cluster.copy()
        self.model = data.cluster.copy()
        self.apart: Set[Tuple[int, int]] = set()  # cluster pairs a person said differ, until they change
        scores = data.pair_scores
        finite = np.isfinite(scores)
        if scores.shape[1] > 1 and finite.any():
            high = np.where(finite, scores, -np.inf).max(axis=1)
            low = np.where(finite, scores, np.inf).min(axis=1)
            self.disagreement = np.where(finite.sum(axis=1) > 1, high - low, 0.0)
        else:
            self.disagreement = np.zeros(len(data.pair_a))
        self.open_edge = self.asks_about(data.pair_a, data.pair_b)

    def _cluster(self, closure: Optional[Closure], rows: np.ndarray, dataset: str,
                 graph: Optional[Graph] = None) -> np.ndarray:
        graph = graph if graph is not None else self.graph.subgraph(rows)
        constraints = closure.pair_constraints(rows) if closure is not None else None
        return self.clusterer.labels(graph, self.anchors[rows], [self.thresholds[dataset]], constraints)[0]

    def rows(self, dataset):
        return self.members[dataset]

    def refit(self, dataset, a, b, p, same, current, min_answers):
        # the clusters the run's clusterer makes at each candidate, anchored by the train labels but
        # not by the answers, scored by the ARI expected over the dataset's query images (refit.py)
        calibration = answers_calibration(p, same, min_answers)
        if calibration is None:
            return None
        rows, graph = self.members[dataset], self.subgraphs[dataset]
        local = np.full(len(self.labels), -1, np.int64)
        local[rows] = np.arange(len(rows))
        q = with_answers(graph, recalibrated(calibration, graph.p), local[a], local[b], same)
        queries = self.is_query[rows]
        position = np.cumsum(queries) - 1
        among = queries[graph.i] & queries[graph.j]
        thresholds = candidate_thresholds(p, current)
        labelings = self.heavy.labels(graph, self.anchors[rows], thresholds.tolist())
        return best_expected_threshold(thresholds, [labels[queries] for labels in labelings], position[graph.i[among]],
                                       position[graph.j[among]], q[among], current)

    def recompute(self, constraints, dataset, threshold):
        rows = self.members[dataset]
        if not constraints and threshold == self.run.data.settings.thresholds[dataset]:
            return self.model[rows]  # what the run's clusterer gave for these very inputs
        return self.heavy.labels(self.subgraphs[dataset], self.anchors[rows], [threshold], constraints)[0]

    def offload(self):
        settings = self.run.data.settings
        self.heavy = WorkerClusterer(settings.method, settings.method_args)

    def close(self):
        if self.heavy is not self.clusterer:
            self.heavy.close()

    def install(self, dataset, result):
        rows = self.members[dataset]
        stale = set(self.labels[rows].tolist())
        self.labels[rows] = canonical(result) + self.labels.max() + 1
        self.apart = {pair for pair in self.apart if not (set(pair) & stale)}

    def after(self, closure, answer):
        a, b = answer.a, answer.b
        la, lb = int(self.labels[a]), int(self.labels[b])
        if answer.verdict == SAME and la != lb:
            rows = np.flatnonzero((self.labels == la) | (self.labels == lb))
            codes = set(self.anchors[rows][self.anchors[rows] >= 0].tolist())
            if len(codes) > 1 or len(closure.pair_constraints(rows).cannot):
                # the two clusters hold two identities, or a pair a person said differ: re-cluster them
                found = self._cluster(closure, rows, str(self.datasets[a]))
                self.labels[rows] = canonical(found) + self.labels.max() + 1
            else:
                keep, gone = (la, lb) if (self.labels == la).sum() >= (self.labels == lb).sum() else (lb, la)
                self.labels[self.labels == gone] = keep
        elif answer.verdict == DIFFERENT and la == lb:
            rows = np.flatnonzero(self.labels == la)
            found = self._cluster(closure, rows, str(self.datasets[a]))
            self.labels[rows] = canonical(found) + self.labels.max() + 1
        elif answer.verdict == DIFFERENT:
            self.apart.add((min(la, lb), max(la, lb)))

    def candidates(self, closure):
        _, _, open_ = _open_pairs(closure, self.pair_a, self.pair_b)
        la, lb = self.labels[self.pair_a], self.labels[self.pair_b]
        if self.apart:
            keys = np.minimum(la, lb) * (int(self.labels.max()) + 1) + np.maximum(la, lb)
            wide = int(self.labels.max()) + 1
            open_ &= ~np.isin(keys, [x * wide + y for x, y in self.apart])
        at = np.flatnonzero(open_ & self.open_edge)
        p = self.pair_p[at]
        flip = np.where(la[at] == lb[at], 1 - p, p)
        return Candidates(at, p, flip, self.impact(at), self.disagreement[at])

    def asks_about(self, a, b):
        return self.is_query[a] | self.is_query[b]  # train pairs: labels decide

    def impact(self, at):
        # the output is the test images' clusters: a cluster counts by its test images (train images
        # only anchor it), one at least, so that joining a test image to a known individual counts
        tested = self.labels[self.queries]
        sizes = np.maximum(np.bincount(tested[tested >= 0], minlength=int(self.labels.max()) + 1), 1)
        la, lb = self.labels[self.pair_a[at]], self.labels[self.pair_b[at]]
        return np.where(la == lb, np.maximum(sizes[la] - 1, 1), sizes[la] * sizes[lb]).astype(np.float64)

    def changes(self, closure):
        return regrouped(self.model[self.queries], self.labels[self.queries])

    def decide(self, closure):
        values = np.empty(len(self.queries), dtype=object)
        joined = np.full(len(self.queries), None, dtype=object)
        position = np.full(len(self.labels), -1, np.int64)
        position[self.queries] = np.arange(len(self.queries))
        identity = self.run.images["identity"].to_numpy(dtype=object)
        constrained = np.zeros(len(self.labels), bool)
        must, cannot = closure.pair_constraints().must, closure.pair_constraints().cannot
        constrained[must.ravel()] = True
        constrained[cannot.ravel()] = True
        for dataset, rows in self.members.items():
            found = self._cluster(closure, rows, dataset, self.subgraphs[dataset])
            is_query = self.is_query[rows]
            values[position[rows[is_query]]] = cluster_names(found, is_query, dataset)
            identity_of = {c: identity[r] for c, r in zip(found[~is_query], rows[~is_query], strict=True)}
            joined[position[rows[is_query]]] = [identity_of.get(c) for c in found[is_query]]
        return Decisions([str(v) for v in values], constrained[self.queries], list(joined))


def regrouped(before: np.ndarray, after: np.ndarray) -> Dict[str, int]:
    """How a partition changed: clusters now holding images of several earlier ones (merged), earlier
    clusters now spread over several (split), images whose cluster is not the same set as before."""
    frame = pd.DataFrame({"before": before, "after": after})
    kinds = frame.groupby("after")["before"].transform("nunique")
    same = (kinds == 1) & (frame.groupby("before")["after"].transform("size") == frame.groupby("after")["before"].transform("size"))
    return {"clusters merged": int((frame.groupby("after")["before"].nunique() > 1).sum()),
            "clusters split": int((frame.groupby("before")["after"].nunique() > 1).sum()),
            "images regrouped": int((~same).sum())}


def frame_with_decisions(frame: pd.DataFrame, decisions: Decisions, column: str) -> pd.DataFrame:
    """The run's table with `column` replaced by the decisions and a decided_by column."""
    out = frame.copy()
    out[column] = decisions.values
    out["decided_by"] = np.where(decisions.by_person, PERSON, MODEL)
    return out

"""One review of one run: the answers, their closure, the task's decisions and the next pair.

The server (engine/review/app.py) and the simulator (engine/review/simulate.py) both go through
this class, so a simulated reviewer chooses, answers and applies exactly as a person does.

* **Next pair**: the selector picks among the open pairs of the current state (after every answer,
  on the updated state). A pair handed to one client is leased to it for `lease_s` seconds or
  until it answers or asks again: no other client gets it meanwhile. Pairs answered *not sure* or
  *skip* are not asked again.
* **Answer**: checked against the closure; a contradiction comes back as a `Conflict` and is
  stored only once the reviewer decides (keep the new answer, overruling the earlier ones it
  contradicts, or keep the earlier ones, storing the new one as overruled). A stored answer is
  committed before the state changes and the call returns (the acknowledgement).
* **Threshold**: once a dataset has enough *same* / *different* answers, every `REFIT_EVERY`
  answers its threshold is re-fitted from them (engine/review/refit.py) and its decisions redone.
  With `background` (the server) the re-fit (for a clustering, the dataset clustered at each
  candidate threshold) and the re-clustering run in a thread outside the lock, their clusterings
  in a worker process (engine/review/offload.py), so the next pair does not wait for them; the
  answers given meanwhile are replayed on the result. The simulator does both at once, in
  process, so that its runs repeat exactly.
* **Calibration**: on the same schedule, on every dataset (unless `refit` is `never`), the run's
  probabilities are re-calibrated on the answered pairs (engine/review/refit.py) for the page: the
  probability a person reads, and the threshold through the same map. The decisions and the
  selectors keep the run's own probabilities (results.md, "The answers' calibration").
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from core.errors import ConfigError
from engine.review.constraints import LINKS, NOT_SURE, SAME, SKIP, VERDICTS, Answer, Closure, Conflict
from engine.review.refit import MIN_ANSWERS, REFITS, answers_calibration, recalibrated
from engine.review.run import ReviewRun
from engine.review.selectors import SELECTORS, Candidates
from engine.review.store import ACTIVE, OVERRULED, UNDONE, AnswerClash, AnswerStore, StoredAnswer, ordered
from engine.review.tasks import REVIEW_TASKS, Decisions
from engine.scoring.calibration import Calibrator

LEASE_S = 600.0
REFIT_EVERY = 10
AMBIGUOUS = 0.2  # an open pair whose answer would change the output with at least this probability


class ReviewRefused(Exception):
    """A request the session cannot honour; the message says why (the server answers 4xx with it)."""

    def __init__(self, message: str, status: int = 409):
        super().__init__(message)
        self.status = status


@dataclass
class ReviewOptions:
    selector: str = "default"
    refit: str = "auto"
    # > 0: also ask verification questions (tasks.py `doubted`), a person taken to be wrong this often;
    # chosen on the review benchmark's validation parts (docs/results.md)
    error_prior: float = 0.02
    min_answers: int = MIN_ANSWERS
    seed: int = 0
    lease_s: float = LEASE_S
    background: bool = False  # re-fit and re-decide a dataset in a thread, its clusterings in a worker process (the server)

    def __post_init__(self):
        SELECTORS.get(self.selector)  # an unknown name stops here, with the closest one
        if self.refit not in REFITS:
            raise ConfigError(f"refit must be one of {', '.join(REFITS)}, not {self.refit!r}")
        if self.min_answers < 2:
            raise ConfigError(f"min_answers must be at least 2, got {self.min_answers}")
        if not 0 <= self.error_prior < 1:
            raise ConfigError(f"error_prior must be at least 0 and below 1, got {self.error_prior}")


@dataclass
class Outcome:
    """What an answer did: stored (its id), or a conflict for the reviewer to decide."""

    answer_id: Optional[int] = None
    conflict: Optional[Conflict] = None
    refit: Dict[str, float] = field(default_factory=dict)


class ReviewSession:
    def __init__(self, run: ReviewRun, store: AnswerStore, options: Optional[ReviewOptions] = None):
        self.run, self.store = run, store
        self.options = options or ReviewOptions()
        self.selector = SELECTORS.build(self.options.selector)
        self.rng = np.random.default_rng(self.options.seed)
        self.lock = threading.RLock()
        data = run.data
        self.pair_of: Dict[Tuple[int, int], int] = {
            (min(a, b), max(a, b)): k for k, (a, b) in enumerate(zip(data.pair_a.tolist(), data.pair_b.tolist(), strict=True))}
        self.leases: Dict[int, Tuple[str, float]] = {}  # pair -> (client, expiry)
        self.thresholds = dict(data.settings.thresholds)
        self.refits: Dict[str, Dict[str, float]] = {}
        self.calibrations: Dict[str, Calibrator] = {}  # dataset -> its answers' calibration (refit.py)
        self.ignored = 0  # stored answers naming images this run does not hold
        self.redoing: Dict[str, Tuple[object, List[Answer]]] = {}  # dataset -> (token, answers since)
        self.state = REVIEW_TASKS.get(run.task)(run, self.thresholds)
        if self.options.background:
            self.state.offload()
        self._rebuild()

    def close(self) -> None:
        """Stop the worker the background work runs in (the answers file stays open: the store's own)."""
        self.state.close()

    # ------------------------------------------------------------------ state

    def _answers(self) -> List[Tuple[StoredAnswer, Answer]]:
        found, ignored = [], 0
        for stored in self.store.active():
            a, b = self.run.row_of.get(stored.image_a), self.run.row_of.get(stored.image_b)
            if a is None or b is None:
                ignored += 1
                continue
            found.append((stored, Answer(stored.id, a, b, stored.verdict, stored.reviewer)))
        self.ignored = ignored
        return found

    def _rebuild(self) -> None:
        """Closure, thresholds and decisions from the stored answers (at start, after undo or overrule)."""
        answers = self._answers()
        self.redoing.clear()  # a re-clustering under way belongs to the state being replaced
        self.closure = Closure(self.run.anchors(), [a for _, a in answers])
        self.passed = {self.pair_of[k] for s, a in answers if s.verdict in (NOT_SURE, SKIP)
                       for k in [(min(a.a, a.b), max(a.a, a.b))] if k in self.pair_of}
        # answered directly (kept, or overruled in a contradiction): never asked again, not even as a
        # verification question
        self.answered = set()
        for stored in self.store.everything():
            a, b = self.run.row_of.get(stored.image_a), self.run.row_of.get(stored.image_b)
            pair = None if a is None or b is None else self.pair_of.get((min(a, b), max(a, b)))
            if pair is not None and stored.verdict in LINKS and stored.status in (ACTIVE, OVERRULED):
                self.answered.add(pair)
        self.thresholds.clear()
        self.thresholds.update(self.run.data.settings.thresholds)
        self.refits.clear()
        for dataset in sorted(set(self.thresholds)):
            inputs = self._refit_inputs(dataset)
            self._refit(dataset, inputs)
            self._recalibrate(dataset, inputs)
        self.state.reset(self.closure)

    def _refits_here(self, dataset: str) -> bool:
        refit = self.options.refit
        return refit == "always" or (refit == "auto" and not self.run.data.settings.own_threshold.get(dataset, False))

    def _refit_inputs(self, dataset: str) -> Tuple[np.ndarray, ...]:
        """(a, b, p, same) of `dataset`'s answered *same* / *different* pairs: rows, probability, verdict."""
        a, b, p, same = [], [], [], []
        for _, answer in self._answers():
            k = self.pair_of.get((min(answer.a, answer.b), max(answer.a, answer.b)))
            if answer.verdict in LINKS and k is not None and self.state.pair_dataset[k] == dataset:
                a.append(answer.a)
                b.append(answer.b)
                p.append(self.run.data.pair_p[k])
                same.append(answer.verdict == SAME)
        return np.array(a, np.int64), np.array(b, np.int64), np.array(p, np.float64), np.array(same, bool)

    def _due(self, dataset: str) -> Optional[Tuple[np.ndarray, ...]]:
        """`dataset`'s re-fit inputs when it is re-fitted after this answer (every REFIT_EVERY
        answers from min_answers on), else None."""
        if self.options.refit == "never":
            return None
        inputs = self._refit_inputs(dataset)
        n = len(inputs[0])
        return inputs if n >= self.options.min_answers and (n - self.options.min_answers) % REFIT_EVERY == 0 else None

    def _recalibrate(self, dataset: str, inputs: Tuple[np.ndarray, ...]) -> None:
        """Re-calibrate `dataset`'s probabilities on its answered pairs `inputs` (the run's own while too few)."""
        found = None if self.options.refit == "never" else answers_calibration(inputs[2], inputs[3],
                                                                               self.options.min_answers)
        if found is None:
            self.calibrations.pop(dataset, None)
        else:
            self.calibrations[dataset] = found

    def shown(self, dataset: str, p: float) -> float:
        """A probability of `dataset` (or its threshold) as the page shows it: through the answers' calibration."""
        return float(recalibrated(self.calibrations.get(dataset), np.array([p]))[0])

    def _fitted(self, dataset: str, inputs: Tuple[np.ndarray, ...]) -> Optional[float]:
        """The threshold the answers `inputs` re-fit (None: too few); no state is changed."""
        return self.state.refit(dataset, *inputs, self.run.data.settings.thresholds[dataset], self.options.min_answers)

    def _set_threshold(self, dataset: str, found: Optional[float], answers: int) -> Optional[float]:
        """Set `dataset`'s threshold to the re-fitted `found` (the run's own when None); the new value, if it changed."""
        original = self.run.data.settings.thresholds[dataset]
        value = original if found is None else found
        if abs(value - self.thresholds[dataset]) < 1e-12:
            return None
        self.thresholds[dataset] = value
        if found is None:
            self.refits.pop(dataset, None)
        else:
            self.refits[dataset] = {"from": original, "to": value, "answers": answers}
        return value

    def _refit(self, dataset: str, inputs: Tuple[np.ndarray, ...]) -> Optional[float]:
        """Re-fit `dataset`'s threshold from its answered pairs `inputs` now (see the module doc); the
        new value, if it changed."""
        if not self._refits_here(dataset):
            return None
        return self._set_threshold(dataset, self._fitted(dataset, inputs), len(inputs[0]))

    def _refit_in_background(self, dataset: str, inputs: Tuple[np.ndarray, ...]) -> None:
        """The re-fit and the re-decision of `dataset` in a thread, outside the lock (the server: the
        next pair does not wait for them); the answers given meanwhile are replayed on the result."""
        constraints = self.closure.pair_constraints(self.state.rows(dataset))
        token: object = object()
        self.redoing[dataset] = (token, [])

        def work() -> None:
            try:
                found = self._fitted(dataset, inputs)
                original = self.run.data.settings.thresholds[dataset]
                threshold = original if found is None else found
                labels = self.state.recompute(constraints, dataset, threshold)
            except CancelledError:
                return  # the session closed meanwhile
            with self.lock:
                if self.redoing.get(dataset, (None,))[0] is not token:
                    return  # a later re-fit or a rebuild replaced this one
                _, since = self.redoing.pop(dataset)
                if self._set_threshold(dataset, found, len(inputs[0])) is None:
                    return  # the threshold stayed: the decisions kept up with every answer already
                self.state.install(dataset, labels)
                for answer in since:
                    self.state.after(self.closure, answer)

        threading.Thread(target=work, name=f"review-refit-{dataset}", daemon=True).start()

    # ------------------------------------------------------------------ pairs

    def _open(self, client: str, dataset: Optional[str]) -> Candidates:
        now = time.monotonic()
        for pair in [k for k, (owner, expiry) in self.leases.items() if expiry < now or owner == client]:
            del self.leases[pair]
        found = self.state.candidates(self.closure)
        if self.options.error_prior > 0 and self.selector.verifies:
            found = found.joined(self.state.doubted(self.closure, self.options.error_prior))
        keep = ~np.isin(found.pair, list(self.leases) + list(self.passed) + list(self.answered))
        if dataset is not None:
            keep &= self.state.pair_dataset[found.pair] == dataset
        return found.take(keep)

    def next_pair(self, client: str, dataset: Optional[str] = None) -> Optional[int]:
        """The pair to ask `client` next (leased to it), or None when none is left open."""
        with self.lock:
            found = self._open(client, dataset)
            if not len(found):
                return None
            pair = int(found.pair[self.selector.pick(found, self.rng)])
            self.leases[pair] = (client, time.monotonic() + self.options.lease_s)
            return pair

    def lease(self, client: str, pair: int) -> bool:
        """Hand `pair` to `client` (a pair shown again after undo); False when another client holds it."""
        with self.lock:
            owner = self.leases.get(pair)
            if owner is not None and owner[0] != client and owner[1] >= time.monotonic():
                return False
            self.leases[pair] = (client, time.monotonic() + self.options.lease_s)
            return True

    def datasets(self) -> List[str]:
        return sorted(set(self.state.pair_dataset.tolist()))

    # ------------------------------------------------------------------ answers

    def answer(self, client: str, reviewer: str, pair: int, verdict: str, keep: Optional[str] = None) -> Outcome:
        """Store `verdict` on `pair` (see the module doc); `keep` settles a conflict: "new" or "earlier"."""
        if verdict not in VERDICTS:
            raise ReviewRefused(f"unknown answer {verdict!r}: one of {', '.join(VERDICTS)}", 400)
        if keep not in (None, "new", "earlier"):
            raise ReviewRefused(f"keep must be 'new' or 'earlier', not {keep!r}", 400)
        if not reviewer.strip():
            raise ReviewRefused("give a reviewer name first", 400)
        if not 0 <= pair < len(self.run.data.pair_a):
            raise ReviewRefused(f"this run has no pair {pair}", 404)
        with self.lock:
            owner = self.leases.get(pair)
            if owner is not None and owner[0] != client and owner[1] >= time.monotonic():
                raise ReviewRefused("another reviewer holds this pair now")
            a, b = int(self.run.data.pair_a[pair]), int(self.run.data.pair_b[pair])
            conflict = self.closure.check(a, b, verdict)
            if conflict is not None and keep is None:
                return Outcome(conflict=conflict)
            overrule: List[int] = []
            status = ACTIVE
            if conflict is not None and keep == "earlier":
                status = OVERRULED
            elif conflict is not None:
                overrule = self._to_overrule(a, b, verdict)
            answer_id = self._store(client, reviewer, pair, verdict, status, overrule)
            self.leases.pop(pair, None)
            if verdict in LINKS:
                self.answered.add(pair)
            outcome = Outcome(answer_id)
            if status != ACTIVE:
                return outcome
            dataset = str(self.state.pair_dataset[pair])
            if overrule:
                self._rebuild()
                return outcome
            answer = Answer(answer_id, a, b, verdict, reviewer)
            self.closure.add(answer)
            if verdict in LINKS:
                self.state.after(self.closure, answer)
                if dataset in self.redoing:
                    self.redoing[dataset][1].append(answer)
                inputs = self._due(dataset)
                if inputs is not None:
                    self._recalibrate(dataset, inputs)
                    if not self._refits_here(dataset):
                        inputs = None
                if inputs is not None and self.options.background:
                    self._refit_in_background(dataset, inputs)
                elif inputs is not None:
                    changed = self._set_threshold(dataset, self._fitted(dataset, inputs), len(inputs[0]))
                    if changed is not None:
                        self.state.install(dataset, self.state.recompute(
                            self.closure.pair_constraints(self.state.rows(dataset)), dataset, changed))
                        outcome.refit[dataset] = changed
            else:
                self.passed.add(pair)
            return outcome

    def _to_overrule(self, a: int, b: int, verdict: str) -> List[int]:
        """Every earlier answer to overrule so that the new one holds (several chains may join two images)."""
        overrule: List[int] = []
        closure = self.closure
        while True:
            conflict = closure.check(a, b, verdict)
            if conflict is None:
                return overrule
            if not conflict.against:
                raise ReviewRefused("the dataset's own labels say otherwise, and they cannot be overruled here")
            overrule += conflict.against
            closure = Closure(self.run.anchors(), [x for _, x in self._answers() if x.id not in overrule])

    def _store(self, client: str, reviewer: str, pair: int, verdict: str, status: str, overrule: List[int]) -> int:
        data = self.run.data
        image_a, image_b = (data.images["image_id"].iloc[int(r)] for r in (data.pair_a[pair], data.pair_b[pair]))
        try:
            return self.store.add(image_a, image_b, verdict, reviewer.strip(), client=client,
                                  dataset=str(self.state.pair_dataset[pair]), probability=float(data.pair_p[pair]),
                                  status=status, overrule=overrule)
        except AnswerClash as err:
            raise ReviewRefused(f"{err}: reload to see it") from err

    def undo(self, reviewer: str) -> Optional[int]:
        """Take back `reviewer`'s last active answer; the pair it was about (to ask again), if any."""
        with self.lock:
            last = self.store.last_active(reviewer)
            if last is None:
                raise ReviewRefused("nothing to undo: no answer of yours is active", 400)
            self.store.set_status(last.id, UNDONE)
            self._rebuild()
            rows = (self.run.row_of.get(last.image_a), self.run.row_of.get(last.image_b))
            if None in rows:
                return None
            return self.pair_of.get(ordered(*rows))

    # ------------------------------------------------------------------ summaries

    def progress(self) -> Dict[str, object]:
        with self.lock:
            answers = self.store.active()
            found = self.state.candidates(self.closure)
            counts = {v: sum(a.verdict == v for a in answers) for v in VERDICTS}
            return {"answers": len(answers), "by_verdict": counts,
                    "ambiguous": int((found.flip >= AMBIGUOUS).sum()), "open": len(found),
                    "changes": self.state.changes(self.closure), "refits": dict(self.refits),
                    "thresholds": dict(self.thresholds), "ignored": self.ignored}

    def decide(self) -> Decisions:
        with self.lock:
            return self.state.decide(self.closure)

"""`reidzoo-review simulate`: an oracle answers from the true identities, through the session the
page uses, and the run is re-decided under its answers.

The truth is a CSV of `image_id, identity` (the AnimalCLEF solution layout) or `file, identity`
(a folder dataset's relative paths, as predictions.csv names them). Images the truth does not name
keep the identity the run knew (database or train images). Each dataset gets `answers` questions
in turn (a dataset runs out when no pair is left open); with `error_rate` the oracle gives the
wrong answer that often (seeded). A contradiction (a verification question, `--error-prior`,
answered against the closure) is settled as the page asks a person to: the oracle looks again and
keeps whichever side is true, wrong that often too; where only the dataset's own labels stand
against the new answer, the earlier side is kept (labels cannot be overruled).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from core.errors import DataError
from engine.review.constraints import DIFFERENT, SAME
from engine.review.run import ReviewRun
from engine.review.session import ReviewSession

ORACLE = "oracle"


def read_truth(path, run: ReviewRun) -> np.ndarray:
    """The true identity of every image of `run` ('' where neither the truth nor the run knows it)."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read the truth {path}: {err}") from err
    key = next((c for c in ("image_id", "file") if c in frame.columns), None)
    if key is None or "identity" not in frame.columns:
        raise DataError(f"{path} needs the columns image_id (or file) and identity; it has {', '.join(frame.columns)}")
    dataset = run.images["dataset"].to_numpy(dtype=object)
    labels = run.images["identity"].to_numpy(dtype=object)
    truth = np.where(labels != "", dataset + "\x1f" + labels, "").astype(object)
    for name, identity in zip(frame[key], frame["identity"], strict=True):
        row = run.row_of.get(name)
        if row is not None and identity:
            truth[row] = f"{dataset[row]}\x1f{identity}"
    known = truth != ""
    queries = run.images["is_query"].to_numpy(bool)
    if not (known & queries).any():
        raise DataError(f"{path} names none of the run's {int(queries.sum())} query images by {key}")
    return truth.astype(str)


@dataclass
class ShownPairs:
    """The pairs the oracle was asked, each with the probability the page showed for it, the run's own,
    whether the answers' calibration made the first (engine/review/refit.py), and the truth."""

    shown: List[float] = field(default_factory=list)
    run: List[float] = field(default_factory=list)
    recalibrated: List[bool] = field(default_factory=list)
    same: List[bool] = field(default_factory=list)

    def add(self, shown: float, run: float, recalibrated: bool, same: bool) -> None:
        self.shown.append(shown)
        self.run.append(run)
        self.recalibrated.append(recalibrated)
        self.same.append(same)

    def extend(self, other: ShownPairs) -> None:
        for name in ("shown", "run", "recalibrated", "same"):
            getattr(self, name).extend(getattr(other, name))

    def brier(self) -> Dict[str, float]:
        """Brier scores of the run's probability and of the shown one, over the pairs shown re-calibrated."""
        at = np.asarray(self.recalibrated, bool)
        same = np.asarray(self.same, np.float64)[at]
        return {"pairs": int(at.sum()),
                "brier_run": float(np.mean((np.asarray(self.run)[at] - same) ** 2)) if at.any() else float("nan"),
                "brier_shown": float(np.mean((np.asarray(self.shown)[at] - same) ** 2)) if at.any() else float("nan")}


@dataclass
class Simulated:
    asked: Dict[str, int]  # per dataset
    wrong: int  # answers the oracle gave wrongly on purpose
    conflicts: int  # contradictions met
    overruled: int  # of those, settled by overruling the earlier answers
    shown: ShownPairs  # what the page would have shown for each pair asked


def simulate(session: ReviewSession, truth: np.ndarray, answers: int, error_rate: float = 0.0,
             rng: Optional[np.random.Generator] = None, datasets: Optional[List[str]] = None) -> Simulated:
    """Answer pairs from `truth` until every dataset holds `answers` of the oracle's answers (those
    stored before count, so a session can be taken further step by step, as the benchmark does)."""
    if not 0 <= error_rate < 1:
        raise DataError(f"--error-rate must be at least 0 and below 1, got {error_rate}")
    rng = rng if rng is not None else np.random.default_rng(0)
    data = session.run.data
    pending = list(datasets or session.datasets())
    asked = {d: 0 for d in pending}
    for stored in session.store.everything():
        if stored.client == ORACLE and stored.dataset in asked:
            asked[stored.dataset] += 1
    wrong = conflicts = overruled = 0
    shown = ShownPairs()
    while pending:
        for dataset in list(pending):
            pair = session.next_pair(ORACLE, dataset) if asked[dataset] < answers else None
            if pair is None:
                pending.remove(dataset)
                continue
            a, b = truth[data.pair_a[pair]], truth[data.pair_b[pair]]
            if not a or not b:
                verdict = "not_sure"
            else:
                p = float(data.pair_p[pair])
                shown.add(session.shown(dataset, p), p, dataset in session.calibrations, a == b)
                verdict = SAME if a == b else DIFFERENT
                if rng.random() < error_rate:
                    verdict = DIFFERENT if verdict == SAME else SAME
                    wrong += 1
            outcome = session.answer(ORACLE, ORACLE, pair, verdict)
            if outcome.conflict is not None:
                conflicts += 1
                new_is_true = verdict == (SAME if a == b else DIFFERENT)
                if rng.random() < error_rate:
                    new_is_true = not new_is_true
                keep = "new" if new_is_true and outcome.conflict.against else "earlier"
                overruled += keep == "new"
                session.answer(ORACLE, ORACLE, pair, verdict, keep=keep)
            asked[dataset] += 1
    return Simulated(asked, wrong, conflicts, overruled, shown)

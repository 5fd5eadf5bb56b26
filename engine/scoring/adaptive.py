"""Adaptive shortlist (rerank.adaptive): queries whose global decision is already certain skip the
shortlist scorers (keypoint matching, pair heads) and keep the global scorers' vote.

A query is certain at margin m when its global vote (the calibrated soft vote of the global
scorers alone) is m or more below its threshold (a new individual whatever the matcher adds to
the identities it saw), or m or more above it with its best identity m or more above the second.
The margin is chosen on the held-out database split that tunes the threshold, at that threshold:
the smallest of MARGINS (the most queries skipped) whose validation score is not below the full
vote's; none (every query matched) when each lowers it. The validation pairs are already matched
for the full vote, so choosing the margin matches nothing more.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

from engine.retrieval import Candidates

MARGINS = (0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05)  # calibrated probability, widest first


@dataclass
class MarginChoice:
    """The margin chosen (None: every query is matched) and what each margin did on the validation queries."""

    margin: Optional[float]
    full_score: float  # matching every query
    validation_score: Dict[str, float]  # per margin
    skipped_fraction: Dict[str, float]  # per margin: queries left unmatched

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def certain(global_vote: Candidates, limits: np.ndarray, margin: Optional[float]) -> np.ndarray:
    """(Q,) bool: the queries whose global vote decides at `margin` (none when margin is None)."""
    if margin is None:
        return np.zeros(len(global_vote), bool)
    top = np.array([c[0][1] if c else -np.inf for c in global_vote], np.float64)
    second = np.array([c[1][1] if len(c) > 1 else 0.0 for c in global_vote], np.float64)
    new = top <= limits - margin
    known = (top >= limits + margin) & (top - second >= margin)
    return new | known


def mixed(global_vote: Candidates, full_vote: Candidates, sure: np.ndarray) -> Candidates:
    """The global vote where `sure`, the full vote elsewhere."""
    return [g if s else f for g, f, s in zip(global_vote, full_vote, sure.tolist(), strict=True)]


def choose_margin(global_vote: Candidates, full_vote: Candidates, limits: np.ndarray,
                  score: Callable[[Candidates], float], margins: Sequence[float] = MARGINS) -> MarginChoice:
    """The smallest margin whose mixed vote scores at least the full vote's `score`, with what each
    margin scored and the fraction of queries it left unmatched."""
    full = round(score(full_vote), 9)
    tried, skipped = {}, {}
    for margin in margins:
        sure = certain(global_vote, limits, margin)
        tried[str(margin)] = round(score(mixed(global_vote, full_vote, sure)), 6)
        skipped[str(margin)] = round(float(sure.mean()) if len(sure) else 0.0, 4)
    good = [m for m in margins if round(tried[str(m)], 6) >= round(full, 6)]
    chosen = min(good) if good else None
    return MarginChoice(chosen, round(full, 6), tried, skipped)

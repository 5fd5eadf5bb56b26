"""Closest-match suggestions for misspelt names and keys."""
from __future__ import annotations

import difflib
from typing import Iterable, Optional


def closest(name: str, choices: Iterable[str]) -> Optional[str]:
    """The choice `name` most likely misspells, or None when none is close."""
    close = difflib.get_close_matches(name, sorted(set(choices)), n=1, cutoff=0.5)
    return close[0] if close else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return "; did you mean 'x'?" for the closest choice, or a list of valid choices."""
    choices = sorted(set(choices))
    match = closest(name, choices)
    if match:
        return f"; did you mean '{match}'?"
    if len(choices) <= 30:
        return f"; valid: {', '.join(choices)}"
    return ""

"""Learning-rate schedule: linear warmup, then cosine decay to a floor.

With a wall-clock budget (`train.max_minutes`) the cosine follows whichever runs out first, the
steps or the time, so a run stopped by its budget has still annealed to the floor instead of
ending at a high learning rate.
"""
from __future__ import annotations

import math
from time import monotonic  # looked up at each call, so tests can replace the clock
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm


def warmup_cosine_factor(
    step: int, *, warmup_steps: int, total_steps: int, min_ratio: float, progress_floor: float = 0.0
) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based).

    `progress_floor` is the fraction of the time budget already spent: the decay is at least
    that far along.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, max((step - warmup_steps) / decay_steps, progress_floor))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    warmup_steps: int,
    total_steps: int,
    min_ratio: float,
    time_fraction: Optional[Callable[[], float]] = None,
):
    # Warmup never takes more than a fifth of a short run.
    warmup_steps = min(warmup_steps, max(0, total_steps // 5))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: warmup_cosine_factor(
            step,
            warmup_steps=warmup_steps,
            total_steps=total_steps,
            min_ratio=min_ratio,
            progress_floor=time_fraction() if time_fraction is not None else 0.0,
        ),
    )


class TimeBudget:
    """Wall-clock budget of a run, carried across resumes through `spent_before` (the seconds a
    checkpoint recorded), so a resumed run follows the same schedule and stops at the same total."""

    def __init__(self, minutes: float, spent_before: float = 0.0):
        self.seconds = minutes * 60.0
        self.spent_before = spent_before
        self._start = monotonic()

    @property
    def enabled(self) -> bool:
        return self.seconds > 0

    def spent(self) -> float:
        return self.spent_before + monotonic() - self._start

    def fraction(self) -> float:
        return min(1.0, self.spent() / self.seconds) if self.enabled else 0.0


def progress_bar(budget: TimeBudget, total_steps: int, step: int, disable: bool) -> tqdm:
    """Steps of the planned schedule; under a time budget, which ends a run long before its planned
    steps, seconds of the budget instead, with the step count in the postfix."""
    if budget.enabled:
        seconds = max(1, round(budget.seconds))
        return tqdm(total=seconds, initial=min(round(budget.spent()), seconds), desc="train (time budget)", disable=disable,
                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} s [{elapsed}<{remaining}{postfix}]")
    return tqdm(total=total_steps, initial=step, desc="train", disable=disable)


def advance(bar: tqdm, budget: TimeBudget, step: int, **postfix: str) -> None:
    if budget.enabled:
        bar.update(min(round(budget.spent()), bar.total) - bar.n)
        postfix = dict(step=str(step), **postfix)
    else:
        bar.update(1)
    bar.set_postfix(**postfix)

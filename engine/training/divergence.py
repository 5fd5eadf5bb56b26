"""A run whose numbers stop being finite stops, with one message naming the step.

A NaN or infinite loss would step the optimizer into NaN weights, and everything after it (EMA,
best/, checkpoints, the export) would follow them. So the loss is checked before each optimizer
step, and the weights before each checkpoint is written: the run ends there with a `UserError`,
the weights on disk (the last checkpoint, best/) are the last finite ones. A step is never skipped
and counted instead: a loss that is NaN once is a sign (a learning rate too high, a float16
overflow, a broken image) worth stopping for, and a skipped step changes the run silently.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Mapping, Optional

from torch import nn

from core.errors import UserError
from zoo.finite import nonfinite_weights

ADVICE = "lower train.lr, keep train.clip_grad above 0, or train in float32 (train.mixed_precision=no)"


class Diverged(UserError):
    """The loss or the weights are no longer finite numbers."""


LastCheckpoint = Callable[[], Optional[Path]]  # asked only when a run stops: finding it reads the checkpoints


def _kept(last_checkpoint: LastCheckpoint) -> str:
    last = last_checkpoint()
    if last is None:
        return "no checkpoint had been written yet"
    return f"the last checkpoint, {last}, holds the last finite weights (train.py --resume)"


def check_loss(loss: float, parts: Mapping[str, float], *, step: int, epoch: int, batch: int,
               last_checkpoint: LastCheckpoint) -> None:
    """Stop before optimizer step `step` when its loss (mean over processes) is NaN or infinite."""
    if math.isfinite(loss):
        return
    bad_parts = [f"{name}={value}" for name, value in parts.items() if not math.isfinite(float(value))]
    detail = f" ({', '.join(bad_parts)})" if bad_parts else ""
    raise Diverged(f"the loss is {loss}{detail} at step {step} (epoch {epoch + 1}, batch {batch + 1}): training "
                   f"stopped before that step changed the weights; {_kept(last_checkpoint)}. To go on: {ADVICE}")


def check_gradients(norm: Optional[float], *, step: int, last_checkpoint: LastCheckpoint) -> None:
    """Stop before optimizer step `step` when the gradient norm clipping measured is NaN or infinite
    (a finite loss whose gradients overflowed). Not under float16, where the gradient scaler skips
    such a step itself and lowers its scale."""
    if norm is None or math.isfinite(norm):
        return
    raise Diverged(f"the gradients are {norm} at step {step} (their norm; the loss was finite): training "
                   f"stopped before that step changed the weights; {_kept(last_checkpoint)}. To go on: {ADVICE}")


def check_weights(modules: Mapping[str, Optional[nn.Module]], *, step: int, last_checkpoint: LastCheckpoint) -> None:
    """Stop before writing checkpoint `step` when any of `modules` ({what: module}) holds NaN or inf."""
    for what, module in modules.items():
        problem = None if module is None else nonfinite_weights(module)
        if problem:
            raise Diverged(f"after step {step} the {what} are not finite: {problem}; checkpoint {step} was not written and "
                           f"{_kept(last_checkpoint)}. To go on: {ADVICE}")

"""The lr schedule: warmup, cosine to the floor, and the wall-clock budget pulling the decay forward."""
from __future__ import annotations

import math

import pytest
import torch

from engine.training import schedule
from engine.training.schedule import TimeBudget, build_scheduler, warmup_cosine_factor

KW = dict(warmup_steps=10, total_steps=110, min_ratio=0.01)


def test_warmup_is_linear_then_cosine_reaches_the_floor():
    assert warmup_cosine_factor(0, **KW) == pytest.approx(0.1)
    assert warmup_cosine_factor(9, **KW) == pytest.approx(1.0)
    assert warmup_cosine_factor(10, **KW) == pytest.approx(1.0)
    # Half way through the decay the cosine is at the midpoint between peak and floor.
    assert warmup_cosine_factor(60, **KW) == pytest.approx(0.01 + 0.99 * 0.5)
    assert warmup_cosine_factor(110, **KW) == pytest.approx(0.01)
    assert warmup_cosine_factor(500, **KW) == pytest.approx(0.01)


def test_spent_time_budget_moves_the_decay_forward_but_never_back():
    # Step 20 of 110 is 10% into the decay; with 75% of the time budget spent the lr is at 75%.
    assert warmup_cosine_factor(20, **KW, progress_floor=0.75) == pytest.approx(
        0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.75))
    )
    assert warmup_cosine_factor(100, **KW, progress_floor=0.1) == warmup_cosine_factor(100, **KW)
    assert warmup_cosine_factor(20, **KW, progress_floor=1.0) == pytest.approx(0.01)


def test_scheduler_reads_the_time_fraction_at_each_step():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    fraction = {"value": 0.0}
    scheduler = build_scheduler(optimizer, **KW, time_fraction=lambda: fraction["value"])
    for _ in range(15):
        optimizer.step()
        scheduler.step()
    assert scheduler.get_last_lr()[0] > 0.99
    fraction["value"] = 1.0
    optimizer.step()
    scheduler.step()
    assert scheduler.get_last_lr()[0] == pytest.approx(0.01)


def test_time_budget_counts_time_spent_before_a_resume(monkeypatch):
    clock = {"now": 500.0}
    monkeypatch.setattr(schedule, "monotonic", lambda: clock["now"])
    assert not TimeBudget(0).enabled and TimeBudget(0).fraction() == 0.0
    budget = TimeBudget(1.0, spent_before=30.0)  # a checkpoint recorded 30 s of a 60 s budget
    assert budget.enabled and budget.spent() == 30.0 and budget.fraction() == 0.5
    clock["now"] += 15.0
    assert budget.spent() == 45.0 and budget.fraction() == 0.75
    clock["now"] += 60.0
    assert budget.fraction() == 1.0
    assert TimeBudget(1.0, spent_before=90.0).fraction() == 1.0

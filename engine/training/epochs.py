"""The epoch loop every trainer shares: resumable epochs, the time budget, checkpoints, validation.

A trainer (re-identification models in loop.py, detectors in engine/detection/loop.py) sets the
attributes listed on `EpochLoop`, implements its abstract hooks and calls `_open_run` once its
state is restored; `run_epochs` then trains from the state a checkpoint restored (epoch, batch
within it, step) until the planned steps or the wall-clock budget run out, validating every
`val.every_epochs` epochs and at the end.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from abc import ABC, abstractmethod
from functools import partial
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from timm.utils import ModelEmaV3
from torch import nn

from engine.training.checkpoint import last_complete
from engine.training.divergence import check_gradients, check_loss
from engine.training.schedule import TimeBudget, advance, progress_bar


def make_ema(module: nn.Module, decay: float) -> ModelEmaV3:
    """An EMA of `module` whose decay ramps up to `decay` (1 - (1 + step) ** -2/3, as ultralytics'
    ramp does): with a fixed 0.999 from the first step, the average of a short run would still be
    mostly the random initial weights, BatchNorm statistics included, after hundreds of steps."""
    return ModelEmaV3(module, decay=decay, use_warmup=True)


class EpochLoop(ABC):
    # Set by the trainer: config (with .train and .val.every_epochs), accelerator, state dict
    # (epoch, next_batch, step), budget, scheduler, data (.batch_sampler, .loader), the module in
    # train mode, and the plan in steps.
    cfg: Any
    acc: Any
    state: Dict[str, Any]
    budget: TimeBudget
    scheduler: Any
    data: Any
    trained_module: nn.Module
    total_steps: int
    steps_per_epoch: int
    train_seconds: float = 0.0
    _last_loss: float = math.nan
    _time_fraction: float = 0.0

    optimizer: torch.optim.Optimizer
    ema: Optional[nn.Module]
    ema_source: nn.Module  # the unwrapped module the EMA follows
    out: Path
    writer: Any = None

    @abstractmethod
    def _forward_loss(self, batch: Any) -> Tuple[torch.Tensor, Dict[str, float]]:
        """(loss of one micro-batch, {part: value} for TensorBoard)."""

    @abstractmethod
    def _validate(self) -> Dict[str, float]:
        """Metrics on held-out data (logged, and recorded with the export)."""

    @abstractmethod
    def _checkpoint(self) -> None:
        """Write the full training state (every process calls it)."""

    def _start_epoch(self, epochs: int) -> None:  # noqa: B027 (an optional hook: most trainers need none)
        """Called before each epoch (and each resumed one) of the `epochs` planned."""

    def _open_run(self) -> None:
        """Start the budget (minus what a resumed checkpoint spent), the counters and TensorBoard."""
        self.budget = TimeBudget(self.cfg.train.max_minutes, spent_before=self.state["spent_seconds"])
        self._time_fraction = self.budget.fraction()
        self._step_loss, self._last_loss = 0.0, math.nan
        self.train_seconds = 0.0
        self.writer = None
        if self.acc.is_main_process:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tensorboard"))

    def run_epochs(self) -> Dict[str, float]:
        """Train to the end of the plan or the budget; the last validation's metrics ({} if none ran)."""
        cfg, acc, state = self.cfg, self.acc, self.state
        epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        bar = progress_bar(self.budget, self.total_steps, state["step"], disable=not acc.is_main_process)
        metrics: Dict[str, float] = {}
        stop = state["step"] >= self.total_steps or self._update_time_fraction()
        while not stop and state["epoch"] < epochs:
            epoch, start = state["epoch"], state["next_batch"]
            self._start_epoch(epochs)
            self.data.batch_sampler.set_epoch(epoch, start)
            n_batches = len(self.data.batch_sampler)
            self.trained_module.train()
            clock = time.perf_counter()
            for position, batch in enumerate(self.data.loader, start=start):
                if not self._micro_step(batch, position, n_batches):
                    continue
                # Time in data loading and optimizer steps only: validation and checkpoints excluded.
                now = time.perf_counter()
                self.train_seconds, clock = self.train_seconds + now - clock, now
                state["next_batch"] = position + 1
                advance(bar, self.budget, state["step"], loss=f"{self._last_loss:.3f}",
                        lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
                out_of_time = self._update_time_fraction()
                if out_of_time:
                    acc.print(f"stopping at step {state['step']}: train.max_minutes={cfg.train.max_minutes} reached")
                stop = out_of_time or state["step"] >= self.total_steps
                if stop:
                    break
                if cfg.train.checkpoint_every and state["step"] % cfg.train.checkpoint_every == 0:
                    self._checkpoint()
                    clock = time.perf_counter()
            epoch_done = state["next_batch"] >= n_batches
            if epoch_done:
                state["epoch"], state["next_batch"] = epoch + 1, 0
            if stop or (epoch_done and state["epoch"] % cfg.val.every_epochs == 0):
                metrics = self._validate()
            # After the validation, so that the checkpoint's best weights include this epoch's.
            if epoch_done and not stop and not cfg.train.checkpoint_every:
                self._checkpoint()
        bar.close()
        return metrics

    def _micro_step(self, batch: Any, position: int, n_batches: int) -> bool:
        """Forward/backward one micro-batch; True when it completed an optimizer step."""
        cfg, acc = self.cfg, self.acc
        is_step = (position + 1) % cfg.train.grad_accum == 0 or position + 1 == n_batches
        sync = contextlib.nullcontext() if is_step else acc.no_sync(self.trained_module)
        with sync:
            loss, parts = self._forward_loss(batch)
            acc.backward(loss / cfg.train.grad_accum)
        # The logged loss is the mean over the step's micro-batches (and, below, over processes).
        self._step_loss = self._step_loss + loss.detach().float() / cfg.train.grad_accum
        if not is_step:
            return False
        # Reduced before the step: every process must agree to stop before the weights change.
        mean_loss = acc.reduce(self._step_loss, reduction="mean").item()
        last_checkpoint = partial(last_complete, self.out / "checkpoints")
        check_loss(mean_loss, parts, step=self.state["step"] + 1, epoch=self.state["epoch"], batch=position,
                   last_checkpoint=last_checkpoint)
        if cfg.train.clip_grad > 0:
            norm = acc.clip_grad_norm_(self.trained_module.parameters(), cfg.train.clip_grad)
            if norm is not None and acc.mixed_precision != "fp16":
                check_gradients(float(norm), step=self.state["step"] + 1, last_checkpoint=last_checkpoint)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state["step"] += 1
        step = self.state["step"]
        if self.ema is not None:
            self.ema.update(self.ema_source, step=step)
        self._step_loss, self._last_loss = 0.0, mean_loss
        if self.writer is not None and (step % cfg.train.log_every == 0 or step == 1):
            self.writer.add_scalar("loss/total", mean_loss, step)
            for name, value in parts.items():
                self.writer.add_scalar(f"loss/{name}", value, step)
            self.writer.add_scalar("lr", self.scheduler.get_last_lr()[0], step)
            with open(self.out / "loss.jsonl", "a") as log:
                log.write(json.dumps({"step": step, "loss": mean_loss}) + "\n")
        return True

    def _update_time_fraction(self) -> bool:
        """Refresh the budget fraction the lr schedule follows; True once the budget is spent."""
        if not self.budget.enabled:
            return False
        fraction = self.budget.fraction()
        if self.acc.num_processes > 1:
            # Every rank must apply the same lr and stop at the same step: take the slowest clock.
            value = torch.tensor([fraction], device=self.acc.device, dtype=torch.float64)
            fraction = self.acc.reduce(value, reduction="max").item()
        self._time_fraction = fraction
        return fraction >= 1.0

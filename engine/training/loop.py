"""The training loop: Accelerate for devices and processes, exact resume, validation, export.

Read top to bottom: `train(cfg)` builds data, model, loss and optimizer, restores a checkpoint
when asked, then runs optimizer steps until the epochs (or `train.max_steps`) are done,
validating on held-out identities and exporting the best model to `<output_dir>/export/`.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from safetensors.torch import load_model
from timm.optim import param_groups_weight_decay
from timm.utils import ModelEmaV3
from torch import nn
from tqdm.auto import tqdm

from core.config import save_config, to_dict
from core.errors import ConfigError
from core.schema import TrainConfig
from engine.accel import make_accelerator
from engine.training.checkpoint import (
    BEST_DIR,
    BEST_FILE,
    BEST_WEIGHTS,
    check_run_dir,
    claim_run_dir,
    find_checkpoint,
    load_checkpoint,
    read_state,
    restore_best,
    save_checkpoint,
    write_best,
)
from engine.training.data import TrainData, build_train_data
from engine.training.schedule import TimeBudget, build_scheduler
from engine.training.validation import validate
from losses import build_criterion
from zoo import build_model, model_checksum, save_export


class TrainStep(nn.Module):
    """Model and loss as one module, so DDP averages the gradients of loss parameters too."""

    def __init__(self, model: nn.Module, criterion: nn.Module):
        super().__init__()
        self.model = model
        self.criterion = criterion

    def forward(self, images: torch.Tensor, labels: torch.Tensor):
        return self.criterion(self.model(images), labels, model=self.model)


def build_optimizer(cfg: TrainConfig, step: TrainStep) -> torch.optim.Optimizer:
    # No weight decay on norms and biases; loss parameters (class centres) learn faster.
    groups = param_groups_weight_decay(step.model, cfg.train.weight_decay)
    head = [p for p in step.criterion.parameters() if p.requires_grad]
    if head:
        groups.append({"params": head, "weight_decay": cfg.train.weight_decay, "lr": cfg.train.lr * cfg.train.head_lr_mult})
    for group in groups:
        group.setdefault("lr", cfg.train.lr)
    if cfg.train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.train.lr)
    if cfg.train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.train.lr, momentum=cfg.train.momentum, nesterov=True)
    raise ConfigError(f"unknown train.optimizer '{cfg.train.optimizer}'; valid: adamw, sgd")


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


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: Optional[str] = None):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.acc = make_accelerator(cfg.train.mixed_precision)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        torch.manual_seed(cfg.seed)
        check_run_dir(self.out)  # on every process, so that all of them stop on a foreign folder

        self.data: TrainData = build_train_data(
            cfg,
            num_replicas=self.acc.num_processes,
            rank=self.acc.process_index,
            pin_memory=self.acc.device.type == "cuda",
        )
        num_classes = len(self.data.label_map)
        self.model = build_model(cfg.model, num_classes=num_classes)
        self.model.input_size, self.model.mean, self.model.std = cfg.data.image_size, cfg.data.mean, cfg.data.std
        criterion = build_criterion(
            cfg.losses, embed_dim=self.model.embed_dim, num_classes=num_classes, distributed=self.acc.num_processes > 1
        )
        step_module = TrainStep(self.model, criterion)
        if cfg.train.channels_last:
            step_module = step_module.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(cfg, step_module)
        # Only once data, model and losses are built: a run that cannot start leaves the folder alone.
        if self.acc.is_main_process:
            claim_run_dir(self.out, fresh=resume is None, say=self.acc.print)
            save_config(cfg, self.out / "config.yaml")
        self.acc.wait_for_everyone()
        self.steps_per_epoch = math.ceil(len(self.data.batch_sampler) / cfg.train.grad_accum)
        self.total_steps = cfg.train.max_steps or cfg.train.epochs * self.steps_per_epoch
        # Fraction of train.max_minutes spent, agreed by all ranks: the lr schedule reads it.
        self._time_fraction = 0.0
        self.scheduler = build_scheduler(
            optimizer,
            warmup_steps=cfg.train.warmup_steps,
            total_steps=self.total_steps,
            min_ratio=cfg.train.min_lr_ratio,
            time_fraction=lambda: self._time_fraction,
        )
        self.step_module, self.optimizer = self.acc.prepare(step_module, optimizer)
        self.ema = ModelEmaV3(self.model, decay=cfg.train.ema_decay) if cfg.train.ema else None

        self.state: Dict[str, Any] = {
            "epoch": 0, "next_batch": 0, "step": 0, "best": None, "best_step": None, "spent_seconds": 0.0
        }
        if resume is not None:
            self._resume(find_checkpoint(self.out, resume, warn=self.acc.print))
        self.budget = TimeBudget(cfg.train.max_minutes, spent_before=self.state["spent_seconds"])
        self._time_fraction = self.budget.fraction()
        self._step_loss, self._last_loss = 0.0, math.nan
        self.train_seconds = 0.0
        self.writer = None
        if self.acc.is_main_process:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tensorboard"))

    # -- state -------------------------------------------------------------------------------------
    def _resume(self, path: Path) -> None:
        saved = read_state(path)
        if saved.get("label_map") != self.data.label_map:
            raise ConfigError(
                f"checkpoint {path} was trained on {len(saved.get('label_map') or {})} identities that do not "
                f"match the {len(self.data.label_map)} of the current data; resume with the same data and seed"
            )
        state = load_checkpoint(
            self.acc, path, module=self.acc.unwrap_model(self.step_module), optimizer=self.optimizer,
            scheduler=self.scheduler, ema=self.ema, config=to_dict(self.cfg),
        )
        self.state.update({k: state[k] for k in self.state if k in state})
        if self.cfg.val.export == "best" and not (path / BEST_FILE).is_file():
            # Written with val.export=last: no best weights to go with the best metric, so start afresh.
            self.state["best"], self.state["best_step"] = None, None
        if self.acc.is_main_process:
            restore_best(self.out, path, self.state)
        self.acc.wait_for_everyone()
        self.acc.print(f"resumed from {path} at step {self.state['step']} (epoch {self.state['epoch']})")

    def _checkpoint(self) -> None:
        self.state["spent_seconds"] = self.budget.spent()
        best = self.out / BEST_DIR / BEST_WEIGHTS
        keep_best = self.cfg.val.export == "best" and self.state["best_step"] is not None and best.is_file()
        save_checkpoint(
            self.acc,
            self.out / "checkpoints",
            step=self.state["step"],
            module=self.acc.unwrap_model(self.step_module),
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            ema=self.ema,
            state=dict(self.state, label_map=self.data.label_map, config=to_dict(self.cfg)),
            keep_last=self.cfg.train.keep_last,
            best_weights=best if keep_best else None,
        )

    def eval_model(self) -> nn.Module:
        """The weights evaluated and exported: the EMA copy when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    # -- loop --------------------------------------------------------------------------------------
    def fit(self) -> Dict[str, Any]:
        cfg, acc, state = self.cfg, self.acc, self.state
        epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        bar = progress_bar(self.budget, self.total_steps, state["step"], disable=not acc.is_main_process)
        metrics: Dict[str, float] = {}
        stop = state["step"] >= self.total_steps or self._update_time_fraction()
        while not stop and state["epoch"] < epochs:
            epoch, start = state["epoch"], state["next_batch"]
            self.data.batch_sampler.set_epoch(epoch, start)
            n_batches = len(self.data.batch_sampler)
            self.step_module.train()
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
        if not metrics:  # resumed from the end of the schedule: nothing trained, nothing validated yet
            metrics = self._validate()
        self._sync_buffers()
        self._checkpoint()
        export, exported_metrics = self._export(metrics)
        if self.writer is not None:
            self.writer.close()
        return {
            "metrics": exported_metrics,
            "best": state["best"],
            "export": str(export),
            "steps": state["step"],
            "train_seconds": self.train_seconds,
        }

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

    def _micro_step(self, batch: Dict[str, torch.Tensor], position: int, n_batches: int) -> bool:
        """Forward/backward one micro-batch; True when it completed an optimizer step."""
        cfg, acc = self.cfg, self.acc
        images = batch["image"].to(acc.device, non_blocking=True)
        if cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = batch["label"].to(acc.device, non_blocking=True)
        is_step = (position + 1) % cfg.train.grad_accum == 0 or position + 1 == n_batches
        sync = contextlib.nullcontext() if is_step else acc.no_sync(self.step_module)
        with sync:
            loss, parts = self.step_module(images, labels)
            acc.backward(loss / cfg.train.grad_accum)
        # The logged loss is the mean over the step's micro-batches (and, below, over processes).
        self._step_loss = self._step_loss + loss.detach().float() / cfg.train.grad_accum
        if not is_step:
            return False
        if cfg.train.clip_grad > 0:
            acc.clip_grad_norm_(self.step_module.parameters(), cfg.train.clip_grad)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state["step"] += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.state["step"])
        mean_loss = acc.reduce(self._step_loss, reduction="mean").item()
        self._step_loss, self._last_loss = 0.0, mean_loss
        if self.writer is not None and (self.state["step"] % cfg.train.log_every == 0 or self.state["step"] == 1):
            step = self.state["step"]
            self.writer.add_scalar("loss/total", mean_loss, step)
            for name, value in parts.items():
                self.writer.add_scalar(f"loss/{name}", value, step)
            self.writer.add_scalar("lr", self.scheduler.get_last_lr()[0], step)
            with open(self.out / "loss.jsonl", "a") as log:
                log.write(json.dumps({"step": step, "loss": mean_loss}) + "\n")
        return True

    def _validate(self) -> Dict[str, float]:
        if self.data.val_dataset is None:
            return {}
        metrics, grid = validate(
            self.eval_model(),
            self.data.val_dataset,
            self.data.val_table,
            self.acc,
            batch_size=max(32, self.cfg.train.batch_size),
        )
        self.step_module.train()
        step = self.state["step"]
        self.acc.print("validation " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(f"val/{name}", value, step)
            if grid is not None:
                self.writer.add_image("val/top5_matches", grid, step)
        key = self.cfg.val.best_metric
        if key not in metrics:
            raise ConfigError(f"val.best_metric '{key}' is not a validation metric; valid: {', '.join(metrics)}")
        if self.state["best"] is None or metrics[key] > self.state["best"][key]:
            self.state["best"], self.state["best_step"] = dict(metrics), step
            if self.acc.is_main_process and self.cfg.val.export == "best":
                write_best(self.out, self.eval_model(), step=step, metrics=metrics)
            self.acc.wait_for_everyone()
        return metrics

    def _sync_buffers(self) -> None:
        # DDP broadcasts BatchNorm statistics at each forward; after the last step the ranks'
        # running stats differ by one update, so make them rank 0's before saving.
        if self.acc.num_processes == 1:
            return
        module = self.acc.unwrap_model(self.step_module)
        for buffer in module.buffers():
            torch.distributed.broadcast(buffer.data, src=0)
        # Ranks that drifted apart (e.g. a loss whose parameters DDP did not see) would export one
        # rank's weights silently: compare them and record the evidence.
        digests = self.acc.gather_for_metrics([model_checksum(module)], use_gather_object=True)
        if self.acc.is_main_process:
            (self.out / "rank_digests.json").write_text(json.dumps(digests))
        if len(set(digests)) != 1:
            raise RuntimeError(f"the {self.acc.num_processes} processes ended with different weights: {digests}")

    def _export(self, last_metrics: Dict[str, float]) -> tuple:
        """Write export/ with the best weights (val.export=best, when validation ran) or the last ones;
        returns its path and the validation metrics of the exported weights."""
        export = self.out / "export"
        metrics = dict(last_metrics, step=self.state["step"]) if last_metrics else {}
        best_file = self.out / BEST_DIR / BEST_WEIGHTS
        use_best = self.cfg.val.export == "best" and self.state["best"] is not None
        if use_best:
            metrics = dict(self.state["best"], step=self.state["best_step"])
        if self.acc.is_main_process:
            model = self.eval_model()
            if use_best:
                load_model(model, str(best_file), device=str(self.acc.device))
            save_export(
                model,
                export,
                label_map=self.data.label_map,
                train_config=to_dict(self.cfg),
                metrics=metrics,
            )
            self.acc.print(f"exported {export}")
        self.acc.wait_for_everyone()
        return export, metrics


def train(cfg: TrainConfig, resume: Optional[str] = None) -> Dict[str, Any]:
    return Trainer(cfg, resume=resume).fit()

"""The training loop: Accelerate for devices and processes, exact resume, validation, export.

Read top to bottom: `train(cfg)` builds data, model, loss and optimizer, restores a checkpoint
when asked, then runs optimizer steps until the epochs (or `train.max_steps`) are done,
validating on held-out identities and exporting the best model to `<output_dir>/export/`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from safetensors.torch import load_model
from timm.optim import param_groups_weight_decay
from torch import nn

from core.config import save_config, to_dict
from core.errors import ConfigError
from core.schema import ComponentConfig, TrainConfig
from engine.accel import make_accelerator
from engine.training.checkpoint import (
    BEST_DIR,
    BEST_FILE,
    BEST_WEIGHTS,
    find_checkpoint,
    load_checkpoint,
    read_state,
    restore_best,
    save_checkpoint,
    write_best,
)
from engine.training.data import TrainData, build_train_data
from engine.training.epochs import EpochLoop, make_ema
from engine.training.member_data import build_member_feature_data
from engine.training.run_folder import check_run_dir, claim_run_dir, holding_run_dir, training_reads
from engine.training.schedule import build_scheduler
from engine.training.validation import improves, undefined_metrics, validate
from losses import ITEMS, build_criterion
from zoo import build_model, model_checksum, save_export
from zoo.registry import model_inputs

# What a model reads -> how its training data is built (zoo models say it with their `inputs`).
TRAINING_INPUTS = {"images": build_train_data, "member_features": build_member_feature_data}


class TrainStep(nn.Module):
    """Model and loss as one module, so DDP averages the gradients of loss parameters too."""

    def __init__(self, model: nn.Module, criterion: nn.Module):
        super().__init__()
        self.model = model
        self.criterion = criterion

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor, items: torch.Tensor):
        # The items' dataset positions let pair losses skip pairs of one image drawn twice.
        return self.criterion({**self.model(inputs), ITEMS: items}, labels, model=self.model)


def build_optimizer(cfg: TrainConfig, step: TrainStep) -> torch.optim.Optimizer:
    # No weight decay on norms and biases; loss parameters (class centres) learn faster.
    groups = param_groups_weight_decay(step.model, cfg.train.weight_decay)
    head = [p for p in step.criterion.parameters() if p.requires_grad]
    if head:
        groups.append({"params": head, "weight_decay": cfg.train.weight_decay, "lr": cfg.train.lr * cfg.train.head_lr_mult})
    for group in groups:
        group.setdefault("lr", cfg.train.lr)
    if not groups:  # nothing to train (see Trainer.trainable): an empty group keeps the schedule and checkpoints as usual
        groups = [{"params": [], "lr": cfg.train.lr}]
    if cfg.train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.train.lr)
    if cfg.train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.train.lr, momentum=cfg.train.momentum, nesterov=True)
    raise ConfigError(f"unknown train.optimizer '{cfg.train.optimizer}'; valid: adamw, sgd")


class Trainer(EpochLoop):
    def __init__(self, cfg: TrainConfig, resume: Optional[str] = None, overwrite: bool = False):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.acc = make_accelerator(cfg.train.mixed_precision)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        torch.manual_seed(cfg.seed)
        # On every process, so that all of them stop on a folder that is not theirs to write.
        check_run_dir(self.out, fresh=resume is None, overwrite=overwrite, reads=training_reads(cfg.data, cfg.model))

        build_data = TRAINING_INPUTS[model_inputs(cfg.model.name)]
        self.data: TrainData = build_data(
            cfg,
            num_replicas=self.acc.num_processes,
            rank=self.acc.process_index,
            pin_memory=self.acc.device.type == "cuda",
            accelerator=self.acc,
        )
        num_classes = len(self.data.label_map)
        # Seeded again: building the data may draw random numbers or not (fusion members' features
        # extracted, or read from the cache), and the initial weights must not depend on it.
        torch.manual_seed(cfg.seed)
        model_cfg = cfg.model if self.data.model_args is None else ComponentConfig(cfg.model.name, self.data.model_args)
        self.model = build_model(model_cfg, num_classes=num_classes)
        self.data.setup_model(self.model)
        criterion = build_criterion(
            cfg.losses, embed_dim=self.model.embed_dim, num_classes=num_classes, distributed=self.acc.num_processes > 1
        )
        step_module = TrainStep(self.model, criterion)
        if cfg.train.channels_last:
            step_module = step_module.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(cfg, step_module)
        # Only once data, model and losses are built: a run that cannot start leaves the folder alone.
        if self.acc.is_main_process:
            claim_run_dir(self.out, fresh=resume is None, overwrite=overwrite, say=self.acc.print)
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
        # A model fitted from the data alone (a fusion model with hidden 0 and no pair head) takes no
        # steps: its losses would train nothing it uses. DDP refuses a module without gradients.
        self.trainable = any(p.requires_grad for p in self.model.parameters())
        if self.trainable:
            self.step_module, self.optimizer = self.acc.prepare(step_module, optimizer)
        else:
            self.step_module, self.optimizer = step_module.to(self.acc.device), self.acc.prepare(optimizer)
        self.ema = make_ema(self.model, cfg.train.ema_decay) if cfg.train.ema else None
        self.ema_source = self.model

        self.state: Dict[str, Any] = {
            "epoch": 0, "next_batch": 0, "step": 0, "best": None, "best_step": None, "spent_seconds": 0.0
        }
        if resume is not None:
            self._resume(find_checkpoint(self.out, resume, warn=self.acc.print))
        self._open_run()

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
    @property
    def trained_module(self) -> nn.Module:
        return self.step_module

    def fit(self) -> Dict[str, Any]:
        if self.trainable:
            metrics = self.run_epochs()
        else:
            self.acc.print("the model has no trainable layers (all of it is fitted from the data): no training steps")
            metrics = {}
        if not metrics:  # nothing trained (resumed from the end of the schedule, or nothing to train), nothing validated yet
            metrics = self._validate()
        self._sync_buffers()
        self._checkpoint()
        export, exported_metrics = self._export(metrics)
        if self.writer is not None:
            self.writer.close()
        return {
            "metrics": exported_metrics,
            "best": self.state["best"],
            "export": str(export),
            "steps": self.state["step"],
            "train_seconds": self.train_seconds,
        }

    def _forward_loss(self, batch: Dict[str, torch.Tensor]) -> tuple:
        device = self.acc.device
        inputs = batch["image"].to(device, non_blocking=True)
        if self.cfg.train.channels_last and inputs.ndim == 4:  # images; feature rows have no layout
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return self.step_module(inputs, batch["label"].to(device, non_blocking=True), batch["index"].to(device))

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
        undefined = undefined_metrics(metrics)
        if undefined:
            self.acc.print(f"warning: validation {', '.join(undefined)} NaN at step {step}: a NaN never counts "
                           "as the best")
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(f"val/{name}", value, step)
            if grid is not None:
                self.writer.add_image("val/top5_matches", grid, step)
        key = self.cfg.val.best_metric
        if key not in metrics:
            raise ConfigError(f"val.best_metric '{key}' is not a validation metric; valid: {', '.join(metrics)}")
        if improves(metrics[key], None if self.state["best"] is None else self.state["best"][key]):
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


def train(cfg: TrainConfig, resume: Optional[str] = None, overwrite: bool = False) -> Dict[str, Any]:
    with holding_run_dir(cfg.output_dir, cfg.data, cfg.model, resume=resume, overwrite=overwrite):
        return Trainer(cfg, resume=resume, overwrite=overwrite).fit()

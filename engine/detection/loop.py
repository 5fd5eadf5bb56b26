"""The detector training loop: ultralytics' model, dataset and loss inside our Accelerate loop.

Same machinery as the re-identification loop (engine/training): Accelerate for devices, processes
and mixed precision; the wall-clock budget and warmup-cosine schedule; EMA; crash-safe
checkpoints with exact resume; TensorBoard. What differs is what a detector needs: batches of
letterboxed images with their boxes, the detector's own loss, and mAP on held-out images.

    python train.py --config configs/train/detector_yolo.yaml
    accelerate launch train.py --config configs/train/detector_yolo.yaml
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from accelerate.utils import broadcast_object_list
from timm.optim import param_groups_weight_decay

from core.config import save_config, to_dict
from core.detector_schema import DetectorTrainConfig
from core.errors import ConfigError
from detectors.base import Detector, build_detector
from detectors.export import save_detector
from engine.accel import make_accelerator
from engine.detection.data import DetectorData, build_detector_data
from engine.detection.validation import measure_map
from engine.training.checkpoint import (
    find_checkpoint,
    load_checkpoint,
    read_state,
    save_checkpoint,
)
from engine.training.epochs import EpochLoop, make_ema
from engine.training.run_folder import check_run_dir, claim_run_dir, holding_run_dir, training_reads
from engine.training.schedule import build_scheduler

# ultralytics trains the last `close_mosaic` epochs (10) on whole images. Under a time budget the
# number of epochs is unknown, so by default the budget's last tenth is; `hyp.close_mosaic` below 1
# is that fraction (of the budget, or of the planned epochs).
CLOSE_MOSAIC_EPOCHS, CLOSE_MOSAIC_FRACTION = 10, 0.1


def _optimizer(cfg: DetectorTrainConfig, module: torch.nn.Module) -> torch.optim.Optimizer:
    # No weight decay on norms and biases, as ultralytics' own optimizer groups.
    groups = param_groups_weight_decay(module, cfg.train.weight_decay)
    if cfg.train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(0.9, 0.999))
    return torch.optim.SGD(groups, lr=cfg.train.lr, momentum=cfg.train.momentum, nesterov=True)


class DetectorTrainer(EpochLoop):
    def __init__(self, cfg: DetectorTrainConfig, resume: Optional[str] = None, overwrite: bool = False):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        if "imgsz" in cfg.model.args:
            raise ConfigError("model.args.imgsz: set the detector's input size with the top-level imgsz key")
        self.acc = make_accelerator(cfg.train.mixed_precision)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(cfg.seed)
        check_run_dir(self.out, fresh=resume is None, overwrite=overwrite, reads=training_reads(cfg.data, cfg.model))
        self.detector: Detector = build_detector(cfg.model.name, {**cfg.model.args, "imgsz": cfg.imgsz})
        self.detector.configure(cfg.hyp)
        if self.acc.is_main_process:
            claim_run_dir(self.out, fresh=resume is None, overwrite=overwrite, say=self.acc.print)
            save_config(cfg, self.out / "config.yaml")
        self.acc.wait_for_everyone()
        self.data: DetectorData = build_detector_data(
            cfg, self.detector, num_replicas=self.acc.num_processes, rank=self.acc.process_index,
            is_main=self.acc.is_main_process, wait=self.acc.wait_for_everyone,
        )
        self.acc.print(f"detector data: {self.data.num_train} training and {self.data.num_val} validation images "
                       f"({self.data.layout.parent})")
        self.steps_per_epoch = math.ceil(len(self.data.batch_sampler) / cfg.train.grad_accum)
        self.total_steps = cfg.train.max_steps or cfg.train.epochs * self.steps_per_epoch
        self._time_fraction = 0.0
        optimizer = _optimizer(cfg, self.detector.module)
        self.scheduler = build_scheduler(optimizer, warmup_steps=cfg.train.warmup_steps, total_steps=self.total_steps,
                                         min_ratio=cfg.train.min_lr_ratio, time_fraction=lambda: self._time_fraction)
        # The EMA copy is made before prepare(), which patches the module's forward for autocast.
        self.ema = make_ema(self.detector.module, cfg.train.ema_decay) if cfg.train.ema else None
        self.ema_source = self.detector.module
        self.module, self.optimizer = self.acc.prepare(self.detector.module, optimizer)
        self.state: Dict[str, Any] = {"epoch": 0, "next_batch": 0, "step": 0, "spent_seconds": 0.0,
                                      "mosaic_closed": False}
        if resume is not None:
            self._resume(find_checkpoint(self.out, resume, warn=self.acc.print))
        if self.state["mosaic_closed"]:
            self._close_mosaic(announce=False)
        self._open_run()

    # -- state -------------------------------------------------------------------------------------
    def _resume(self, path: Path) -> None:
        saved = read_state(path)
        if saved.get("train_images") != self.data.num_train:
            raise ConfigError(f"checkpoint {path} was trained on {saved.get('train_images')} images, the current data "
                              f"has {self.data.num_train}: resume with the same data, annotations and seed")
        state = load_checkpoint(self.acc, path, module=self.detector.module, optimizer=self.optimizer,
                                scheduler=self.scheduler, ema=self.ema, config=to_dict(self.cfg))
        self.state.update({k: state[k] for k in self.state if k in state})
        self.acc.print(f"resumed from {path} at step {self.state['step']} (epoch {self.state['epoch']})")

    def _checkpoint(self) -> None:
        self.state["spent_seconds"] = self.budget.spent()
        save_checkpoint(self.acc, self.out / "checkpoints", step=self.state["step"], module=self.detector.module,
                        optimizer=self.optimizer, scheduler=self.scheduler, ema=self.ema,
                        state=dict(self.state, train_images=self.data.num_train, config=to_dict(self.cfg)),
                        keep_last=self.cfg.train.keep_last)

    def _eval_module(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.detector.module

    def _close_mosaic(self, announce: bool = True) -> None:
        self.data.train.dataset.close_mosaic(self.detector.hyp)
        self.state["mosaic_closed"] = True
        if announce:
            self.acc.print(f"mosaic off from step {self.state['step']} (the schedule's end is trained on whole images)")

    def _mosaic_should_close(self, epochs: int) -> bool:
        if self.state["mosaic_closed"] or not getattr(self.data.train.dataset, "close_mosaic", None):
            return False
        value = self.cfg.hyp.get("close_mosaic")
        fraction = float(value) if value is not None and float(value) < 1 else None
        if self.budget.enabled:
            return self._time_fraction >= 1 - (CLOSE_MOSAIC_FRACTION if fraction is None else fraction)
        if fraction is not None:
            return self.state["epoch"] >= epochs * (1 - fraction)
        return self.state["epoch"] >= epochs - int(CLOSE_MOSAIC_EPOCHS if value is None else value)

    # -- loop --------------------------------------------------------------------------------------
    @property
    def trained_module(self) -> torch.nn.Module:
        return self.module

    def _start_epoch(self, epochs: int) -> None:
        if self._mosaic_should_close(epochs):
            self._close_mosaic()

    def fit(self) -> Dict[str, Any]:
        metrics = self.run_epochs() or self._validate()
        self._checkpoint()
        export = self._export(metrics)
        if self.writer is not None:
            self.writer.close()
        return {"metrics": metrics, "export": str(export), "steps": self.state["step"],
                "train_seconds": self.train_seconds}

    def _forward_loss(self, batch: Dict[str, Any]) -> tuple:
        batch = self.detector.prepare_batch(batch, self.acc.device)
        return self.detector.loss(self.module(batch["img"]), batch)

    def _validate(self) -> Dict[str, float]:
        result: list = [None]
        if self.acc.is_main_process and self.data.num_val:
            metrics, grid = measure_map(self.detector, self._eval_module(), self.data.val, self.cfg.val,
                                        batch_size=self.cfg.train.batch_size, device=self.acc.device)
            result = [metrics]
            step = self.state["step"]
            self.acc.print(f"validation at step {step}: " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
            if self.writer is not None:
                for name, value in metrics.items():
                    self.writer.add_scalar(f"val/{name}", value, step)
                if grid is not None:
                    self.writer.add_image("val/predicted_boxes", grid, step, dataformats="HWC")
        if self.acc.num_processes > 1:
            broadcast_object_list(result, from_process=0)
        self.module.train()
        return result[0] or {}

    def _export(self, metrics: Dict[str, float]) -> Path:
        export = self.out / "export"
        if self.acc.is_main_process:
            exported = build_detector(self.detector.name, self.detector.rebuild_args())
            exported.module.load_state_dict(self._eval_module().state_dict())
            save_detector(exported, export, train_config=to_dict(self.cfg), metrics=dict(metrics, step=self.state["step"]))
            self.acc.print(f"exported {export}")
        self.acc.wait_for_everyone()
        return export


def train_detector(cfg: DetectorTrainConfig, resume: Optional[str] = None, overwrite: bool = False) -> Dict[str, Any]:
    with holding_run_dir(cfg.output_dir, cfg.data, cfg.model, resume=resume, overwrite=overwrite):
        return DetectorTrainer(cfg, resume=resume, overwrite=overwrite).fit()

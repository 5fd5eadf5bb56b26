"""The detector seam: one registry, one interface the training loop and the cropper rely on.

A detector finds animals (one class) in photos. The training loop (engine/detection) trains its
`module` on batches the detector's own dataset builds, with the detector's own loss; the cropper
(engine/crops.py) calls `detect`. A new detector family is one class registered here
(`@DETECTORS.register("name")`), built from a `model: {name, args}` config block.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Sequence, Union

import numpy as np
import torch
from torch import nn

from core.errors import ConfigError
from core.registry import Registry

DETECTORS = Registry("detector", name_attribute="name")


@dataclass(frozen=True)
class Detections:
    """Animals found in one image: `boxes` (n, 4) x0 y0 x1 y1 in the image's pixels, `scores` (n,),
    most confident first."""

    boxes: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


class Detector(ABC):
    """A trainable animal detector.

    `module` is the nn.Module the loop trains, checkpoints and exports. `rebuild_args()` are the
    arguments that rebuild it with no file but the export's (no download, no model YAML lookup).
    """

    name: str = ""  # the registered name, set by DETECTORS.register
    module: nn.Module
    imgsz: int

    @classmethod
    def export_args(cls, args: Mapping[str, Any], where: str) -> Dict[str, Any]:
        """`args` of an export's `detector_args` (someone else's file), checked against what
        `rebuild_args` writes: only architecture settings and the input size, no file, nothing
        evaluated. A ConfigError naming `where` otherwise. A family that does not override this
        loads no export."""
        raise ConfigError(f"{where}: detector '{cls.name}' does not say which export arguments it accepts "
                          "(its class overrides Detector.export_args to check them), so its exports are not loaded")

    @abstractmethod
    def rebuild_args(self) -> Dict[str, Any]:
        """Arguments that rebuild an identical untrained module offline (stored in the export)."""

    @abstractmethod
    def configure(self, hyp: Mapping[str, Any]) -> None:
        """Apply a run's hyperparameters (the `hyp` config block: augmentation, loss gains)."""

    @abstractmethod
    def build_dataset(self, image_dir: Union[str, List[str]], *, train: bool, batch_size: int):
        """The training or validation dataset of ultralytics-layout folders (images/<part>/)."""

    @abstractmethod
    def collate(self, items: List[Dict[str, Any]]) -> Dict[str, Any]:
        """Items of `build_dataset` into one batch."""

    @abstractmethod
    def prepare_batch(self, batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
        """Move a collated batch to `device` and scale it as the module expects."""

    @abstractmethod
    def loss(self, predictions: Any, batch: Dict[str, Any]) -> tuple:
        """(loss to back-propagate, {part name: detached value}) of the module's training output."""

    @abstractmethod
    def targets(self, batch: Dict[str, Any], index: int) -> np.ndarray:
        """Image `index`'s true boxes (n, 4), x0 y0 x1 y1 in the batch tensor's pixels."""

    @abstractmethod
    def postprocess(self, predictions: Any, *, conf: float, iou: float) -> List[Detections]:
        """The module's eval output -> detections in the input tensor's pixels."""

    @abstractmethod
    def detect(self, images: Sequence[np.ndarray], *, conf: float = 0.25, iou: float = 0.7) -> List[Detections]:
        """Detections in each RGB uint8 image, in that image's pixels."""


def build_detector(name: str, args: Mapping[str, Any] | None = None, **extra: Any) -> Detector:
    return DETECTORS.build(name, args, **extra)

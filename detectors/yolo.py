"""ultralytics YOLO (v8 / 11 / 26 families) as a reidzoo detector. Only `detectors/` imports ultralytics
(AGPL-3.0; the `detect` extra installs it).

The model is built from its YAML name (`yolov8n.yaml`, `yolo11s.yaml`: shipped inside the
ultralytics package, so it works offline) or from a YAML dict stored in one of our exports, checked
first either way (detectors/yolo_cfg.py: ultralytics would evaluate parts of it); `weights` may name
a safetensors file of a matching model. An ultralytics `.pt` file is a pickle and is never read.
Training uses ultralytics' own dataset (mosaic, HSV, flips, affine), its loss (task-aligned
assignment, DFL, CIoU) and NMS; our loop does the rest.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Union

import cv2
import torch
from PIL import Image

# Read once by ultralytics' import: no console chatter, no network checks or package installs.
os.environ.setdefault("YOLO_VERBOSE", "False")
os.environ.setdefault("YOLO_OFFLINE", "1")
# Its import also patches the whole process: OpenCV's threads off, OMP_NUM_THREADS=1 for every
# process started afterwards, PIL's Image.open (which then pip-installs a HEIF plugin on any
# unreadable file) and torch.save. Undone right after it.
_PROCESS_STATE = (cv2.getNumThreads(), os.environ.get("OMP_NUM_THREADS"), Image.open, torch.save)

import numpy as np  # noqa: E402
import safetensors  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from ultralytics.cfg import get_cfg  # noqa: E402
from ultralytics.data import build_yolo_dataset  # noqa: E402
from ultralytics.data.augment import LetterBox  # noqa: E402
from ultralytics.data.dataset import YOLODataset  # noqa: E402
from ultralytics.nn.modules import Conv  # noqa: E402
from ultralytics.nn.tasks import DetectionModel, yaml_model_load  # noqa: E402
from ultralytics.utils import DEFAULT_CFG, DEFAULT_CFG_DICT, nms, ops  # noqa: E402

from core.errors import ConfigError, DataError  # noqa: E402
from core.suggest import did_you_mean  # noqa: E402
from detectors.base import DETECTORS, Detections, Detector  # noqa: E402
from detectors.yolo_cfg import activation_module, check_cfg, check_export_args  # noqa: E402

cv2.setNumThreads(_PROCESS_STATE[0])
if _PROCESS_STATE[1] is None:
    os.environ.pop("OMP_NUM_THREADS", None)
Image.open, torch.save = _PROCESS_STATE[2:]

CLASS_NAMES = {0: "animal"}
STRIDE = 32
# Our loop owns these: a `hyp` entry for them would be silently ignored, so it is refused.
LOOP_KEYS = {"epochs", "batch", "imgsz", "device", "workers", "optimizer", "lr0", "lrf", "momentum",
             "weight_decay", "warmup_epochs", "amp", "seed", "deterministic", "data", "model", "save_dir"}


def hyperparameters(hyp: Mapping[str, Any], imgsz: int):
    """ultralytics' config namespace with `hyp` applied; an unknown key suggests the close match."""
    hyp = dict(hyp)
    close = hyp.pop("close_mosaic", None)  # read by our loop (a number of epochs, or a fraction of the budget)
    if close is not None and (isinstance(close, bool) or not isinstance(close, (int, float)) or close < 0):
        raise ConfigError(f"hyp.close_mosaic must be a number >= 0 (epochs, or a fraction below 1), got {close!r}")
    for key in hyp:
        if key in LOOP_KEYS:
            raise ConfigError(f"hyp.{key} is set by the training loop, not by hyp: use the train/imgsz config keys")
        if key not in DEFAULT_CFG_DICT:
            raise ConfigError(f"unknown ultralytics hyperparameter 'hyp.{key}'{did_you_mean(key, DEFAULT_CFG_DICT)}")
    return get_cfg(DEFAULT_CFG, {**hyp, "imgsz": imgsz, "plots": False, "single_cls": True, "task": "detect"})


def _model_yaml(cfg: Union[str, Dict[str, Any]]) -> DetectionModel:
    """The model of a YAML name (or file) or of a model dict, the dict checked before it is built."""
    if isinstance(cfg, str):
        try:
            loaded = yaml_model_load(cfg)
        except FileNotFoundError as err:
            raise ConfigError(
                f"model.args.cfg: no ultralytics model YAML named {cfg!r} ({err}); use a name such as yolov8n.yaml, "
                "yolo11n.yaml or yolo26n.yaml (sizes n, s, m, l, x)"
            ) from None
        loaded["yaml_file"] = Path(loaded["yaml_file"]).name  # recorded in exports: a name, not this machine's path
        cfg = loaded
    checked = check_cfg(cfg, "model.args.cfg")
    activation = checked.pop("activation", None)
    default = Conv.default_act
    # ultralytics would eval() the string: the checked one is built from our table instead, the way
    # parse_model sets it, as every Conv's activation, for this model only.
    Conv.default_act = activation_module(activation) if activation else default
    try:
        model = DetectionModel(checked, nc=len(CLASS_NAMES), ch=3, verbose=False)
    except (TypeError, ValueError, IndexError, KeyError, RuntimeError, AttributeError) as err:
        raise ConfigError(f"model.args.cfg does not describe a YOLO model ultralytics can build: "
                          f"{type(err).__name__}: {err}") from None
    finally:
        Conv.default_act = default
    if activation:
        model.yaml["activation"] = activation
    return model


def _load_weights(model: DetectionModel, weights: str) -> None:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise DataError(f"model.args.weights: {path} not found (weights are never downloaded here: "
                        "give a local .safetensors file)")
    if path.suffix != ".safetensors":
        raise ConfigError(
            f"model.args.weights: {path} is not a .safetensors file; an ultralytics .pt file is a pickle, which can "
            "run code when read, and reidzoo never reads one: convert it once (docs/detectors.md says how)"
        )
    try:
        state = load_file(str(path))
    except (OSError, safetensors.SafetensorError) as err:
        raise DataError(f"model.args.weights: {path} cannot be read as safetensors: {err}") from None
    own = model.state_dict()
    # A checkpoint of another class count has another head: load what fits, as ultralytics does.
    fitting = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    if not fitting:
        raise DataError(f"model.args.weights: no tensor of {path} fits the model built from model.args.cfg")
    model.load_state_dict(fitting, strict=False)


@DETECTORS.register("yolo")
class YoloDetector(Detector):
    """args: cfg (YAML name or dict), weights (optional .safetensors file), imgsz (set by the run)."""

    def __init__(self, cfg: Union[str, Dict[str, Any]] = "yolov8n.yaml", weights: str = "", imgsz: int = 320):
        self.module = _model_yaml(cfg)
        self.module.names = dict(CLASS_NAMES)
        if weights:
            _load_weights(self.module, weights)
        self.imgsz = int(imgsz)
        self.hyp = hyperparameters({}, self.imgsz)
        self.module.args = self.hyp  # the loss reads its gains (box, cls, dfl) from here

    def configure(self, hyp: Mapping[str, Any]) -> None:
        """Apply a run's hyperparameters (augmentation and loss gains)."""
        self.hyp = hyperparameters(hyp, self.imgsz)
        self.module.args = self.hyp
        self.module.criterion = None  # rebuilt with the new gains at the next loss

    @classmethod
    def export_args(cls, args: Mapping[str, Any], where: str) -> Dict[str, Any]:
        return check_export_args(args, where)

    def rebuild_args(self) -> Dict[str, Any]:
        # The resolved YAML dict, so that rebuilding needs neither the YAML file nor its version.
        return {"cfg": dict(self.module.yaml), "imgsz": self.imgsz}

    # -- training ------------------------------------------------------------------------------
    def build_dataset(self, image_dir: Union[str, List[str]], *, train: bool, batch_size: int):
        first = image_dir if isinstance(image_dir, str) else image_dir[0]
        data = {"names": dict(CLASS_NAMES), "nc": len(CLASS_NAMES), "channels": 3, "path": str(Path(first).parent)}
        return build_yolo_dataset(self.hyp, image_dir, batch_size, data,
                                  mode="train" if train else "val", stride=STRIDE)

    def collate(self, items: List[Dict[str, Any]]) -> Dict[str, Any]:
        return YOLODataset.collate_fn(items)

    def prepare_batch(self, batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
        batch = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        batch["img"] = batch["img"].float() / 255
        return batch

    def loss(self, predictions: Any, batch: Dict[str, Any]) -> tuple:
        # In float32 even under bf16 autocast: the assigner's IoUs and the DFL need the precision.
        predictions = _to_float(predictions)
        total, parts = self.module.loss(batch, preds=predictions)
        return total.sum(), {name: float(value) for name, value in parts.items()}

    def targets(self, batch: Dict[str, Any], index: int) -> np.ndarray:
        boxes = batch["bboxes"][batch["batch_idx"] == index].float().cpu()  # normalised cx cy w h
        height, width = batch["img"].shape[2:]
        return (ops.xywh2xyxy(boxes) * torch.tensor([width, height, width, height])).numpy()

    def postprocess(self, predictions: Any, *, conf: float, iou: float) -> List[Detections]:
        outputs = nms.non_max_suppression(_to_float(predictions), conf, iou, agnostic=True, max_det=100)
        return [Detections(out[:, :4].cpu().numpy().astype(np.float32), out[:, 4].cpu().numpy().astype(np.float32))
                for out in outputs]

    # -- inference -----------------------------------------------------------------------------
    @torch.no_grad()
    def detect(self, images: Sequence[np.ndarray], *, conf: float = 0.25, iou: float = 0.7) -> List[Detections]:
        if not images:
            return []
        letterbox = LetterBox(new_shape=(self.imgsz, self.imgsz), auto=False, stride=STRIDE)
        boxed = np.stack([letterbox(image=np.ascontiguousarray(image)) for image in images])
        device = next(self.module.parameters()).device
        tensor = torch.from_numpy(boxed).permute(0, 3, 1, 2).contiguous().to(device).float() / 255
        self.module.eval()
        found = self.postprocess(self.module(tensor), conf=conf, iou=iou)
        results = []
        for image, detections in zip(images, found):
            boxes = torch.from_numpy(detections.boxes.copy())
            if len(boxes):
                boxes = ops.scale_boxes((self.imgsz, self.imgsz), boxes, image.shape[:2])
            results.append(Detections(boxes.numpy().astype(np.float32), detections.scores))
        return results


def _to_float(predictions: Any) -> Any:
    if isinstance(predictions, torch.Tensor):
        return predictions.float()
    if isinstance(predictions, dict):
        return {k: _to_float(v) for k, v in predictions.items()}
    if isinstance(predictions, (list, tuple)):
        return type(predictions)(_to_float(v) for v in predictions)
    return predictions


"""The config schema of `train.py` for crop detectors (`task: detector`), and of the crop option.

A detector run trains an animal detector (registered in `detectors/`, ultralytics YOLO first) on
the boxes of a dataset, through the same Accelerate loop, checkpoints, time budget and TensorBoard
as the re-identification models. Its defaults are sized for 2 CPU cores: a YOLOv8-n at 320 px for
10 minutes; configs/train/detector_yolo.yaml names them, and its GPU twin trains larger models.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

from core.schema import ComponentConfig, DataConfig, TrainLoopConfig
from core.schema_rules import COUNT, FRACTION, PROBABILITY, VALUE_RULES, at_least, one_of

ANNOTATION_SOURCES = ("auto", "bbox", "csv", "yolo")


@dataclass
class AnnotationConfig:
    source: str = "auto"  # (str) auto (YOLO labels in ROOT/labels when present, else the bbox column) | bbox | csv | yolo
    path: str = ""  # (str) csv: the box CSV (default ROOT/bboxes.csv); yolo: the label folder (default ROOT/labels)
    val_fraction: float = 0.2  # (float) fraction of images (whole identities) held out to measure mAP


@dataclass
class DetectorValConfig:
    every_epochs: int = 1  # (int) measure mAP on the held-out images every N epochs (and at the end)
    conf: float = 0.001  # (float) confidence floor of the predictions mAP is measured on
    iou: float = 0.7  # (float) NMS IoU threshold
    max_images: int = 500  # (int) cap on validation images, for speed
    grid: int = 8  # (int) validation images drawn with their predicted boxes in TensorBoard (0 = none)


def _detector_train_loop() -> TrainLoopConfig:
    # ultralytics' own choices for short runs (AdamW at 2e-3 for one class, warmup, EMA, clipping at
    # 10), with our wall-clock budget as the stopping rule.
    return TrainLoopConfig(max_minutes=10.0, batch_size=16, lr=2e-3, weight_decay=5e-4, warmup_steps=100,
                           clip_grad=10.0, ema=True, ema_decay=0.999, checkpoint_every=100, channels_last=False)


def _scene_data() -> DataConfig:
    data = DataConfig()
    data.synthetic.scenes = True  # the synthetic set's scene mode is the one with small animals to find
    return data


@dataclass
class DetectorTrainConfig:
    task: str = "detector"  # (str) reid (train.py's re-identification models) | detector
    plugins: List[str] = field(default_factory=list)  # (list) your own modules to import first: their @REGISTRY.register components become valid names (docs/extending.md)
    output_dir: str = "runs/detector"  # (str) run directory: checkpoints, TensorBoard, yolo_data/, export/
    seed: int = 0  # (int) seed of the split, sampling, augmentation and initialisation
    data: DataConfig = field(default_factory=_scene_data)  # (section) images, as for re-identification
    annotations: AnnotationConfig = field(default_factory=AnnotationConfig)
    model: ComponentConfig = field(default_factory=lambda: ComponentConfig(name="yolo", args={"cfg": "yolov8n.yaml"}))
    imgsz: int = 320  # (int) square side the detector sees (letterboxed), a multiple of 32
    hyp: Dict[str, Any] = field(default_factory=dict)  # (dict) ultralytics hyperparameters: mosaic, degrees, scale, fliplr, hsv_v, box, cls, close_mosaic (epochs; or a fraction < 1 of the time budget)...
    train: TrainLoopConfig = field(default_factory=_detector_train_loop)
    val: DetectorValConfig = field(default_factory=DetectorValConfig)


def _multiple_of_32(key: str, value: int):
    return None if value >= 32 and value % 32 == 0 else f"'{key}' must be a multiple of 32 (>= 32), got {value!r}"


VALUE_RULES.update({
    AnnotationConfig: {"source": one_of(*ANNOTATION_SOURCES), "val_fraction": FRACTION},
    DetectorValConfig: {"every_epochs": COUNT, "conf": PROBABILITY, "iou": FRACTION, "max_images": COUNT,
                        "grid": at_least(0)},
    DetectorTrainConfig: {"task": one_of("detector"), "seed": at_least(0), "imgsz": _multiple_of_32},
})

"""mAP50 and mAP50-95 of detections against true boxes, with ultralytics' own pieces: its greedy
matching of predictions to boxes at ten IoU thresholds, its box IoU and its DetMetrics (precision,
recall, AP), so the figures are the ones its trainer reports."""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch
from ultralytics.engine.validator import BaseValidator
from ultralytics.utils.metrics import DetMetrics, box_iou

from detectors.base import Detections
from detectors.yolo import CLASS_NAMES

IOU_THRESHOLDS = torch.linspace(0.5, 0.95, 10)  # mAP50-95, as COCO and ultralytics


class _Matcher:
    """The validator's matching method, which reads nothing of the validator but `iouv`."""

    iouv = IOU_THRESHOLDS
    match = BaseValidator.match_predictions


class MeanAveragePrecision:
    """Accumulates images' detections and true boxes (x0 y0 x1 y1, same pixels); `compute()` at the end."""

    def __init__(self):
        self.metrics = DetMetrics(names=dict(CLASS_NAMES))
        self.images = 0

    def update(self, detections: Detections, truth: np.ndarray, name: str) -> None:
        predicted = torch.from_numpy(np.asarray(detections.boxes, np.float32)).reshape(-1, 4)
        truth_t = torch.from_numpy(np.asarray(truth, np.float32)).reshape(-1, 4)
        classes = torch.zeros(len(predicted))
        if len(truth_t) and len(predicted):
            correct = _Matcher().match(classes, torch.zeros(len(truth_t)), box_iou(truth_t, predicted)).numpy()
        else:
            correct = np.zeros((len(predicted), len(IOU_THRESHOLDS)), dtype=bool)
        self.metrics.update_stats({"tp": correct, "conf": np.asarray(detections.scores), "pred_cls": classes.numpy(),
                                   "target_cls": np.zeros(len(truth_t)), "target_img": np.zeros(min(1, len(truth_t))),
                                   "im_name": name})
        self.images += 1

    def compute(self) -> Dict[str, float]:
        self.metrics.process()
        precision, recall, map50, map50_95 = (float(v) for v in self.metrics.mean_results())
        return {"mAP50": map50, "mAP50-95": map50_95, "precision": precision, "recall": recall}

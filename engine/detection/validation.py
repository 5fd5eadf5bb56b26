"""mAP of a detector on held-out images (detectors.metrics: the numbers ultralytics' trainer
reports), plus a grid of predicted boxes for TensorBoard.

The held-out set is small (a fifth of the annotated images), so the main process measures all of
it while the others wait; the result is broadcast so that every process records the same metrics.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from core.detector_schema import DetectorValConfig
from detectors.base import Detections, Detector
from detectors.metrics import MeanAveragePrecision


@torch.no_grad()
def measure_map(detector: Detector, module: torch.nn.Module, dataset: Dataset, cfg: DetectorValConfig, *,
                batch_size: int, device: torch.device, num_workers: int = 0,
                show: bool = True) -> Tuple[Dict[str, float], Optional[np.ndarray]]:
    """({mAP50, mAP50-95, precision, recall}, RGB grid of the first `cfg.grid` images or None)."""
    meter = MeanAveragePrecision()
    subset = Subset(dataset, range(min(len(dataset), cfg.max_images)))
    loader = DataLoader(subset, batch_size=batch_size, collate_fn=detector.collate, num_workers=num_workers)
    was_training = module.training
    module.eval()
    drawn: List[np.ndarray] = []
    for batch in tqdm(loader, desc="validate (mAP)", leave=False, disable=not show):
        batch = detector.prepare_batch(batch, device)
        found = detector.postprocess(module(batch["img"]), conf=cfg.conf, iou=cfg.iou)
        batch = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        for index, detections in enumerate(found):
            truth = detector.targets(batch, index)
            meter.update(detections, truth, str(batch["im_file"][index]))
            if len(drawn) < cfg.grid:
                drawn.append(_draw(batch["img"][index], truth, detections))
    module.train(was_training)
    return meter.compute(), _grid(drawn) if drawn else None


def _draw(image: torch.Tensor, truth: np.ndarray, detections: Detections, min_score: float = 0.25) -> np.ndarray:
    """Green: true boxes; red: predictions above `min_score`, with their score."""
    canvas = np.ascontiguousarray((image.permute(1, 2, 0).numpy() * 255).clip(0, 255).astype(np.uint8))
    for x0, y0, x1, y1 in truth.astype(int):
        cv2.rectangle(canvas, (x0, y0), (x1, y1), (0, 200, 0), 2)
    for (x0, y0, x1, y1), score in zip(detections.boxes.astype(int), detections.scores):
        if score >= min_score:
            cv2.rectangle(canvas, (x0, y0), (x1, y1), (230, 30, 30), 1)
            cv2.putText(canvas, f"{score:.2f}", (x0, max(10, y0 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (230, 30, 30), 1)
    return canvas


def _grid(images: List[np.ndarray], columns: int = 4) -> np.ndarray:
    height, width = images[0].shape[:2]
    rows = -(-len(images) // columns)
    grid = np.full((rows * height, columns * width, 3), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * height:(r + 1) * height, c * width:(c + 1) * width] = cv2.resize(image, (width, height))
    return grid

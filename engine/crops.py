"""Crop a dataset to a trained detector's boxes: `data.crop.detector=EXPORT` or scripts/crop.py.

Each image is detected once at the detector's input size (decoded with the JPEG draft mode, so
large photos decode fast) and its detections are cached (ArrayCache, keyed by the file's identity
and the detector's checksum), so a second run, another confidence or another choice detects
nothing again. The chosen box becomes the image's `bbox`; every stage that reads images (training,
evaluation, keypoint re-ranking) then crops to it with `data.bbox_padding` around it. An image
where nothing reaches `min_confidence` keeps its full frame (and any box it was annotated with);
the manifest records each image's box, confidence and whether it fell back.
"""
from __future__ import annotations

import contextlib
import hashlib
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from core.array_cache import ArrayCache
from core.files import file_identity
from core.paths import cache_base
from core.schema import CropConfig
from data.images import ImageLoader
from data.validate import displayed_size
from detectors import Detector, detector_checksum, load_detector

CACHE_VERSION = 1
# Detections are cached down to this confidence, so that any min_confidence above it reuses them.
CACHE_FLOOR = 0.01
MANIFEST_COLUMNS = ["image_id", "path", "x", "y", "w", "h", "confidence", "fallback", "detections"]

try:
    import fcntl
except ImportError:  # no advisory locks (Windows): processes may then detect the same images twice
    fcntl = None


def detections_dir(value: str) -> Optional[Path]:
    if value == "none":
        return None
    return Path(value).expanduser() if value else cache_base() / "detections"


class _Frames(Dataset):
    """(row index, image with its long side at the detector's size, scale back to full pixels)."""

    def __init__(self, paths: List[str], rows: List[int], size: int):
        self.paths, self.rows = paths, rows
        self.loader = ImageLoader(size, None, crop_to_bbox=False, fit="long")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Tuple[int, np.ndarray, float]:
        path = self.paths[self.rows[i]]
        image = self.loader.load(path)
        return self.rows[i], image, displayed_size(path)[0] / image.shape[1]


def _columns(items: list) -> list:
    return list(zip(*items))


@dataclass
class Choice:
    box: Optional[List[float]]  # [x, y, w, h] in the full image, None when it fell back
    confidence: float
    detections: int


def choose_box(found: np.ndarray, width: int, height: int, *, min_confidence: float, choose: str) -> Choice:
    """The box to crop to among detections (n, 5: x0 y0 x1 y1 score) of a width x height image."""
    kept = found[found[:, 4] >= min_confidence] if len(found) else found
    if not len(kept):
        best = float(found[:, 4].max()) if len(found) else 0.0
        return Choice(None, best, 0)
    if choose == "central":
        centres = (kept[:, :2] + kept[:, 2:4]) / 2
        pick = int(np.argmin(np.hypot(centres[:, 0] - width / 2, centres[:, 1] - height / 2)))
    else:
        pick = int(np.argmax(kept[:, 4]))
    x0, y0, x1, y1 = (float(v) for v in np.clip(kept[pick, :4], 0, [width, height, width, height]))
    return Choice([x0, y0, x1 - x0, y1 - y0], float(kept[pick, 4]), len(kept))


@contextlib.contextmanager
def _one_process_at_a_time(directory: Optional[Path]) -> Iterator[None]:
    """Processes of one launch detect in turn: the first fills the cache, the others read it."""
    if directory is None or fcntl is None:
        yield
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle = open(directory / ".lock", "a+")
    except OSError as err:
        warnings.warn(f"detection cache {directory}: no lock ({err}), processes may detect the same images twice",
                      stacklevel=3)
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def detect_all(detector: Detector, paths: List[str], *, cache: ArrayCache, batch_size: int,
               num_workers: int = 2, show: bool = True) -> List[np.ndarray]:
    """Detections (n, 5) of every image in full-image pixels, from the cache where present."""
    checksum = detector_checksum(detector)
    keys = [hashlib.sha1(repr((CACHE_VERSION, *file_identity(p), checksum)).encode()).hexdigest() for p in paths]
    found: List[Optional[np.ndarray]] = [cache.load(k) if cache.enabled else None for k in keys]
    missing = [i for i, f in enumerate(found) if f is None or f.ndim != 2 or f.shape[1] != 5]
    if missing:
        loader = DataLoader(_Frames(paths, missing, detector.imgsz), batch_size=batch_size, num_workers=num_workers,
                            collate_fn=_columns)
        bar = tqdm(total=len(missing), desc="detect animals", unit="img", disable=not show)
        for rows, images, scales in loader:
            detected = detector.detect(list(images), conf=CACHE_FLOOR)
            for row, scale, detections in zip(rows, scales, detected):
                boxes = np.concatenate([detections.boxes * scale, detections.scores[:, None]], axis=1)
                found[row] = boxes.astype(np.float32).reshape(-1, 5)
                cache.save(keys[row], found[row])
            bar.update(len(rows))
        bar.close()
    return found  # type: ignore[return-value]


def crop_table(table: pd.DataFrame, cfg: CropConfig, *, show: bool = True) -> pd.DataFrame:
    """`table` with each image's `bbox` set to its detected animal; see `crop_with_manifest`."""
    cropped, manifest = crop_with_manifest(table, cfg, show=show)
    fallback = int(manifest["fallback"].sum())
    print(f"cropped {len(manifest) - fallback} of {len(manifest)} images to the boxes of {cfg.detector} "
          f"({fallback} kept their full frame: no box reached confidence {cfg.min_confidence})",
          file=sys.stderr, flush=True)
    return cropped


def crop_with_manifest(table: pd.DataFrame, cfg: CropConfig, *, show: bool = True,
                       detector: Optional[Detector] = None) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """(table with detected boxes, manifest: one row per image with box, confidence, fallback)."""
    if detector is None:
        detector = load_detector(cfg.detector)[0]
    detector.module.to("cuda" if torch.cuda.is_available() else "cpu")
    directory = detections_dir(cfg.cache)
    cache = ArrayCache(directory, what="detection")  # a cache that cannot be written warns here and only reads
    paths = table["path"].tolist()
    with _one_process_at_a_time(directory if cache.writable else None):
        found = detect_all(detector, paths, cache=cache, batch_size=cfg.batch_size, show=show)
    boxes, records = [], []
    for image_id, path, annotated, detections in zip(table["image_id"], paths, table["bbox"], found):
        width, height = displayed_size(path)
        choice = choose_box(detections, width, height, min_confidence=cfg.min_confidence, choose=cfg.choose)
        boxes.append(choice.box if choice.box is not None else annotated)
        x, y, w, h = choice.box if choice.box is not None else (None,) * 4
        records.append({"image_id": image_id, "path": path, "x": x, "y": y, "w": w, "h": h,
                        "confidence": round(choice.confidence, 4), "fallback": choice.box is None,
                        "detections": choice.detections})
    cropped = table.copy()
    cropped["bbox"] = pd.Series(boxes, index=table.index, dtype=object)
    return cropped, pd.DataFrame(records, columns=MANIFEST_COLUMNS)

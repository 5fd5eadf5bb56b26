"""On-disk cache of extracted embeddings, so a second evaluation with other settings (threshold,
calibration, retrieval, ensemble weights) does not run the models again.

An entry is keyed by everything that changes the numbers and nothing else:
  * the model: a checksum of its weights;
  * the images: path, file size, mtime, bbox, dataset and orientation of every row, in order
    (the order is part of the key because rows of the array follow it);
  * the transform: input size, mean, std, TTA views, orientation rules, crop settings;
  * the output head (embedding or logits).
Entries are `.npy` files written through a temporary file and an atomic rename, so a crash or
a concurrent run never leaves a half-written entry behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from core.files import save_npy_atomic
from core.paths import resolve_cache_setting

# Bump when extraction changes how numbers are computed, so old entries are not reused.
CACHE_VERSION = 1


def resolve_embed_cache_dir(value: Optional[str]) -> Optional[Path]:
    """Config value -> folder: "" = the default under the cache base, "none" = off, else that path."""
    folder = resolve_cache_setting(value, "embeddings")
    return Path(folder) if folder else None


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def image_list_fingerprint(table: pd.DataFrame) -> str:
    """Hash of the rows that decide what each image looks like to the model, in table order."""
    digest = hashlib.sha256()
    columns = zip(table["path"], table["bbox"], table["dataset"], table["orientation"], strict=True)
    for path, bbox, dataset, orientation in columns:
        absolute = os.path.abspath(path)
        try:
            stat = os.stat(absolute)
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        box = None if bbox is None else [round(float(v), 3) for v in bbox]
        digest.update(json.dumps([absolute, size, mtime, box, dataset, orientation], default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def transform_description(*, size: int, mean: Sequence[float], std: Sequence[float], tta: Sequence[str],
                          orientation_rules: Mapping[str, Mapping[str, float]], crop_to_bbox: bool,
                          bbox_padding: float) -> Dict[str, Any]:
    """Everything of the preprocessing that changes the pixels the model sees."""
    return {
        "size": int(size),
        "mean": [round(float(v), 6) for v in mean],
        "std": [round(float(v), 6) for v in std],
        "tta": list(tta),
        "orientation_rules": {d: {o: float(a) for o, a in r.items()} for d, r in orientation_rules.items()},
        "crop_to_bbox": bool(crop_to_bbox),
        "bbox_padding": round(float(bbox_padding), 6) if crop_to_bbox else None,
    }


def cache_key(model_checksum: str, images_fingerprint: str, transform: Mapping[str, Any], head: str) -> str:
    return _digest({"version": CACHE_VERSION, "model": model_checksum, "images": images_fingerprint,
                    "transform": dict(transform), "head": head})


class EmbeddingCache:
    """Arrays stored as `<dir>/<key[:2]>/<key>.npy`; `directory=None` turns caching off."""

    def __init__(self, directory: Optional[Path]):
        self.directory = Path(directory) if directory is not None else None
        self._write_failed = False

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    def path(self, key: str) -> Optional[Path]:
        return None if self.directory is None else self.directory / key[:2] / f"{key}.npy"

    def load(self, key: str) -> Optional[np.ndarray]:
        path = self.path(key)
        if path is None:
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None  # absent, or damaged: extract again and overwrite

    def save(self, key: str, array: np.ndarray) -> None:
        path = self.path(key)
        if path is None:
            return
        try:
            save_npy_atomic(path, array)
        except OSError as err:
            # A full or read-only disk makes the next run slower; it must not fail this one.
            if not self._write_failed:
                warnings.warn(f"embedding cache not written ({self.directory}): {err}", stacklevel=2)
                self._write_failed = True

    def get_or_compute(self, keys: Mapping[str, str], compute: Callable[[], Dict[str, np.ndarray]], *,
                       accelerator=None, expected_rows: Optional[int] = None) -> Dict[str, np.ndarray]:
        """{name: array} from the cache when every entry of `keys` is there, else from `compute()`
        (which returns them all from one pass), stored under `keys`.

        With several processes, `compute` is collective (each extracts a share), so all of them
        must agree on hit or miss: it is a hit only if every process can read every entry. Only
        the main process writes.
        """
        cached = {name: self.load(key) for name, key in keys.items()}
        hit = all(a is not None and (expected_rows is None or len(a) == expected_rows) for a in cached.values())
        if accelerator is not None and accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            hit = all(gather_object([hit]))
        if hit:
            return cached
        arrays = compute()
        if accelerator is None or accelerator.is_main_process:
            for name, key in keys.items():
                self.save(key, arrays[name])
        if accelerator is not None:
            accelerator.wait_for_everyone()
        return arrays

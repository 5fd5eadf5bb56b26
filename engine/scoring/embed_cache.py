"""On-disk cache of extracted embeddings, so a second evaluation with other settings (threshold,
calibration, retrieval, ensemble weights) does not run the models again.

An entry is keyed by everything that changes the numbers and nothing else:
  * the model: a checksum of its weights;
  * the images: path, file size, mtime, bbox, dataset and orientation of every row, in order
    (the order is part of the key because rows of the array follow it);
  * the transform: input size, mean, std, TTA views, orientation rules, crop settings;
  * the output head (embedding or logits).
Entries are `.npy` files of an core.array_cache.ArrayCache: written through a temporary file and
an atomic rename, so a crash or a concurrent run never leaves a half-written entry behind.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import pandas as pd

from core.array_cache import ArrayCache
from core.files import file_identity
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
        try:
            absolute, size, mtime = file_identity(path)
        except OSError:
            absolute, size, mtime = os.path.abspath(path), -1, -1
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


class EmbeddingCache(ArrayCache):
    """Arrays stored as `<dir>/<key[:2]>/<key>.npy`, one per output head; `directory=None` turns caching off."""

    def __init__(self, directory: Optional[Path]):
        super().__init__(directory, what="embedding")

"""A model's outputs for a table's rows, through the embedding cache: what eval.py and the training of
models over other models' embeddings (fusion) share, so that equal settings share cache entries.

The key is engine.scoring.embed_cache's: the model's checksum, the rows (files, boxes, order), the
preprocessing (the model's own input size and normalisation, TTA views, orientation and crop
settings) and the runtime (device type and the precision extraction runs in).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch

from core.errors import DataError, list_some
from core.schema import DataConfig
from data.dataset import ReIDDataset
from data.images import ImageLoader
from data.transforms import build_tta_transform
from engine.extraction import extract, nonfinite_rows
from engine.scoring.embed_cache import EmbeddingCache, cache_key, transform_description


@dataclass(frozen=True)
class ImageViews:
    """How rows become a model's input; each model adds its own input size and normalisation."""

    data: DataConfig
    tta: Sequence[str]
    batch_size: int

    def model_input(self, meta: Dict[str, Any]) -> Tuple[int, List[float], List[float]]:
        """(size, mean, std): the model's recorded ones, else the data config's."""
        size = int(meta.get("input_size") or self.data.image_size)
        return size, list(meta.get("mean") or self.data.mean), list(meta.get("std") or self.data.std)


@dataclass(frozen=True)
class CachedModel:
    """A model as the embedding cache knows it; `build()` gives the model, called only on a miss
    (eval.py builds it only then)."""

    spec: str
    meta: Dict[str, Any]
    checksum: str
    build: Callable[[], torch.nn.Module]


@dataclass(frozen=True)
class CachedRows:
    """The rows to embed, the cache their outputs go to, and the rows' fingerprint (part of the key)."""

    rows: pd.DataFrame
    cache: EmbeddingCache
    fingerprint: str


def cached_outputs(model: CachedModel, heads: Sequence[str], views: ImageViews, rows: CachedRows, accelerator,
                   precision: Optional[str] = None) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """({head: (len(rows), ...) array}, {head: cache key}); extracted on a miss, split across processes.

    `precision` ("no", "bf16", "fp16"): what extraction runs in and the cache key records; None =
    the accelerator's (eval.py's own accelerator runs in eval precision already).
    """
    size, mean, std = views.model_input(model.meta)
    data = views.data
    transform = transform_description(size=size, mean=mean, std=std, tta=views.tta,
                                      orientation_rules=data.orientation_rules, crop_to_bbox=data.crop_to_bbox,
                                      bbox_padding=data.bbox_padding)
    transform["runtime"] = runtime(accelerator, precision)
    keys = {head: cache_key(model.checksum, rows.fingerprint, transform, head) for head in heads}

    def compute() -> Dict[str, np.ndarray]:
        dataset = ReIDDataset(rows.rows, ImageLoader(size, data.cache_dir, data.crop_to_bbox, data.bbox_padding),
                              build_tta_transform(views.tta, size, mean, std), orientation_rules=data.orientation_rules)
        return extract(model.build(), dataset, heads=heads, batch_size=views.batch_size, accelerator=accelerator,
                       num_workers=data.num_workers, desc=f"embedding {model_label(model.spec)}", precision=precision)

    arrays = rows.cache.get_or_compute(keys, compute, accelerator=accelerator, expected_rows=len(rows.rows))
    for head, array in arrays.items():
        _require_finite(array, head, model.spec, rows.rows)
    return arrays, keys


def _require_finite(array: np.ndarray, head: str, spec: str, rows: pd.DataFrame) -> None:
    """Stop on NaN or infinite outputs: retrieval and clustering would turn them into arbitrary answers."""
    bad = nonfinite_rows(array)
    if len(bad):
        names = rows["image_id"].iloc[bad].astype(str).tolist()
        raise DataError(f"model {spec} gives NaN or infinite {head} values for {len(bad)} of {len(rows)} images "
                        f"({list_some(names, 5)}): its weights or these images are broken")


def model_label(spec: str) -> str:
    """A short name for progress bars: the run folder of `runs/x/export`, else the spec's last part."""
    path = Path(spec)
    return (path.parent.name if path.name == "export" and path.parent.name else path.name) or spec


def runtime(accelerator, precision: Optional[str] = None) -> Dict[str, str]:
    """Device type and precision: part of the cache key, since bf16 and fp32 embeddings differ."""
    if accelerator is None:
        return {"device": "cuda" if torch.cuda.is_available() else "cpu", "precision": precision or "no"}
    return {"device": accelerator.device.type, "precision": precision or str(accelerator.mixed_precision)}

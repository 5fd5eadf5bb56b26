"""Each model's outputs for the evaluation rows: loaded, probed, extracted (or read from the cache).

* **Image size.** Each model sees images at the input size and normalisation recorded with it
  (its export's config.json; timm's data config for off-the-shelf backbones), since that is what
  it was trained with: an ensemble may mix sizes. `data.image_size`, `data.mean` and `data.std`
  only fill in for a model that records none.
* **Classifiers.** A model whose forward returns logits votes with its softmax over the
  identities it was trained on, as long as all of them are database identities. Classes that
  partly are not (the model was trained on another version of this data) stop with an error;
  classes that share nothing with the database (another dataset) make the classifier vote
  with its penultimate-feature embedding like an embedder.
* **Pair heads.** A model with a trained pair head (Siamese) also re-scores the shortlist with it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import pandas as pd
import torch

from core.errors import DataError, list_some
from core.schema import EvalConfig
from data.dataset import ReIDDataset
from data.images import ImageLoader
from data.transforms import build_tta_transform
from engine.embed_cache import EmbeddingCache, cache_key, transform_description
from engine.evaluation.scorers import ModelOutput
from engine.extraction import EMBEDDING, LOGITS, extract
from zoo.loading import load_for_eval, probe


def say(accelerator, *parts) -> None:
    """Print once, on the main process."""
    if accelerator is None or accelerator.is_main_process:
        print(*parts, flush=True)


def voting_classes(spec: str, meta: Dict[str, Any], classes: Optional[int],
                   database_identities: set) -> Optional[Dict[str, int]]:
    """The label map a classifier votes over, None if it votes with its embedding (see module doc)."""
    if classes is None:
        return None
    label_map = meta.get("label_map") or {}
    if len(label_map) != classes:
        raise DataError(f"model {spec} outputs {classes} classes but its label map names {len(label_map)} "
                        "identities: the export is inconsistent")
    foreign = sorted(set(label_map) - database_identities)
    if len(foreign) == len(label_map):
        return None
    if foreign:
        raise DataError(f"the classes of model {spec} do not fit this dataset: {len(foreign)} of its {classes} "
                        f"identities are not database identities ({list_some(foreign)}); it was trained on "
                        "other data, so its softmax cannot vote here")
    return {str(k): int(v) for k, v in label_map.items()}


def _runtime(accelerator) -> Dict[str, str]:
    """Device type and precision: part of the cache key, since bf16 and fp32 embeddings differ."""
    if accelerator is None:
        return {"device": "cuda" if torch.cuda.is_available() else "cpu", "precision": "no"}
    return {"device": accelerator.device.type, "precision": str(accelerator.mixed_precision)}


def model_outputs(spec: str, weight: float, cfg: EvalConfig, rows: pd.DataFrame, gallery_identities: set,
                  cache: EmbeddingCache, images_fingerprint: str, accelerator=None) -> ModelOutput:
    """Load one model and extract (or read from the cache) its outputs for `rows`."""
    model, meta, checksum = load_for_eval(spec)
    device = accelerator.device if accelerator is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    size = int(meta.get("input_size") or cfg.data.image_size)
    mean, std = meta.get("mean") or cfg.data.mean, meta.get("std") or cfg.data.std
    probed = probe(model, spec, size, device)
    label_map = voting_classes(spec, meta, probed["classes"], gallery_identities)
    if probed["classes"] is not None and label_map is None:
        say(accelerator, f"{spec}: its classes are none of the database identities; it votes with its embedding")
    heads = (EMBEDDING, LOGITS) if label_map is not None else (EMBEDDING,)
    transform = transform_description(size=size, mean=mean, std=std, tta=cfg.tta,
                                      orientation_rules=cfg.data.orientation_rules, crop_to_bbox=cfg.data.crop_to_bbox,
                                      bbox_padding=cfg.data.bbox_padding)
    transform["runtime"] = _runtime(accelerator)
    keys = {head: cache_key(checksum, images_fingerprint, transform, head) for head in heads}

    def compute() -> Dict[str, np.ndarray]:
        dataset = ReIDDataset(rows, ImageLoader(size, cfg.data.cache_dir, cfg.data.crop_to_bbox, cfg.data.bbox_padding),
                              build_tta_transform(cfg.tta, size, mean, std),
                              orientation_rules=cfg.data.orientation_rules)
        return extract(model, dataset, heads=heads, batch_size=cfg.batch_size, accelerator=accelerator,
                       num_workers=cfg.data.num_workers, desc=f"embedding {Path(spec).name or spec}")

    arrays = cache.get_or_compute(keys, compute, accelerator=accelerator, expected_rows=len(rows))
    info = {"spec": spec, "checksum": checksum, "architecture": meta.get("architecture"), "input_size": size,
            "mean": list(mean), "std": list(std), "embed_dim": probed["embed_dim"], "classes": probed["classes"],
            "votes_with": "softmax" if label_map is not None else "embedding", "cache_keys": keys,
            "training_identities": meta.get("label_map") or None}
    pair_head = _pair_head(model) if probed["pair_head"] else None
    info["pair_head"] = pair_head is not None
    return ModelOutput(spec, arrays[EMBEDDING], arrays.get(LOGITS), label_map, weight, info, pair_head)


def _pair_head(model: torch.nn.Module):
    """The model's pair head as a function of two (N, D) embedding arrays -> (N,) float64 logits."""
    return lambda a, b: np.asarray(model.pair_scores(a, b), dtype=np.float64)

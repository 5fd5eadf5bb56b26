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
* **Fusion models** read their members' embeddings (each member checked against the checksum it
  was trained with, its outputs cached like any model's) and vote with the fused embedding, their
  pair head re-scoring the shortlist.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import numpy as np
import pandas as pd
import torch

from core.errors import DataError, list_some
from core.schema import EvalConfig
from engine.accel import say
from engine.extraction import EMBEDDING, LOGITS
from engine.scoring.cached_outputs import CachedModel, CachedRows, ImageViews, cached_outputs
from engine.scoring.embed_cache import EmbeddingCache, image_list_fingerprint, resolve_embed_cache_dir
from engine.scoring.lazy_model import LazyModel
from engine.scoring.member_features import fused_embeddings, load_recorded_members, member_features
from engine.scoring.scorers import ModelInfo, ModelOutput


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


def model_outputs(spec: str, weight: float, cfg: EvalConfig, cached_rows: CachedRows, gallery_identities: set,
                  accelerator=None) -> ModelOutput:
    """One model's outputs for `rows`, read from the cache or extracted (the model is built only then,
    or for its pair head: engine.scoring.lazy_model)."""
    device = accelerator.device if accelerator is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    handle = LazyModel(spec, device, cached_rows.cache)
    meta = handle.meta
    views = ImageViews(cfg.data, cfg.tta, cfg.batch_size)
    if handle.inputs == "member_features":
        return _fused_outputs(spec, weight, handle.model(), meta, handle.checksum, views, cached_rows, accelerator)
    size, mean, std = views.model_input(meta)
    checksum, probed = handle.identify(size)
    label_map = voting_classes(spec, meta, probed["classes"], gallery_identities)
    if probed["classes"] is not None and label_map is None:
        say(accelerator, f"{spec}: its classes are none of the database identities; it votes with its embedding")
    heads = (EMBEDDING, LOGITS) if label_map is not None else (EMBEDDING,)
    arrays, keys = cached_outputs(CachedModel(spec, meta, checksum, handle.model), heads, views, cached_rows, accelerator)
    pair_head = _pair_head(handle.model) if probed["pair_head"] else None
    info = ModelInfo(spec, checksum, meta.get("architecture"), probed["embed_dim"], probed["classes"],
                     "softmax" if label_map is not None else "embedding", pair_head is not None,
                     meta.get("label_map") or None, input_size=size, mean=list(mean), std=list(std), cache_keys=keys)
    return ModelOutput(spec, arrays[EMBEDDING], arrays.get(LOGITS), label_map, weight, info, pair_head)


def all_model_outputs(cfg: EvalConfig, rows: pd.DataFrame, gallery_identities: set, accelerator=None) -> List[ModelOutput]:
    """Every model of cfg.models over `rows`, with its weight; a model listed twice is told apart by number."""
    cached_rows = CachedRows(rows, EmbeddingCache(resolve_embed_cache_dir(cfg.embed_cache)), image_list_fingerprint(rows))
    weights = cfg.weights or [1.0] * len(cfg.models)
    outputs = [model_outputs(spec, weight, cfg, cached_rows, gallery_identities, accelerator)
               for spec, weight in zip(cfg.models, weights, strict=True)]
    specs = list(cfg.models)
    for i, out in enumerate(outputs):
        if specs.count(out.name) > 1:  # the same model twice (e.g. with other weights)
            out.name = f"{out.name} #{i + 1}"
    return outputs


def _fused_outputs(spec: str, weight: float, model, meta: Dict[str, Any], checksum: str, views: ImageViews,
                   rows: CachedRows, accelerator) -> ModelOutput:
    """A fusion model: its members' embeddings (checked, cached), then its fused embedding; it votes
    with that embedding, and its pair head (if trained) re-scores the shortlist."""
    members = load_recorded_members(model.members, spec, model.pca(0)[0].device)  # (it may have no parameters)
    blocks = member_features(members, views, rows, accelerator)
    embeddings = fused_embeddings(model, np.concatenate(blocks, axis=1), batch_size=max(256, views.batch_size),
                                  accelerator=accelerator)
    # The members' own embeddings, for the eval-time choice (engine.scoring.choice).
    alone = [ModelOutput(m.spec, block, info=ModelInfo(m.spec, m.checksum, m.meta.get("architecture"), int(block.shape[1]),
                                                       training_identities=m.meta.get("label_map") or None))
             for m, block in zip(members, blocks, strict=True)]
    info = ModelInfo(spec, checksum, meta.get("architecture"), model.embed_dim, pair_head=model.has_pair_head,
                     training_identities=meta.get("label_map") or None,
                     members=[{"spec": m.spec, "checksum": m.checksum} for m in members])
    return ModelOutput(spec, embeddings, None, None, weight, info, _pair_head(lambda: model) if model.has_pair_head else None,
                       members=alone)


def _pair_head(model: Callable[[], torch.nn.Module]):
    """The pair head of the model `model()` gives, as a function of two (N, D) embedding arrays -> (N,)
    float64 logits."""
    return lambda a, b: np.asarray(model().pair_scores(a, b), dtype=np.float64)

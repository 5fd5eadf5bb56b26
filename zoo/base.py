"""The interface every zoo model offers to the trainer, the evaluator and the export."""
from __future__ import annotations

import inspect
from typing import Any, Dict, List, Mapping, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoo.trunk import Trunk
from zoo.trunk_config import TRUNK, split_model_args


class ReIDModel(nn.Module):
    """forward(images) -> {"embedding": (B, D) raw, "logits"?: (B, num_classes), "features": [maps]}.

    A model is built as `Model(num_classes, TrunkConfig(...), **own)`, its own arguments keyword-only;
    `from_args` builds it from config arguments instead. Attributes the export records:
    `architecture` (registry name), `model_args` ({"trunk": block, **own}: rebuilds it),
    `embed_dim`, `num_classes`, `input_size`, `mean`, `std`. `has_pair_head` tells the evaluator
    whether `pair_scores` can re-score pairs of embeddings.
    """

    architecture: str = ""
    inputs: str = "images"  # what forward() reads: "images", or "member_features" (zoo.fusion)
    has_pair_head: bool = False
    embed_dim: int
    num_classes: int
    model_args: Dict[str, Any]
    input_size: int
    mean: List[float]
    std: List[float]

    @classmethod
    def own_args(cls) -> Tuple[str, ...]:
        """The config arguments of this model beyond the trunk block: its keyword-only ones."""
        params = inspect.signature(cls.__init__).parameters.values()
        return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY)

    @classmethod
    def block_args(cls, args: Mapping[str, Any]) -> Dict[str, Any]:
        """Config arguments, trunk settings flat or nested, as {"trunk": {...}, **own} (what exports record)."""
        trunk, own = split_model_args(cls.architecture, args, cls.own_args())
        return {TRUNK: trunk.to_args(), **own}

    @classmethod
    def from_args(cls, num_classes: int = 0, **args: Any) -> ReIDModel:
        """The registry's builder: config arguments (trunk settings flat or under `trunk:`) -> model."""
        trunk, own = split_model_args(cls.architecture, args, cls.own_args())
        return cls(num_classes, trunk, **own)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings, the vectors retrieval compares by inner product."""
        return F.normalize(self(images)["embedding"].float(), dim=1)

    def _finish(self, trunk: Trunk, *, num_classes: int, embed_dim: int, own: Mapping[str, Any]) -> None:
        """Sizes, input size and normalisation (the block's, else what timm knows of the backbone's
        weights), and the arguments that rebuild the model."""
        cfg, known = trunk.config, trunk.data_config
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.input_size = int(cfg.input_size or cfg.img_size or known["input_size"][-1])
        self.mean = [float(v) for v in (cfg.mean if cfg.mean is not None else known["mean"])]
        self.std = [float(v) for v in (cfg.std if cfg.std is not None else known["std"])]
        self.model_args = {TRUNK: cfg.to_args(), **own}



Embeddings = Union[np.ndarray, torch.Tensor]


class PairScoring:
    """`pair_scores` for a model with `pair_logits(a, b)` and a `pair_head` module (Siamese, fusion)."""

    embed_dim: int
    pair_head: nn.Module

    def pair_scores(self, emb_a: Embeddings, emb_b: Embeddings, *, batch_size: int = 8192) -> np.ndarray:
        """(N,) float32 logits of "same individual" for rows of already-extracted embeddings.

        Arrays or tensors, raw or normalised; run without gradients, in float32 (outside any
        autocast) on the head's device, `batch_size` pairs at a time.
        """
        a, b = _as_tensor(emb_a), _as_tensor(emb_b)
        if a.ndim != 2 or a.shape != b.shape or a.shape[1] != self.embed_dim:
            raise ValueError(f"pair_scores needs two (N, {self.embed_dim}) embedding arrays, got "
                             f"{tuple(a.shape)} and {tuple(b.shape)}")
        device = next(self.pair_head.parameters()).device
        scores = []
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            for start in range(0, len(a), batch_size):
                rows = slice(start, start + batch_size)
                pair = (a[rows].to(device, torch.float32), b[rows].to(device, torch.float32))
                scores.append(self.pair_logits(*pair).cpu())
        return torch.cat(scores).numpy() if scores else np.zeros(0, np.float32)


def _as_tensor(embeddings: Embeddings) -> torch.Tensor:
    return embeddings.detach() if isinstance(embeddings, torch.Tensor) else torch.from_numpy(np.asarray(embeddings))

"""The `siamese` model: a shared embedder plus a head that scores whether two images show the same individual."""
from __future__ import annotations

from typing import Any, Dict, List, Union

import torch
import torch.nn.functional as F
from torch import nn

from zoo.base import ReIDModel
from zoo.embedder import Embedder
from zoo.registry import MODELS


@MODELS.register("siamese")
class Siamese(ReIDModel):
    """Embedder (shared by both images of a pair) + MLP on (|a-b|, a*b) -> same-individual logit."""

    architecture = "siamese"

    def __init__(
        self,
        num_classes: int = 0,
        backbone: str = "resnet18",
        pretrained: Union[bool, str] = False,
        embed_dim: int = 512,
        pool: str | None = None,
        drop_rate: float = 0.0,
        freeze_stages: int = 0,
        feature_layers: List[int] | None = None,
        img_size: int | None = None,
        input_size: int | None = None,
        mean: List[float] | None = None,
        std: List[float] | None = None,
        backbone_args: Dict[str, Any] | None = None,
        pair_hidden: int = 256,
    ):
        super().__init__()
        self.embedder = Embedder(
            num_classes, backbone, pretrained, embed_dim, pool, drop_rate, freeze_stages,
            feature_layers, img_size, input_size, mean, std, backbone_args,
        )
        self.pair_head = nn.Sequential(nn.Linear(2 * embed_dim, pair_hidden), nn.ReLU(), nn.Linear(pair_hidden, 1))
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self._set_data_config(self.embedder.trunk, input_size, mean, std, img_size)
        self._record(locals(), self.embedder.trunk)

    def forward(self, images: torch.Tensor) -> Dict[str, Any]:
        return self.embedder(images)

    def pair_logits(self, emb_a: torch.Tensor, emb_b: torch.Tensor) -> torch.Tensor:
        """(N, D) x (N, D) -> (N,) logits of "same individual"; raw or normalised embeddings alike."""
        # Comparing unit vectors makes the head independent of embedding scale, and lets the evaluator
        # feed it the normalised vectors of embed().
        a, b = F.normalize(emb_a, dim=1), F.normalize(emb_b, dim=1)
        return self.pair_head(torch.cat([(a - b).abs(), a * b], dim=1)).squeeze(1)

    def pair_probability(self, emb_a: torch.Tensor, emb_b: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.pair_logits(emb_a, emb_b))

"""The `siamese` model: a shared embedder plus a head that scores whether two images show the same individual."""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import nn

from zoo.base import PairScoring, ReIDModel
from zoo.embedder import Embedder
from zoo.registry import MODELS
from zoo.trunk_config import TrunkConfig


@MODELS.register("siamese")
class Siamese(PairScoring, ReIDModel):
    """Embedder (shared by both images of a pair) + MLP on (|a-b|, a*b) -> same-individual logit.

    The head reads L2-normalised embeddings (it normalises what it is given), so it scores the
    vectors of `embed()` and of engine.extraction (TTA views averaged, normalised again) as well as
    the raw ones the training loss feeds it.
    """

    has_pair_head = True

    def __init__(self, num_classes: int = 0, trunk: TrunkConfig = TrunkConfig(), *, embed_dim: int = 512,
                 pair_hidden: int = 256):
        super().__init__()
        self.embedder = Embedder(num_classes, trunk, embed_dim=embed_dim)
        self.pair_head = nn.Sequential(nn.Linear(2 * embed_dim, pair_hidden), nn.ReLU(), nn.Linear(pair_hidden, 1))
        self._finish(self.embedder.trunk, num_classes=num_classes, embed_dim=embed_dim,
                     own={"embed_dim": embed_dim, "pair_hidden": pair_hidden})

    def forward(self, images: torch.Tensor) -> Dict[str, Any]:
        return self.embedder(images)

    def pair_logits(self, emb_a: torch.Tensor, emb_b: torch.Tensor) -> torch.Tensor:
        """(N, D) x (N, D) -> (N,) logits of "same individual", differentiable: what the pair loss trains."""
        # Comparing unit vectors makes the head independent of embedding scale, and lets the evaluator
        # feed it the normalised vectors of embed().
        a, b = F.normalize(emb_a, dim=1), F.normalize(emb_b, dim=1)
        return self.pair_head(torch.cat([(a - b).abs(), a * b], dim=1)).squeeze(1)

    def pair_probability(self, emb_a: torch.Tensor, emb_b: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.pair_logits(emb_a, emb_b))

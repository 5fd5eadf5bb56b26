"""Metric-learning models: the `embedder` (backbone -> pooling -> Linear+BN neck) and plain pooled `features`."""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

from zoo.base import ReIDModel
from zoo.registry import MODELS
from zoo.trunk import Trunk
from zoo.trunk_config import TrunkConfig


@MODELS.register("embedder")
class Embedder(ReIDModel):
    """timm backbone -> pooling -> dropout -> Linear -> BatchNorm1d: an `embed_dim`-dim embedding.

    The BatchNorm neck (as in BNNeck re-ID baselines) keeps the embedding centred, which margin
    losses on the unit sphere train best with. `num_classes` is unused: margin losses own their
    class centres. The trunk settings are those of `TrunkConfig`.
    """

    def __init__(self, num_classes: int = 0, trunk: TrunkConfig = TrunkConfig(), *, embed_dim: int = 512):
        super().__init__()
        self.trunk = Trunk(trunk)
        self.dropout = nn.Dropout(trunk.drop_rate)
        self.neck = nn.Sequential(nn.Linear(self.trunk.num_features, embed_dim, bias=False), nn.BatchNorm1d(embed_dim))
        self._finish(self.trunk, num_classes=num_classes, embed_dim=embed_dim, own={"embed_dim": embed_dim})

    def forward(self, images: torch.Tensor) -> Dict[str, Any]:
        pooled, maps = self.trunk(images)
        return {"embedding": self.neck(self.dropout(pooled)), "features": maps}


@MODELS.register("features")
class Features(ReIDModel):
    """A backbone's pooled features as the embedding, no neck: off-the-shelf models such as MegaDescriptor."""

    def __init__(self, num_classes: int = 0, trunk: TrunkConfig = TrunkConfig()):
        super().__init__()
        self.trunk = Trunk(trunk)
        self.dropout = nn.Dropout(trunk.drop_rate)
        self._finish(self.trunk, num_classes=num_classes, embed_dim=self.trunk.num_features, own={})

    def forward(self, images: torch.Tensor) -> Dict[str, Any]:
        pooled, maps = self.trunk(images)
        return {"embedding": self.dropout(pooled), "features": maps}

"""The `classifier`: backbone -> pooled penultimate features -> Linear(num_classes)."""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

from core.errors import ConfigError
from zoo.base import ReIDModel
from zoo.registry import MODELS
from zoo.trunk import Trunk
from zoo.trunk_config import TrunkConfig


@MODELS.register("classifier")
class Classifier(ReIDModel):
    """A closed-set classifier whose penultimate (pooled) features double as the re-ID embedding."""

    def __init__(self, num_classes: int, trunk: TrunkConfig = TrunkConfig()):
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"model 'classifier' needs at least one training identity, got num_classes={num_classes}")
        self.trunk = Trunk(trunk)
        self.dropout = nn.Dropout(trunk.drop_rate)
        self.head = nn.Linear(self.trunk.num_features, num_classes)
        self._finish(self.trunk, num_classes=num_classes, embed_dim=self.trunk.num_features, own={})

    def forward(self, images: torch.Tensor) -> Dict[str, Any]:
        pooled, maps = self.trunk(images)
        return {"embedding": pooled, "logits": self.head(self.dropout(pooled)), "features": maps}

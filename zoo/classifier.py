"""The `classifier`: backbone -> pooled penultimate features -> Linear(num_classes)."""
from __future__ import annotations

from typing import Any, Dict, List, Union

import torch
from torch import nn

from core.errors import ConfigError
from zoo.base import ReIDModel
from zoo.registry import MODELS
from zoo.trunk import Trunk


@MODELS.register("classifier")
class Classifier(ReIDModel):
    """A closed-set classifier whose penultimate (pooled) features double as the re-ID embedding."""

    architecture = "classifier"

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet18",
        pretrained: Union[bool, str] = False,
        pool: str | None = None,
        drop_rate: float = 0.0,
        freeze_stages: int = 0,
        feature_layers: List[int] | None = None,
        img_size: int | None = None,
        input_size: int | None = None,
        mean: List[float] | None = None,
        std: List[float] | None = None,
        backbone_args: Dict[str, Any] | None = None,
    ):
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"model 'classifier' needs at least one training identity, got num_classes={num_classes}")
        self.trunk = Trunk(backbone, pretrained, pool, freeze_stages, feature_layers, img_size, backbone_args)
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.trunk.num_features, num_classes)
        self.embed_dim = self.trunk.num_features
        self.num_classes = num_classes
        self._set_data_config(self.trunk, input_size, mean, std, img_size)
        self._record(locals(), self.trunk)

    def forward(self, images: torch.Tensor) -> Dict[str, Any]:
        pooled, maps = self.trunk(images)
        return {"embedding": pooled, "logits": self.head(self.dropout(pooled)), "features": maps}

"""A user's own components, kept outside reidzoo: a model and a loss, registered with the same
decorators as the built-in ones. Use them from any recipe with

    plugins: [my_components]          # this file's module name, importable (on PYTHONPATH)
    model: {name: mlp_embedder, args: {backbone: resnet18, embed_dim: 128}}
    losses: [{name: arcface}, {name: centre, weight: 0.01}]

or without touching the recipe: REIDZOO_PLUGINS=my_components python train.py model.name=mlp_embedder
(tests/test_plugins.py trains this example end to end).
"""
from typing import Any, Dict

import torch
from torch import nn

from losses.base import require_output
from losses.registry import LOSSES
from zoo.base import ReIDModel
from zoo.registry import MODELS
from zoo.trunk import Trunk
from zoo.trunk_config import TrunkConfig


@MODELS.register("mlp_embedder")
class MlpEmbedder(ReIDModel):
    """Backbone -> pooling -> two-layer MLP: an `embed_dim`-dim embedding."""

    def __init__(self, num_classes: int = 0, trunk: TrunkConfig = TrunkConfig(), *,
                 embed_dim: int = 256, hidden: int = 1024):
        super().__init__()
        self.trunk = Trunk(trunk)  # any timm or hf-hub: backbone, pooling, frozen stages, feature maps
        self.head = nn.Sequential(nn.Linear(self.trunk.num_features, hidden), nn.GELU(), nn.Linear(hidden, embed_dim))
        self._finish(self.trunk, num_classes=num_classes, embed_dim=embed_dim,
                     own={"embed_dim": embed_dim, "hidden": hidden})

    def forward(self, images: torch.Tensor) -> Dict[str, Any]:
        pooled, maps = self.trunk(images)
        return {"embedding": self.head(pooled), "features": maps}


class CentreLoss(nn.Module):
    """Mean squared distance of each embedding to its identity's learnt centre."""

    def __init__(self, num_classes: int, embed_dim: int):
        super().__init__()
        self.centres = nn.Parameter(0.01 * torch.randn(num_classes, embed_dim))

    def forward(self, outputs, labels, model=None):
        embedding = require_output(outputs, "embedding", "centre", "the model must return embeddings")
        return ((embedding - self.centres[labels]) ** 2).sum(dim=1).mean()


@LOSSES.register("centre")
def centre(embed_dim: int, num_classes: int, distributed: bool = False):
    # Per-sample: under DDP, averaging gradients over processes already gives the global batch's.
    return CentreLoss(num_classes, embed_dim)

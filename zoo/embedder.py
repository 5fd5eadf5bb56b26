"""Metric-learning models: the `embedder` (backbone -> pooling -> Linear+BN neck) and plain pooled `features`."""
from __future__ import annotations

from typing import Any, Dict, List, Union

import torch
from torch import nn

from zoo.base import ReIDModel
from zoo.registry import MODELS
from zoo.trunk import Trunk


@MODELS.register("embedder")
class Embedder(ReIDModel):
    """timm backbone -> pooling -> dropout -> Linear -> BatchNorm1d: a D-dim embedding.

    The BatchNorm neck (as in BNNeck re-ID baselines) keeps the embedding centred, which margin
    losses on the unit sphere train best with. `num_classes` is unused: margin losses own their
    class centres.

    Arguments shared by every zoo model:
      backbone: any timm name, or `hf-hub:org/repo`.
      pretrained: false | true (timm / hub download) | path of a .safetensors/.pth/.bin file.
      pool: None = the backbone's own (avg for CNNs, class token for ViTs) | avg | max | avgmax | token | gem.
      freeze_stages: freeze the stem and the first N stages (0 = train everything).
      feature_layers: indices into timm's feature_info whose maps forward() returns under
        "features" (resnet: 0 = stem, 1-4 = layer1-4; ViT: blocks).
      img_size: input size a ViT is built for; input_size/mean/std: override what timm knows of the
        weights (the trainer sets them from the data config before export).
      backbone_args: further timm.create_model arguments, e.g. {drop_path_rate: 0.1}.
    """

    architecture = "embedder"

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
    ):
        super().__init__()
        self.trunk = Trunk(backbone, pretrained, pool, freeze_stages, feature_layers, img_size, backbone_args)
        self.dropout = nn.Dropout(drop_rate)
        self.neck = nn.Sequential(nn.Linear(self.trunk.num_features, embed_dim, bias=False), nn.BatchNorm1d(embed_dim))
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self._set_data_config(self.trunk, input_size, mean, std, img_size)
        self._record(locals(), self.trunk)

    def forward(self, images: torch.Tensor) -> Dict[str, Any]:
        pooled, maps = self.trunk(images)
        return {"embedding": self.neck(self.dropout(pooled)), "features": maps}


@MODELS.register("features")
class Features(ReIDModel):
    """A backbone's pooled features as the embedding, no neck: off-the-shelf models such as MegaDescriptor."""

    architecture = "features"

    def __init__(
        self,
        num_classes: int = 0,
        backbone: str = "resnet18",
        pretrained: Union[bool, str] = False,
        pool: str | None = None,
        freeze_stages: int = 0,
        feature_layers: List[int] | None = None,
        img_size: int | None = None,
        input_size: int | None = None,
        mean: List[float] | None = None,
        std: List[float] | None = None,
        backbone_args: Dict[str, Any] | None = None,
    ):
        super().__init__()
        self.trunk = Trunk(backbone, pretrained, pool, freeze_stages, feature_layers, img_size, backbone_args)
        self.embed_dim = self.trunk.num_features
        self.num_classes = num_classes
        self._set_data_config(self.trunk, input_size, mean, std, img_size)
        self._record(locals(), self.trunk)

    def forward(self, images: torch.Tensor) -> Dict[str, Any]:
        pooled, maps = self.trunk(images)
        return {"embedding": pooled, "features": maps}

"""A timm backbone with its global pooling and optional intermediate feature maps: the part every model shares."""
from __future__ import annotations

import dataclasses
from typing import List, Sequence, Tuple

import torch
from torch import nn

from core.errors import ConfigError
from zoo.backbone_args import check_backbone_args
from zoo.pooling import GeM
from zoo.trunk_config import TrunkConfig


class Trunk(nn.Module):
    """images -> (pooled features (B, num_features), [intermediate maps (B, C_l, H_l, W_l)])."""

    def __init__(self, cfg: TrunkConfig):
        # timm (with the torchvision and torch._dynamo it pulls in, a slow import) is imported when a
        # model is built, not when zoo is: eval.py reads cached embeddings without building any model.
        import timm.data

        from zoo.backbones import create_backbone, freeze_stages, resolve_hub_name

        super().__init__()
        architecture, hub_args, hub_cfg = resolve_hub_name(cfg.backbone)
        hub_args = dict(hub_args)
        hub_size = hub_args.pop("img_size", None)
        # A hub model's own arguments are recorded with the user's, so they are held to the same list
        # (or its export would not load back).
        kwargs = {**check_backbone_args(hub_args, f"{cfg.backbone} model_args"),
                  **check_backbone_args(cfg.backbone_args or {})}
        if cfg.img_size or hub_size:
            kwargs["img_size"] = cfg.img_size or hub_size
        if hub_cfg is not None:
            kwargs["pretrained_cfg"] = hub_cfg
        use_gem = cfg.pool == "gem"
        # With GeM, timm keeps no pooling of its own and we pool forward_features' map ourselves.
        self.body = create_backbone(
            architecture, cfg.pretrained, num_classes=0, global_pool="" if use_gem else cfg.pool, **kwargs
        )
        self.gem = GeM() if use_gem else None
        self.num_features: int = self.body.num_features
        self.architecture = architecture
        # The block an export records: a hub name becomes its timm architecture and arguments, so
        # rebuilding needs no network.
        resolved_args = {k: v for k, v in kwargs.items() if k not in ("img_size", "pretrained_cfg")}
        self.config = dataclasses.replace(cfg, backbone=architecture, backbone_args=resolved_args)
        self.data_config = timm.data.resolve_data_config({}, model=self.body)
        self.feature_layers = self._check_layers(cfg.feature_layers)
        self.frozen = freeze_stages(self.body, cfg.freeze_stages)

    def _check_layers(self, layers: Sequence[int] | None) -> List[int]:
        layers = list(layers or [])
        if not layers:
            return []
        if not hasattr(self.body, "forward_intermediates"):
            raise ConfigError(f"backbone '{self.architecture}' cannot return intermediate feature maps")
        count = len(self.body.feature_info)
        bad = [i for i in layers if not isinstance(i, int) or not -count <= i < count]
        if bad:
            names = [info["module"] for info in self.body.feature_info]
            raise ConfigError(
                f"feature_layers {bad} out of range: '{self.architecture}' has {count} feature levels "
                f"0..{count - 1} ({', '.join(names)})"
            )
        return layers

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        if self.feature_layers:
            final, maps = self.body.forward_intermediates(images, indices=self.feature_layers)
        else:
            final, maps = self.body.forward_features(images), []
        pooled = self.gem(final) if self.gem is not None else self.body.forward_head(final, pre_logits=True)
        return pooled, list(maps)

    def train(self, mode: bool = True) -> Trunk:
        super().train(mode)
        if mode and self.frozen:
            # Frozen stages stay in eval mode so their BatchNorm statistics do not drift either.
            for module in self.body.modules():
                own = list(module.parameters(recurse=False))
                if own and not any(p.requires_grad for p in own):
                    module.eval()
        return self

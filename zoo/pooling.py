"""Generalised-mean pooling, the usual global pooling of re-identification models."""
from __future__ import annotations

import torch
from torch import nn

from core.errors import ConfigError


class GeM(nn.Module):
    """mean(x^p)^(1/p) over the spatial grid with a learnable p: p=1 is average, large p tends to max.

    timm's pooling layers offer avg/max/avgmax but no GeM, hence this module.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ConfigError(
                f"pool 'gem' needs (B, C, H, W) feature maps, got shape {tuple(x.shape)}: "
                "use pool=avg or pool=token with transformer backbones"
            )
        # Clamping keeps the fractional power defined; p is clamped so it cannot collapse to 0.
        p = self.p.clamp(min=1.0)
        return x.clamp(min=self.eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)

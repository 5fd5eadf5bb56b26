"""Additive-margin softmax losses with learnable class centres: ArcFace, SubCenterArcFace, CosFace.

pytorch-metric-learning computes them; our configs give the ArcFace margin in radians (as in the
paper, 0.5) and PML expects degrees, so it is converted here. CosFace's margin is an additive
cosine, passed as is. The default scale is 30, not PML's 64: with the hundreds to thousands of
identities of wildlife sets, s=30 already lets the target probability reach ~1 and trains more
stably from scratch; 64 is the face-recognition setting for 10^5 classes.

Under DDP nothing is gathered: these are per-sample losses, so averaging gradients over processes
already equals the global-batch gradient. The class centres are parameters of the criterion, which
the trainer must optimise (and synchronise) along with the model.
"""
from __future__ import annotations

import math
from typing import Any, Dict

import torch
from torch import nn

from core.errors import ConfigError
from losses.base import require_output
from losses.registry import LOSSES


class MarginSoftmax(nn.Module):
    """A PML classification-style metric loss on outputs["embedding"]; owns the class centres `loss.W`."""

    def __init__(self, name: str, loss: nn.Module):
        super().__init__()
        self.name = name
        self.loss = loss

    def forward(self, outputs: Dict[str, Any], labels: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        embedding = require_output(outputs, "embedding", self.name, "the model must return embeddings")
        return self.loss(embedding, labels)


def _check(name: str, num_classes: int, margin: float, limit: float, unit_hint: str) -> None:
    if num_classes < 2:
        raise ConfigError(f"loss '{name}' needs at least 2 training identities, got {num_classes}")
    if not 0.0 <= margin < limit:
        raise ConfigError(f"loss '{name}': margin must be in [0, {limit:.3g}) {unit_hint}, got {margin}")


@LOSSES.register("arcface")
def arcface(embed_dim: int, num_classes: int, distributed: bool = False, margin: float = 0.5, scale: float = 30.0):
    """cos(theta_y + margin) * scale for the target class; margin in radians (0.5 rad = 28.6 degrees)."""
    from pytorch_metric_learning import losses as pml  # on use (losses/__init__.py)

    _check("arcface", num_classes, margin, math.pi / 2, "radians (0.5 rad = 28.6 degrees)")
    return MarginSoftmax("arcface", pml.ArcFaceLoss(num_classes, embed_dim, margin=math.degrees(margin), scale=scale))


@LOSSES.register("subcenter_arcface")
def subcenter_arcface(
    embed_dim: int,
    num_classes: int,
    distributed: bool = False,
    margin: float = 0.5,
    scale: float = 30.0,
    sub_centers: int = 3,
):
    """ArcFace with `sub_centers` centres per class (robust to noisy labels and multi-modal identities)."""
    _check("subcenter_arcface", num_classes, margin, math.pi / 2, "radians (0.5 rad = 28.6 degrees)")
    if sub_centers < 1:
        raise ConfigError(f"loss 'subcenter_arcface': sub_centers must be >= 1, got {sub_centers}")
    from pytorch_metric_learning import losses as pml  # on use (losses/__init__.py)

    loss = pml.SubCenterArcFaceLoss(
        num_classes=num_classes, embedding_size=embed_dim, margin=math.degrees(margin), scale=scale, sub_centers=sub_centers
    )
    return MarginSoftmax("subcenter_arcface", loss)


@LOSSES.register("cosface")
def cosface(embed_dim: int, num_classes: int, distributed: bool = False, margin: float = 0.35, scale: float = 30.0):
    """(cos(theta_y) - margin) * scale for the target class; margin is a cosine offset."""
    from pytorch_metric_learning import losses as pml  # on use (losses/__init__.py)

    _check("cosface", num_classes, margin, 1.0, "(a cosine offset, e.g. 0.35)")
    return MarginSoftmax("cosface", pml.CosFaceLoss(num_classes, embed_dim, margin=margin, scale=scale))

"""Feature-similarity loss over intermediate layers (KCC team, AnimalCLEF 2025).

For each feature map l: global-average-pool every image to h_i, S_ij = cos(h_i, h_j) over the batch,
T_ij = 1 for the same identity else 0, loss_l = MSE(S, T) over all batch pairs; the loss is the sum
over layers. It pulls intermediate representations of an identity together even for rare classes,
which is what kept the paper's classifier from collapsing under 1:200 class imbalance. The CE part of
the paper's objective is a separate `cross_entropy` entry of the loss list.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import nn

from losses.base import require_output
from losses.distributed import gather_batch, scale_gradient, world_size
from losses.registry import LOSSES


def similarity_mse(pooled: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    unit = F.normalize(pooled, dim=1)
    target = (labels[:, None] == labels[None, :]).to(unit.dtype)
    return F.mse_loss(unit @ unit.T, target)


class FeatureSimilarity(nn.Module):
    def __init__(self, distributed: bool):
        super().__init__()
        self.distributed = distributed

    def forward(self, outputs: Dict[str, Any], labels: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        maps = require_output(
            outputs, "features", "feature_similarity", "build the model with feature_layers, e.g. [2, 3]"
        )
        processes = world_size() if self.distributed else 1
        total = 0.0
        for fmap in maps:
            pooled, batch_labels = fmap.mean(dim=(2, 3)), labels
            if processes > 1:  # similarities against the whole global batch
                pooled, batch_labels = gather_batch(pooled, labels)
            total = total + similarity_mse(pooled, batch_labels)
        return scale_gradient(total, processes) if processes > 1 else total


@LOSSES.register("feature_similarity")
def feature_similarity(embed_dim: int, num_classes: int, distributed: bool = False):
    return FeatureSimilarity(distributed)

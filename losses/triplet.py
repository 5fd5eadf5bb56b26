"""Triplet margin loss (pytorch-metric-learning) with a batch-hard, semi-hard or no miner."""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

from core.errors import ConfigError
from core.suggest import did_you_mean
from losses.base import require_output
from losses.distributed import value_with_gradient_of, world_size
from losses.registry import LOSSES

MINERS = ("batch_hard", "semi_hard", "all")
DISTANCES = ("euclidean", "cosine")


class MinedTripletLoss(nn.Module):
    """Mines triplets in the batch (the global batch under torch.distributed), then applies the loss."""

    def __init__(self, loss: nn.Module, miner: nn.Module | None, distributed: bool):
        from pytorch_metric_learning.utils.distributed import (  # on use
            DistributedLossWrapper,
            DistributedMinerWrapper,
        )

        super().__init__()
        self.loss, self.miner, self.distributed = loss, miner, distributed
        # PML's wrappers all-gather embeddings and labels; used only when a process group is running.
        self.global_loss = DistributedLossWrapper(loss) if distributed else None
        self.global_miner = DistributedMinerWrapper(miner) if distributed and miner is not None else None

    def forward(self, outputs: Dict[str, Any], labels: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        embedding = require_output(outputs, "embedding", "triplet", "the model must return embeddings")
        processes = world_size()
        if not self.distributed or processes == 1:
            indices = self.miner(embedding, labels) if self.miner is not None else None
            return self.loss(embedding, labels, indices)
        indices = self.global_miner(embedding, labels) if self.global_miner is not None else None
        # The wrapper returns W x loss so that DDP's averaging yields the global-batch gradient;
        # report the plain loss value, keep that gradient.
        scaled = self.global_loss(embedding, labels, indices)
        return value_with_gradient_of(scaled / processes, scaled)


@LOSSES.register("triplet")
def triplet(
    embed_dim: int,
    num_classes: int,
    distributed: bool = False,
    margin: float = 0.2,
    miner: str = "batch_hard",
    distance: str = "euclidean",
):
    """max(d(a, p) - d(a, n) + margin, 0) averaged over non-zero triplets, on L2-normalised embeddings.

    miner: batch_hard (hardest positive and negative per anchor), semi_hard (negatives farther than
    the positive but within the margin) or all (every valid triplet). distance: euclidean | cosine.
    """
    if miner not in MINERS:
        raise ConfigError(f"loss 'triplet': unknown miner '{miner}'{did_you_mean(miner, MINERS)}")
    if distance not in DISTANCES:
        raise ConfigError(f"loss 'triplet': unknown distance '{distance}'{did_you_mean(distance, DISTANCES)}")
    from pytorch_metric_learning import distances, miners  # on use (losses/__init__.py)
    from pytorch_metric_learning import losses as pml

    measure = distances.LpDistance(normalize_embeddings=True) if distance == "euclidean" else distances.CosineSimilarity()
    mining = {
        "batch_hard": lambda: miners.BatchHardMiner(distance=measure),
        "semi_hard": lambda: miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard", distance=measure),
        "all": lambda: None,
    }[miner]()
    return MinedTripletLoss(pml.TripletMarginLoss(margin=margin, distance=measure), mining, distributed)

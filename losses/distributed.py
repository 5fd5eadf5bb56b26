"""Letting pair and triplet losses see the whole global batch under torch.distributed.

Each process gathers every process's embeddings (its own keep their gradient, the others' do not)
and computes the loss over the global batch. Its gradient then covers only its own embeddings, and
DDP averages over W processes, so the gradient is scaled by W to equal the one-process gradient
on the global batch (pytorch-metric-learning's DistributedLossWrapper does the same). The loss
*value* is kept unscaled so logs compare across process counts.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_batch(values: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """This process's rows first (with gradient), then the other processes' rows in rank order."""
    from pytorch_metric_learning.utils.distributed import gather  # on use (losses/__init__.py)

    all_values, all_labels, _ = gather(values, labels)
    return all_values, all_labels


def gather_items(values: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """The batch's dataset positions, in the order gather_batch puts the rows of `values`."""
    from pytorch_metric_learning.utils.distributed import gather

    return gather(values.detach()[:, :1], items)[1]


def value_with_gradient_of(value: torch.Tensor, grad_source: torch.Tensor) -> torch.Tensor:
    """A tensor equal to `value` whose gradient is that of `grad_source`."""
    return value.detach() + (grad_source - grad_source.detach())


def scale_gradient(loss: torch.Tensor, factor: float) -> torch.Tensor:
    """`loss` unchanged, its gradient multiplied by `factor`."""
    return value_with_gradient_of(loss, loss * factor)

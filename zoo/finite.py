"""Weights that hold NaN or infinite values: a diverged training run, or a broken file from someone
else. Such a model embeds every image as NaN, which retrieval and clustering then turn into
arbitrary answers without a word, so exports, checkpoints and loads refuse them."""
from __future__ import annotations

from typing import List, Mapping

import torch
from torch import nn

from core.errors import list_some


def nonfinite_tensors(tensors: Mapping[str, torch.Tensor]) -> List[str]:
    """Names of the floating-point tensors holding a NaN or an infinity (integer counters never do)."""
    return [name for name, tensor in tensors.items()
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor.detach()).all())]


def nonfinite_weights(module: nn.Module) -> str | None:
    """None when every weight and buffer of `module` is finite, else which are not, for a message."""
    state = module.state_dict()
    bad = nonfinite_tensors(state)
    if not bad:
        return None
    return f"{len(bad)} of {len(state)} weight tensors hold NaN or infinite values ({list_some(bad, 3)})"

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
    floats = {name: tensor.detach() for name, tensor in tensors.items() if tensor.is_floating_point()}
    if not floats:
        return []
    # A NaN or an infinity makes the sum NaN or infinite, so a finite sum clears a tensor; only a
    # non-finite one (or a sum that overflowed) is looked at element by element. A sum allocates no
    # copy of the tensor, and all the sums come back in one transfer (loads and checkpoints pay it).
    device = next(iter(floats.values())).device
    sums = torch.stack([tensor.sum(dtype=torch.float32).to(device) for tensor in floats.values()])
    suspects = [name for name, finite in zip(floats, torch.isfinite(sums).tolist(), strict=True) if not finite]
    return [name for name in suspects if not bool(torch.isfinite(floats[name]).all())]


def nonfinite_weights(module: nn.Module) -> str | None:
    """None when every weight and buffer of `module` is finite, else which are not, for a message."""
    state = module.state_dict()
    bad = nonfinite_tensors(state)
    if not bad:
        return None
    return f"{len(bad)} of {len(state)} weight tensors hold NaN or infinite values ({list_some(bad, 3)})"

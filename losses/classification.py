"""Cross-entropy with label smoothing on a classifier's logits."""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import ConfigError
from losses.base import require_output
from losses.registry import LOSSES


class CrossEntropy(nn.Module):
    def __init__(self, label_smoothing: float):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, outputs: Dict[str, Any], labels: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        logits = require_output(outputs, "logits", "cross_entropy", "use the 'classifier' model")
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)


@LOSSES.register("cross_entropy")
def cross_entropy(embed_dim: int, num_classes: int, distributed: bool = False, label_smoothing: float = 0.1):
    """Per-sample loss: under DDP, averaged gradients already equal the global-batch gradient."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ConfigError(f"loss 'cross_entropy': label_smoothing must be in [0, 1), got {label_smoothing}")
    return CrossEntropy(label_smoothing)

"""The training objective: a weighted sum of the configured losses."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

import torch
from torch import nn

from core.config import from_dict
from core.errors import ConfigError
from core.schema import LossConfig
from losses.registry import LOSSES


def _float32(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.float()
    if isinstance(value, (list, tuple)):
        return [_float32(v) for v in value]
    return value


class Criterion(nn.Module):
    """forward(outputs, labels, model) -> (sum of weight x loss, {name: unweighted loss value}).

    Loss terms with parameters (ArcFace class centres) are submodules: `criterion.parameters()` is
    what the optimizer must add to the model's parameters.
    """

    def __init__(self, names: Sequence[str], weights: Sequence[float], terms: Sequence[nn.Module]):
        super().__init__()
        self.names = list(names)
        self.weights = [float(w) for w in weights]
        self.terms = nn.ModuleList(terms)

    def forward(
        self, outputs: Mapping[str, Any], labels: torch.Tensor, model: nn.Module | None = None
    ) -> Tuple[torch.Tensor, Dict[str, float]]:
        # Losses run in float32 outside autocast: cosines near 1, acos and exp(64 * cos) are not safe in
        # half precision, and PML casts its class centres to the embeddings' dtype in place.
        with torch.autocast(device_type=labels.device.type, enabled=False):
            outputs = {key: _float32(value) for key, value in outputs.items()}
            total: Union[torch.Tensor, float] = 0.0
            parts: Dict[str, float] = {}
            for name, weight, term in zip(self.names, self.weights, self.terms, strict=True):
                value = term(outputs, labels, model)
                total = total + weight * value
                parts[name] = float(value.detach())
        return total, parts


def build_criterion(
    loss_cfgs: Sequence[Union[LossConfig, Mapping[str, Any]]],
    *,
    embed_dim: int,
    num_classes: int,
    distributed: bool = False,
) -> Criterion:
    """Build the `losses` list of a training config; `distributed`: pair/triplet losses gather the global batch."""
    if not loss_cfgs:
        raise ConfigError(f"'losses' is empty: give at least one of {', '.join(LOSSES.names())}")
    names: List[str] = []
    weights: List[float] = []
    terms: List[nn.Module] = []
    for i, cfg in enumerate(loss_cfgs):
        if isinstance(cfg, Mapping):
            cfg = from_dict(LossConfig, cfg, prefix=f"losses[{i}].")
        if not isinstance(cfg, LossConfig):
            raise ConfigError(f"losses[{i}] must be a {{name, weight, args}} mapping, got {cfg!r}")
        term = LOSSES.build(cfg.name, cfg.args, embed_dim=embed_dim, num_classes=num_classes, distributed=distributed)
        # Two entries of one loss (e.g. triplets with two margins) get distinct names in the logs.
        name = cfg.name if cfg.name not in names else f"{cfg.name}_{i}"
        names.append(name)
        weights.append(cfg.weight)
        terms.append(term)
    return Criterion(names, weights, terms)

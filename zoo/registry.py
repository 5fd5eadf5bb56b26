"""The model registry and the one function the trainer calls to build a model from config."""
from __future__ import annotations

from typing import Any, Mapping, Union

from torch import nn

from core.config import from_dict
from core.errors import ConfigError
from core.registry import Registry
from core.schema import ComponentConfig

MODELS = Registry("model")


def build_model(cfg: Union[ComponentConfig, Mapping[str, Any]], *, num_classes: int) -> nn.Module:
    """Build the model of a `{name, args}` block; `num_classes` is the number of training identities."""
    if isinstance(cfg, Mapping):
        cfg = from_dict(ComponentConfig, cfg, prefix="model.")
    if not isinstance(cfg, ComponentConfig):
        raise ConfigError(f"model config must be a {{name, args}} mapping, got {cfg!r}")
    if not cfg.name:
        raise ConfigError(f"model.name is empty; valid: {', '.join(MODELS.names())}")
    return MODELS.build(cfg.name, cfg.args, num_classes=num_classes)

"""The model registry and the one function the trainer calls to build a model from config.

A model is a class registered with `@MODELS.register("name")`: it is built from its config
arguments by its `from_args` classmethod, and its registered name is its `architecture`.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Union

from torch import nn

from core.config import from_dict
from core.errors import ConfigError
from core.registry import Registry
from core.schema import ComponentConfig

MODELS = Registry("model", name_attribute="architecture", constructor="from_args")


def model_inputs(architecture: str) -> str:
    """What a registered model reads: "images", or "member_features" (other models' embeddings)."""
    return getattr(MODELS.get(architecture), "inputs", "images")


def block_args(architecture: str, args: Mapping[str, Any]) -> Dict[str, Any]:
    """Model arguments as exports record them, {"trunk": {...}, **own}; flat trunk settings (configs,
    exports written before the block) are moved into the block."""
    return MODELS.get(architecture).block_args(args)


def build_model(cfg: Union[ComponentConfig, Mapping[str, Any]], *, num_classes: int) -> nn.Module:
    """Build the model of a `{name, args}` block; `num_classes` is the number of training identities."""
    if isinstance(cfg, Mapping):
        cfg = from_dict(ComponentConfig, cfg, prefix="model.")
    if not isinstance(cfg, ComponentConfig):
        raise ConfigError(f"model config must be a {{name, args}} mapping, got {cfg!r}")
    if not cfg.name:
        raise ConfigError(f"model.name is empty; valid: {', '.join(MODELS.names())}")
    return MODELS.build(cfg.name, cfg.args, num_classes=num_classes)

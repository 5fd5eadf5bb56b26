"""The model registry and the one function the trainer calls to build a model from config."""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Union

from torch import nn

from core.config import from_dict
from core.errors import ConfigError
from core.registry import Registry
from core.schema import ComponentConfig

MODELS = Registry("model")
_CLASSES: Dict[str, type] = {}


def register_model(name: str) -> Callable[[type], type]:
    """Class decorator: the model is built from config arguments by its `from_args`, under `name`."""

    def decorator(cls: type) -> type:
        cls.architecture = name
        MODELS.register(name)(cls.from_args)
        _CLASSES[name] = cls
        return cls

    return decorator


def model_inputs(architecture: str) -> str:
    """What a registered model reads: "images", or "member_features" (other models' embeddings)."""
    MODELS.get(architecture)  # an unknown name fails here, with the closest valid one
    return getattr(_CLASSES[architecture], "inputs", "images")


def block_args(architecture: str, args: Mapping[str, Any]) -> Dict[str, Any]:
    """Model arguments as exports record them, {"trunk": {...}, **own}; flat trunk settings (configs,
    exports written before the block) are moved into the block."""
    MODELS.get(architecture)  # an unknown name fails here, with the closest valid one
    return _CLASSES[architecture].block_args(args)


def build_model(cfg: Union[ComponentConfig, Mapping[str, Any]], *, num_classes: int) -> nn.Module:
    """Build the model of a `{name, args}` block; `num_classes` is the number of training identities."""
    if isinstance(cfg, Mapping):
        cfg = from_dict(ComponentConfig, cfg, prefix="model.")
    if not isinstance(cfg, ComponentConfig):
        raise ConfigError(f"model config must be a {{name, args}} mapping, got {cfg!r}")
    if not cfg.name:
        raise ConfigError(f"model.name is empty; valid: {', '.join(MODELS.names())}")
    return MODELS.build(cfg.name, cfg.args, num_classes=num_classes)

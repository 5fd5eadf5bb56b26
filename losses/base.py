"""What a registered loss builds: a "loss term", an nn.Module called as
`term(outputs, labels, model) -> scalar tensor`, where `outputs` is the model's dict
(embedding, logits, features) plus the batch's dataset positions under ITEMS, and `model` is
needed only by losses that use a model head."""
from __future__ import annotations

from typing import Any, Dict

from core.errors import ConfigError

ITEMS = "items"  # outputs key: each row's position in the training dataset (an image drawn twice repeats it)


def require_output(outputs: Dict[str, Any], key: str, loss: str, hint: str) -> Any:
    """outputs[key], or a ConfigError naming the loss and how to get that output."""
    value = outputs.get(key)
    if value is None or (isinstance(value, list) and not value):
        raise ConfigError(f"loss '{loss}' needs the model output '{key}': {hint}")
    return value

"""The loss registry. Entries take their config args plus runtime `embed_dim`, `num_classes`, `distributed`
and return a LossTerm."""
from __future__ import annotations

from core.registry import Registry

LOSSES = Registry("loss")

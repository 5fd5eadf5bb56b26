"""Training losses from a registry, summed with weights into one Criterion.

pytorch-metric-learning is imported inside the functions that build or run a loss, not at the top of
a module: registering the losses then imports nothing more, and eval.py, which checks configs against
every registry but never builds a loss, does not pay for it.
"""
from losses import classification, feature_similarity, margin, pair, triplet  # noqa: F401  (registers the losses)
from losses.base import ITEMS
from losses.criterion import Criterion, build_criterion
from losses.registry import LOSSES

__all__ = ["ITEMS", "LOSSES", "Criterion", "build_criterion"]

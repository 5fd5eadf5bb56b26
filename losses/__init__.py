"""Training losses from a registry, summed with weights into one Criterion.

pytorch-metric-learning (and the scipy.stats it pulls in) is imported inside the functions that build
or run a loss, not at the top of a module: registering the losses then costs nothing, and eval.py,
which checks configs against every registry but never builds a loss, starts about a second sooner.
"""
from losses import classification, feature_similarity, margin, pair, triplet  # noqa: F401  (registers the losses)
from losses.base import ITEMS
from losses.criterion import Criterion, build_criterion
from losses.registry import LOSSES

__all__ = ["ITEMS", "LOSSES", "Criterion", "build_criterion"]

"""Training losses from a registry, summed with weights into one Criterion."""
from losses import classification, feature_similarity, margin, pair, triplet  # noqa: F401  (registers the losses)
from losses.base import ITEMS
from losses.criterion import Criterion, build_criterion
from losses.registry import LOSSES

__all__ = ["ITEMS", "LOSSES", "Criterion", "build_criterion"]

"""Contrastive pair loss of the Siamese model: binary cross-entropy of its pair head on the batch's pairs.

Positives are all same-identity pairs; negatives are, per image, its most similar other-identity
image ("hard") or every other-identity pair ("all"). The positive and negative means are averaged
with equal weight: a P x K batch holds far more negative than positive pairs, and an unbalanced
mean would teach the head to answer "different" always. Optionally PML's ContrastiveLoss on the
embeddings themselves is added.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import ConfigError
from core.suggest import did_you_mean
from losses.base import ITEMS, require_output
from losses.distributed import gather_batch, gather_items, scale_gradient, world_size
from losses.registry import LOSSES

NEGATIVES = ("hard", "all")


def pair_head(model: nn.Module | None) -> nn.Module:
    """The module with `pair_logits`, looking inside DDP / torch.compile wrappers."""
    while model is not None and not hasattr(model, "pair_logits"):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
    if model is None:
        raise ConfigError("loss 'contrastive' needs a model with a pair head: the 'siamese' model, or 'fusion' "
                          "with model.args.pair_hidden set")
    return model


def select_pairs(embedding: torch.Tensor, labels: torch.Tensor, negatives: str,
                 items: torch.Tensor | None = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(positive pairs (P, 2), negative pairs (N, 2)) as index pairs into the batch.

    `items` (the rows' dataset positions): a sampler may draw an image twice into one batch (PK
    sampling of an identity with fewer than K images); such a pair is not a positive to learn from.
    """
    same = labels[:, None] == labels[None, :]
    upper = torch.ones_like(same).triu(diagonal=1)
    distinct = upper if items is None else upper & (items[:, None] != items[None, :])
    positives = (same & distinct).nonzero()
    if negatives == "all":
        return positives, (~same & upper).nonzero()
    with torch.no_grad():
        unit = F.normalize(embedding, dim=1)
        similarity = (unit @ unit.T).masked_fill(same, float("-inf"))
        hardest = similarity.argmax(dim=1)
        has_negative = (~same).any(dim=1)
    anchors = has_negative.nonzero().squeeze(1)
    return positives, torch.stack([anchors, hardest[anchors]], dim=1)


class PairLoss(nn.Module):
    def __init__(self, negatives: str, embedding_loss: nn.Module | None, embedding_weight: float, distributed: bool):
        super().__init__()
        self.negatives = negatives
        self.embedding_loss = embedding_loss
        self.embedding_weight = embedding_weight
        self.distributed = distributed

    def forward(self, outputs: Dict[str, Any], labels: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        head = pair_head(model)
        embedding = require_output(outputs, "embedding", "contrastive", "the model must return embeddings")
        items = outputs.get(ITEMS)
        processes = world_size() if self.distributed else 1
        if processes > 1:
            items = gather_items(embedding, items) if items is not None else None
            embedding, labels = gather_batch(embedding, labels)
        positives, negatives = select_pairs(embedding, labels, self.negatives, items)
        parts = []
        for pairs, target in ((positives, 1.0), (negatives, 0.0)):
            if len(pairs):
                logits = head.pair_logits(embedding[pairs[:, 0]], embedding[pairs[:, 1]])
                parts.append(F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target)))
        # A batch without any pair still needs a graph for backward (and DDP's gradient hooks).
        loss = torch.stack(parts).mean() if parts else embedding.sum() * 0.0
        if self.embedding_loss is not None and self.embedding_weight:
            loss = loss + self.embedding_weight * self.embedding_loss(embedding, labels)
        return scale_gradient(loss, processes) if processes > 1 else loss


@LOSSES.register("contrastive")
def contrastive(
    embed_dim: int,
    num_classes: int,
    distributed: bool = False,
    negatives: str = "hard",
    embedding_weight: float = 0.0,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
):
    """Pair-head BCE (+ embedding_weight x PML ContrastiveLoss(pos_margin, neg_margin) on L2 distances)."""
    if negatives not in NEGATIVES:
        raise ConfigError(f"loss 'contrastive': unknown negatives '{negatives}'{did_you_mean(negatives, NEGATIVES)}")
    from pytorch_metric_learning import losses as pml  # on use (losses/__init__.py)

    embedding_loss = pml.ContrastiveLoss(pos_margin=pos_margin, neg_margin=neg_margin) if embedding_weight else None
    return PairLoss(negatives, embedding_loss, embedding_weight, distributed)

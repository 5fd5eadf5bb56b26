"""The `fusion` model: PCA-reduced embeddings of several frozen models (its members), fused.

A fusion model does not read images. Its input is the concatenation of its members' L2-normalised
embeddings, extracted once (engine/scoring/member_features.py, through the evaluation cache); each
member's block goes through its own PCA, fitted on the training images' features only and stored
as buffers (so the export is self-contained), then the reduced blocks are concatenated. Two
fitted stages follow, each optional:
* a learned whitening (`learned_whitening_dim` > 0): a linear map fitted in closed form on the
  training identities, which scales down the directions along which photos of one individual
  vary and keeps those that separate individuals (Radenović et al., "Fine-tuning CNN Image
  Retrieval with No Human Annotation", TPAMI 2018, section 3.3);
* an MLP (`hidden` > 0) that gives the fused embedding, trained by any of our losses: a margin
  loss (ArcFace) on the embedding, cross-entropy on an identity head (`classifier: true`).
With `hidden: 0` the (whitened) concatenation is the embedding. A pair head (`pair_hidden`),
trained by `contrastive`, scores (|a-b|, a*b) of two fused embeddings as the Siamese model's does.

The export records each member (spec, checksum, embedding size, input size): eval.py extracts
their embeddings again, refusing a member whose checksum changed, and votes with the fused
embedding (and the pair head as a shortlist re-scorer) like any other model.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import ConfigError
from core.suggest import did_you_mean
from zoo.base import PairScoring, ReIDModel
from zoo.registry import MODELS

# What a resolved member records (engine.scoring.member_features.resolve_members writes it).
MEMBER_KEYS = ("spec", "checksum", "dim", "input_size")


def check_members(members: Any) -> List[Dict[str, Any]]:
    """Resolved members as the model records them; a bare spec here means they were never resolved."""
    if not isinstance(members, (list, tuple)) or len(members) < 1:
        raise ConfigError("model 'fusion' needs model.args.members: a list of at least one export folder, "
                          f"zoo name or timm name, got {members!r}")
    resolved = []
    for i, member in enumerate(members):
        if not isinstance(member, Mapping) or any(key not in member for key in MEMBER_KEYS):
            raise ConfigError(f"model 'fusion': members[{i}] = {member!r} is not resolved; fusion models are "
                              "built by train.py, which extracts the members' features first")
        resolved.append({key: member[key] for key in MEMBER_KEYS})
    return resolved


@MODELS.register("fusion")
class Fusion(PairScoring, ReIDModel):
    """members' embeddings -> PCA per member -> concat [-> learned whitening]
    [-> Linear-BN-ReLU-Dropout -> Linear-BN] (embedding) [-> Linear (identity logits)] [+ pair head on (|a-b|, a*b)]."""

    inputs = "member_features"

    def __init__(self, num_classes: int = 0, *, members: Sequence[Mapping[str, Any]], pca_dims: Sequence[int],
                 whiten: bool = False, learned_whitening_dim: int = 0, learned_whitening_shrinkage: float = 0.2,
                 hidden: int = 1024, embed_dim: int = 512, dropout: float = 0.1, classifier: bool = False,
                 pair_hidden: int = 0):
        super().__init__()
        self.members = check_members(members)
        pca_dims = [int(d) for d in pca_dims]
        if len(pca_dims) != len(self.members) or any(d < 1 for d in pca_dims):
            raise ConfigError(f"model 'fusion': pca_dims {pca_dims} must give one positive size per member "
                              f"({len(self.members)})")
        if int(embed_dim) < 1:
            raise ConfigError(f"model 'fusion': embed_dim must be a positive integer, got {embed_dim}")
        for name, value in (("hidden", hidden), ("learned_whitening_dim", learned_whitening_dim)):
            if int(value) < 0:
                raise ConfigError(f"model 'fusion': {name} must be 0 (none) or a positive integer, got {value}")
        if not 0.0 <= learned_whitening_shrinkage <= 1.0:
            raise ConfigError("model 'fusion': learned_whitening_shrinkage must be in [0, 1], got "
                              f"{learned_whitening_shrinkage}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model 'fusion': dropout must be in [0, 1), got {dropout}")
        if classifier and num_classes < 1:
            raise ConfigError("model 'fusion' with classifier: true needs training identities")
        self.input_dims = [int(m["dim"]) for m in self.members]
        # y = x @ A.T + b per member (a PCA, whitened or not), set by set_pca() from the training features.
        for i, (d_in, d_out) in enumerate(zip(self.input_dims, pca_dims, strict=True)):
            self.register_buffer(f"pca{i}_A", torch.zeros(d_out, d_in))
            self.register_buffer(f"pca{i}_b", torch.zeros(d_out))
        fused_dim = int(learned_whitening_dim) or sum(pca_dims)
        if learned_whitening_dim:
            # y = x @ A.T + b on the concatenation, set by set_pca() from the training features and identities.
            self.register_buffer("whitening_A", torch.zeros(fused_dim, sum(pca_dims)))
            self.register_buffer("whitening_b", torch.zeros(fused_dim))
        self.has_whitening = bool(learned_whitening_dim)
        if hidden:
            self.mlp = nn.Sequential(
                nn.Linear(fused_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                nn.Dropout(dropout), nn.Linear(hidden, embed_dim, bias=False), nn.BatchNorm1d(embed_dim))
        else:  # the fused features are the embedding
            self.mlp, embed_dim = nn.Identity(), fused_dim
        self.head = nn.Linear(embed_dim, num_classes) if classifier else None
        self.pair_head = (nn.Sequential(nn.Linear(2 * embed_dim, pair_hidden), nn.ReLU(), nn.Linear(pair_hidden, 1))
                          if pair_hidden else None)
        self.has_pair_head = self.pair_head is not None
        self.num_classes, self.embed_dim = num_classes, embed_dim
        # Images are the members' business: these describe no input of this model.
        self.input_size = max(int(m["input_size"]) for m in self.members)
        self.mean, self.std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
        self.model_args = {"members": self.members, "pca_dims": pca_dims, "whiten": bool(whiten),
                           "learned_whitening_dim": int(learned_whitening_dim),
                           "learned_whitening_shrinkage": float(learned_whitening_shrinkage), "hidden": int(hidden),
                           "embed_dim": int(embed_dim), "dropout": float(dropout), "classifier": bool(classifier),
                           "pair_hidden": int(pair_hidden)}

    # -- construction from config ------------------------------------------------------------------
    @classmethod
    def from_args(cls, num_classes: int = 0, **args: Any) -> Fusion:
        return cls(num_classes, **cls.block_args(args))

    @classmethod
    def block_args(cls, args: Mapping[str, Any]) -> Dict[str, Any]:
        valid = cls.own_args()
        for key in args:
            if key not in valid:
                raise ConfigError(f"model 'fusion': unknown argument '{key}'{did_you_mean(key, valid)}")
        missing = [key for key in ("members", "pca_dims") if key not in args]
        if missing:
            raise ConfigError(f"model 'fusion' needs {' and '.join(missing)} (train.py resolves them from "
                              "model.args.members and model.args.pca_dim)")
        return dict(args)

    # -- PCA ---------------------------------------------------------------------------------------
    def pca(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"pca{i}_A"), getattr(self, f"pca{i}_b")

    def set_pca(self, transforms: Sequence[Tuple[np.ndarray, np.ndarray]],
                whitening: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> None:
        """Each member's (A (d_out, d_in), b (d_out,)), and the learned whitening's of the concatenation where
        the model has one, fitted on training features (engine.training.member_data)."""
        if (whitening is not None) != self.has_whitening:
            raise ValueError(f"this fusion model {'needs' if self.has_whitening else 'has no'} learned whitening")
        targets = [(f"member {i}", *self.pca(i)) for i in range(len(transforms))]
        fitted = list(transforms)
        if whitening is not None:
            targets.append(("learned whitening", self.whitening_A, self.whitening_b))
            fitted.append(whitening)
        for (name, target_a, target_b), (a, b) in zip(targets, fitted, strict=True):
            if tuple(a.shape) != tuple(target_a.shape) or tuple(b.shape) != tuple(target_b.shape):
                raise ValueError(f"{name}: map of shape {a.shape}, {b.shape} does not fit {tuple(target_a.shape)}")
            target_a.copy_(torch.as_tensor(a, dtype=torch.float32))
            target_b.copy_(torch.as_tensor(b, dtype=torch.float32))

    def reduce(self, features: torch.Tensor) -> torch.Tensor:
        """(B, sum of member dims) concatenated member embeddings -> (B, sum of pca_dims)."""
        if features.ndim != 2 or features.shape[1] != sum(self.input_dims):
            raise ValueError(f"fusion expects (B, {sum(self.input_dims)}) member features, got {tuple(features.shape)}")
        blocks = torch.split(features.float(), self.input_dims, dim=1)
        return torch.cat([block @ a.T + b for block, (a, b) in zip(blocks, map(self.pca, range(len(blocks))), strict=True)],
                         dim=1)

    # -- outputs -----------------------------------------------------------------------------------
    def forward(self, features: torch.Tensor) -> Dict[str, Any]:
        fused = self.reduce(features)
        if self.has_whitening:
            fused = fused @ self.whitening_A.T + self.whitening_b
        embedding = self.mlp(fused)
        out: Dict[str, Any] = {"embedding": embedding}
        if self.head is not None:
            out["logits"] = self.head(embedding)
        return out

    def pair_logits(self, emb_a: torch.Tensor, emb_b: torch.Tensor) -> torch.Tensor:
        """(N, D) x (N, D) fused embeddings -> (N,) logits of "same individual" (see zoo.siamese)."""
        if self.pair_head is None:
            raise ConfigError("this fusion model has no pair head: set model.args.pair_hidden (e.g. 256) to train one")
        a, b = F.normalize(emb_a, dim=1), F.normalize(emb_b, dim=1)
        return self.pair_head(torch.cat([(a - b).abs(), a * b], dim=1)).squeeze(1)

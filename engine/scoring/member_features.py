"""Models over other models' embeddings (the `fusion` model): their members, the members' features
for a table's rows, and the fused embeddings.

Members are frozen models named like eval.py's (export folders, zoo names, timm / `hf-hub:` names).
Their features are the L2-normalised embeddings eval.py extracts (engine.scoring.cached_outputs, in eval.py's
precision), concatenated member after member: training reads them from the cache eval.py fills and
the other way round. A trained fusion model records each member's checksum; loading a member whose
weights changed since is refused, because the PCA and the MLP were fitted to the old one's features.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from core.errors import DataError
from data.dataset import ReIDDataset
from engine.extraction import EMBEDDING, extract_embeddings
from engine.scoring.cached_outputs import CachedModel, CachedRows, ImageViews, cached_outputs
from zoo.loading import load_for_eval
from zoo.spec import member_spec, recorded_member


@dataclass
class Member:
    spec: str
    model: torch.nn.Module
    meta: Dict[str, Any]
    checksum: str

    def record(self, dim: int, views: ImageViews, export: Path) -> Dict[str, Any]:
        """What the fusion model exported to `export` stores about this member (zoo.fusion.MEMBER_KEYS)."""
        return {"spec": member_spec(self.spec, export), "checksum": self.checksum, "dim": int(dim),
                "input_size": views.model_input(self.meta)[0]}


def load_members(specs: Sequence[str], device: torch.device) -> List[Member]:
    """Each member spec loaded (frozen, in eval mode, on `device`) with its checksum."""
    members = []
    for spec in specs:
        if not isinstance(spec, str) or not spec:
            raise DataError(f"fusion members must be model names or export folders, got {spec!r}")
        model, meta, checksum = load_for_eval(spec)
        model.to(device).eval().requires_grad_(False)
        members.append(Member(spec, model, meta, checksum))
    return members


def load_recorded_members(recorded: Sequence[Mapping[str, Any]], owner: str, device: torch.device) -> List[Member]:
    """The members a trained fusion model names, each checked against the checksum it was trained with.
    `owner`: the fusion model's spec; when it is its export folder, members recorded relative to it
    are found from there."""
    export = Path(owner).expanduser() if Path(owner).expanduser().is_dir() else None
    members = load_members([recorded_member(m["spec"], export) for m in recorded], device)
    for member, record in zip(members, recorded, strict=True):
        if member.checksum != record["checksum"]:
            raise DataError(f"fusion model {owner}: its member {member.spec} has changed since it was trained "
                            f"(checksum {member.checksum[:12]}, trained with {record['checksum'][:12]}); retrain the "
                            "fusion model on the current member, or restore the member it was trained with")
    return members


def member_features(members: Sequence[Member], views: ImageViews, rows: CachedRows, accelerator,
                    precision: Optional[str] = None) -> List[np.ndarray]:
    """Each member's (len(rows), D_m) L2-normalised embeddings (TTA views averaged), from the cache or extracted."""
    return [cached_outputs(CachedModel(m.spec, m.meta, m.checksum, lambda m=m: m.model), (EMBEDDING,), views, rows,
                           accelerator, precision)[0][EMBEDDING] for m in members]


class FeatureDataset(Dataset):
    """Rows of concatenated member features as items {"image": (sum D_m,), "label", "index"}.

    `views`: one (N, sum D_m) array per feature view (the TTA-averaged features first, then single
    views as extra samples); an item reads one of them at random, drawn from the dataset's own
    generator, which engine.training.seeding reseeds per (seed, epoch, item) through
    `set_random_seed`. `images` (a ReIDDataset of the same rows) gives `load_image` for validation's
    match grid.
    """

    def __init__(self, views: Sequence[np.ndarray], labels: Optional[Sequence[int]] = None,
                 images: Optional[ReIDDataset] = None):
        if not views or any(v.shape != views[0].shape for v in views):
            raise ValueError("feature views must be arrays of one shape")
        self.views = [torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for v in views]
        self.labels = list(labels) if labels is not None else [-1] * len(views[0])
        self.images = images
        self.generator = torch.Generator().manual_seed(0)

    def set_random_seed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        view = int(torch.randint(len(self.views), (), generator=self.generator)) if len(self.views) > 1 else 0
        return {"image": self.views[view][i], "label": self.labels[i], "index": i}

    def load_image(self, i: int) -> np.ndarray:
        if self.images is None:
            raise ValueError("this feature dataset has no images")
        return self.images.load_image(i)


def fused_embeddings(model: torch.nn.Module, features: np.ndarray, *, batch_size: int, accelerator) -> np.ndarray:
    """(N, D) L2-normalised embeddings of a fusion model for (N, sum D_m) member features."""
    return extract_embeddings(model, FeatureDataset([features]), batch_size=batch_size, accelerator=accelerator,
                              desc="fusing")

"""The torch Dataset over a metadata table (see data/table.py): load, orient, transform."""
from __future__ import annotations

from typing import Callable, Dict, Iterable

import numpy as np
import pandas as pd
import torch

from data.images import ImageLoader
from data.table import clean_identity
from data.transforms import check_orientation_rules, rotate_image, rotation_for


def build_label_map(identities: Iterable) -> Dict[str, int]:
    """Sorted unique identities -> 0..n-1 (the same table always gives the same map).
    Missing and unknown identities (None, `new_individual`, ...) get no label."""
    known = {clean_identity(identity) for identity in identities}
    known.discard(None)
    return {identity: label for label, identity in enumerate(sorted(known))}


class ReIDDataset(torch.utils.data.Dataset):
    """Item i -> {"image": transformed tensor, "label": int (-1 = unknown), "index": i}.

    Orientation rules turn an image after loading and cropping (the bbox is in the original
    frame) and before the transform (so augmentation sees the canonical orientation).
    """

    def __init__(self, table: pd.DataFrame, loader: ImageLoader, transform: Callable[[np.ndarray], torch.Tensor],
                 label_map: Dict[str, int] | None = None,
                 orientation_rules: Dict[str, Dict[str, float]] | None = None):
        check_orientation_rules(orientation_rules)
        self.loader = loader
        self.transform = transform
        # Plain lists: a pandas row lookup per item would cost more than a cached image load.
        self.paths = table["path"].tolist()
        self.bboxes = table["bbox"].tolist()
        self.rotations = [rotation_for(orientation_rules, dataset, orientation)
                          for dataset, orientation in zip(table["dataset"], table["orientation"], strict=True)]
        label_map = label_map or {}
        self.labels = [label_map.get(identity, -1) if identity is not None else -1
                       for identity in table["identity"].map(clean_identity)]

    def __len__(self) -> int:
        return len(self.paths)

    def load_image(self, i: int) -> np.ndarray:
        """The oriented RGB array before the transform (also used by reports and matchers)."""
        image = self.loader.load(self.paths[i], self.bboxes[i])
        return rotate_image(image, self.rotations[i]) if self.rotations[i] else image

    def __getitem__(self, i: int) -> dict:
        return {"image": self.transform(self.load_image(i)), "label": self.labels[i], "index": i}

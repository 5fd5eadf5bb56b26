"""The synthetic dataset in Kaggle Humpback Whale Identification format, for recipes' twins.

It renders the built-in synthetic set in scene mode (`data.synthetic.generate`, small animals in
wide frames, so that a crop detector has something to find) and lays it out as the competition
does: `train.csv` (Image, Id) with the database photos in `train/`, the query photos, unlabelled,
in `test/`, and `bboxes.csv` (Image, x0, y0, x1, y1: the identified animal's box in every photo,
as the community's box files give it). As on Kaggle, some training photos are labelled
`new_whale`: every UNKNOWN_EVERY-th known individual's photos name no whale.

The same arguments write byte-identical files (the renderer is seeded), so a twin's submission
can be compared across runs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from core.errors import ConfigError
from data.synthetic import has_marker, layout_marker, write_layout

MARKER = "HUMPBACK_COMPLETE.json"  # written last: its presence means the dataset is whole
UNKNOWN = "new_whale"
UNKNOWN_EVERY = 4  # every 4th known individual's training photos are labelled new_whale


def _marker(seed: int, individuals: int, images_per_individual: int) -> dict:
    return layout_marker("synthetic_humpback", seed, individuals, images_per_individual)


def is_complete(root: Path, seed: int, individuals: int, images_per_individual: int) -> bool:
    return has_marker(root, MARKER, _marker(seed, individuals, images_per_individual))


def _whale_ids(identities: list) -> dict:
    """Synthetic identity -> Kaggle-style whale id (w_0000, ...), or new_whale for every UNKNOWN_EVERY-th."""
    ids = {}
    for i, identity in enumerate(sorted(identities)):
        ids[identity] = UNKNOWN if i % UNKNOWN_EVERY == UNKNOWN_EVERY - 1 else f"w_{i:04d}"
    return ids


def _layout(source: Path, staging: Path) -> None:
    """Move the AnimalCLEF-format set at `source` into Humpback layout under `staging`."""
    table = pd.read_csv(source / "metadata.csv").sort_values("image_id")
    (staging / "train").mkdir()
    (staging / "test").mkdir()
    known = table.loc[table["split"] == "database", "identity"].unique().tolist()
    whale = _whale_ids(known)
    train_rows, box_rows = [], []
    for row in table.itertuples(index=False):
        name = f"{int(row.image_id):06d}.jpg"
        folder = "train" if row.split == "database" else "test"
        os.replace(source / row.path, staging / folder / name)
        if folder == "train":
            train_rows.append({"Image": name, "Id": whale[row.identity]})
        x, y, w, h = json.loads(row.bbox)
        box_rows.append({"Image": name, "x0": x, "y0": y, "x1": x + w, "y1": y + h})
    pd.DataFrame(train_rows, columns=["Image", "Id"]).to_csv(staging / "train.csv", index=False, lineterminator="\n")
    pd.DataFrame(box_rows, columns=["Image", "x0", "y0", "x1", "y1"]).to_csv(
        staging / "bboxes.csv", index=False, lineterminator="\n")


def generate_humpback(out: str | Path, *, seed: int = 0, individuals: int = 24, images_per_individual: int = 6,
                      progress: bool = False) -> Path:
    """Write the Humpback-format synthetic set to `out` (replacing an earlier one) and return its path."""
    out = Path(out).expanduser().absolute()
    if out.exists() and not (out / MARKER).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not a synthetic Humpback dataset; choose a new or empty folder")
    return write_layout(out, _layout, MARKER, _marker(seed, individuals, images_per_individual), seed=seed,
                        individuals=individuals, images_per_individual=images_per_individual, progress=progress, scenes=True)


def ensure_humpback(out: str | Path, *, seed: int = 0, individuals: int = 24, images_per_individual: int = 6) -> Path:
    """`out` holding this Humpback-format synthetic set, generated unless it is already there."""
    out = Path(out).expanduser().absolute()
    if is_complete(out, seed, individuals, images_per_individual):
        return out
    return generate_humpback(out, seed=seed, individuals=individuals, images_per_individual=images_per_individual)

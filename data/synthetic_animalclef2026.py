"""The synthetic dataset laid out as AnimalCLEF 2026 (clustering), for tests and recipes' twins.

It renders the built-in synthetic set (`data.synthetic.generate`) and lays it out as the 2026
competition does: `metadata.csv` (image_id, identity, path, split, dataset, species) with `train`
rows labelled under `images/<dataset>/train/<identity>/` and `test` rows without identity under
`images/<dataset>/test/`. Test images hold individuals of the train set (their latest photos) and
new ones, mixed; one dataset (NO_TRAIN_DATASET, like TexasHornedLizards) has no train rows at all:
every one of its photos is a test image. The answers for the test rows go in `solution.csv`
(image_id, identity), the competition's hidden solution, which eval.py reads only to score.

The same arguments write byte-identical files (the renderer is seeded).
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from core.errors import ConfigError
from data.format_animalclef2026 import SOLUTION_FILE
from data.synthetic import has_marker, layout_marker, write_layout
from data.synthetic_species import GROUPS

MARKER = "ANIMALCLEF2026_COMPLETE.json"  # written last: its presence means the dataset is whole
NO_TRAIN_DATASET = GROUPS[-1].dataset  # its photos are all test images, as TexasHornedLizards' are
METADATA_COLUMNS = ["image_id", "identity", "path", "split", "dataset", "species"]


def _marker(seed: int, individuals: int, images_per_individual: int) -> dict:
    return layout_marker("synthetic_animalclef2026", seed, individuals, images_per_individual)


def is_complete(root: Path, seed: int, individuals: int, images_per_individual: int) -> bool:
    return has_marker(root, MARKER, _marker(seed, individuals, images_per_individual))


def _layout(source: Path, staging: Path) -> None:
    """Move the AnimalCLEF 2025-format set at `source` into the 2026 layout under `staging`."""
    table = pd.read_csv(source / "metadata.csv").sort_values("image_id")
    rows, answers = [], []
    for row in table.itertuples(index=False):
        name = f"{int(row.image_id):06d}.jpg"
        train = row.split == "database" and row.dataset != NO_TRAIN_DATASET
        path = (f"images/{row.dataset}/train/{row.identity}/{name}" if train else f"images/{row.dataset}/test/{name}")
        (staging / path).parent.mkdir(parents=True, exist_ok=True)
        os.replace(source / row.path, staging / path)
        rows.append({"image_id": str(row.image_id), "identity": row.identity if train else "", "path": path,
                     "split": "train" if train else "test", "dataset": row.dataset, "species": row.species})
        if not train:
            answers.append({"image_id": str(row.image_id), "identity": row.identity})
    pd.DataFrame(rows, columns=METADATA_COLUMNS).to_csv(staging / "metadata.csv", index=False, lineterminator="\n")
    pd.DataFrame(answers, columns=["image_id", "identity"]).to_csv(staging / SOLUTION_FILE, index=False,
                                                                   lineterminator="\n")


def generate_animalclef2026(out: str | Path, *, seed: int = 0, individuals: int = 24, images_per_individual: int = 6,
                            progress: bool = False) -> Path:
    """Write the AnimalCLEF 2026-format synthetic set to `out` (replacing an earlier one); return its path."""
    out = Path(out).expanduser().absolute()
    if out.exists() and not (out / MARKER).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not a synthetic AnimalCLEF 2026 dataset; choose a new or empty folder")
    if is_complete(out, seed, individuals, images_per_individual):
        return out
    return write_layout(out, _layout, MARKER, _marker(seed, individuals, images_per_individual), seed=seed,
                        individuals=individuals, images_per_individual=images_per_individual, progress=progress)

"""The data of a synthetic twin, generated under the run's output folder from its `synthetic:` block.

The generators are seeded, so the same block writes the same files; an existing complete dataset
for the same block is reused (and keeps its file times, so the stages that read it can be skipped).
"""
from __future__ import annotations

from pathlib import Path

from engine.reproduce.recipe import SyntheticSpec

FOLDER = "_synthetic_data"  # under OUT; stage names cannot start with '_', so no stage shares it


def twin_data_root(out: Path) -> Path:
    return Path(out) / FOLDER


def prepare_twin_data(spec: SyntheticSpec, out: Path) -> Path:
    """Generate (or reuse) the twin's dataset under `out` and return its root."""
    root = twin_data_root(out)
    counts = {"seed": spec.seed, "individuals": spec.individuals, "images_per_individual": spec.images_per_individual}
    print(f"synthetic data: {spec.kind}, {spec.individuals} individuals x {spec.images_per_individual} images, "
          f"seed {spec.seed} -> {root}", flush=True)
    if spec.kind == "humpback":
        from data.synthetic_humpback import ensure_humpback

        return ensure_humpback(root, **counts)
    if spec.kind == "animalclef2026":  # the same animals laid out for clustering: train / test rows, solution.csv
        from data.synthetic_animalclef2026 import generate_animalclef2026

        return generate_animalclef2026(root, **counts)
    from data.synthetic import ensure_synthetic

    return ensure_synthetic(str(root), **counts)

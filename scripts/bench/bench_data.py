"""Images per second of the training data pipeline: full decode vs draft decode vs the disk cache.

    python scripts/bench/bench_data.py [--synthetic-root DIR] [--dogfacenet DIR] [--images N]

Three image sets: the built-in synthetic dataset (with --synthetic-root; "" would mean the
default cache location), DogFaceNet-dev (with --dogfacenet), and 3,000 x 2,000 JPEG photos generated
here in a temporary folder. For each: the loader alone (full decode + resize, draft decode +
resize, cache read), then loader + training transform in one process and through a DataLoader,
first with an empty cache (cold: decode + write) and then cached. "Cold" means never decoded
before; the file bytes may still sit in the OS page cache.
"""
from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Tuple

import cv2
import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

import engine.components  # noqa: F401  (the built-in names a config may use, registered)
from core.errors import UserError, cli_entry
from core.schema import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig
from data.dataset import ReIDDataset
from data.images import ImageLoader
from data.table import make_table, parse_bbox
from data.transforms import build_train_transform

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
Item = Tuple[str, list | None]  # (path, bbox)


def synthetic_items(root: str, limit: int) -> List[Item] | None:
    if importlib.util.find_spec("data.synthetic") is None:
        print("synthetic: data/synthetic.py does not exist yet; skipped")
        return None
    from data.synthetic import ensure_synthetic

    folder = ensure_synthetic(root)
    meta = pd.read_csv(folder / "metadata.csv", keep_default_na=False).head(limit)
    return [(str(folder / path), parse_bbox(bbox)) for path, bbox in zip(meta["path"], meta["bbox"], strict=True)]


def folder_items(root: Path, limit: int) -> List[Item]:
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return [(str(p), None) for p in paths[:limit]]


def make_photos(folder: Path, count: int, width: int = 3000, height: int = 2000) -> List[Item]:
    """Smooth random texture plus fine noise: compresses like a real photo (~1-2 MB at q90)."""
    rng = np.random.default_rng(0)
    items = []
    for i in tqdm(range(count), desc="generating 3,000-px photos", unit="img"):
        coarse = rng.integers(0, 256, (height // 100, width // 100, 3), dtype=np.uint8)
        smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
        grain = rng.integers(-12, 13, (height, width, 1), dtype=np.int16)
        path = folder / f"photo_{i:03d}.jpg"
        Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)).save(path, quality=90)
        items.append((str(path), None))
    return items


def rate(fn: Callable[[Item], object], items: List[Item]) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - start)


def loader_rate(loader: ImageLoader, items: List[Item], transform=None) -> float:
    if transform is None:
        return rate(lambda item: loader.load(*item), items)
    return rate(lambda item: transform(loader.load(*item)), items)


def dataloader_rate(loader: ImageLoader, items: List[Item], transform, workers: int) -> float:
    """Steady state: the clock starts when the first batch arrives, so worker start-up is excluded."""
    table = make_table([{"image_id": i, "path": p, "bbox": b, "dataset": "bench", "identity": None}
                        for i, (p, b) in enumerate(items)])
    batches = iter(torch.utils.data.DataLoader(ReIDDataset(table, loader, transform), batch_size=8,
                                               num_workers=workers))
    next(batches)
    start = time.perf_counter()
    rest = sum(len(batch["index"]) for batch in batches)
    return rest / (time.perf_counter() - start)


def read_files(items: List[Item]) -> None:
    """Put the files' bytes in the OS page cache so every variant starts from the same place."""
    for path, _ in items:
        Path(path).read_bytes()


def bench(name: str, items: List[Item], size: int, workers: int) -> dict:
    transform = build_train_transform(AugmentConfig(), size, IMAGENET_MEAN, IMAGENET_STD)
    read_files(items)
    with tempfile.TemporaryDirectory(prefix="reidzoo-bench-cache-") as cache:
        full = ImageLoader(size, None, draft=False)
        figures = {
            "full decode + resize": loader_rate(full, items),
            "draft decode + resize": loader_rate(ImageLoader(size, None), items),
            "pipeline, 1 process, full decode, no cache": loader_rate(full, items, transform),
        }
        cached = ImageLoader(size, str(Path(cache) / "one"))
        figures["pipeline, 1 process, cold (draft + write)"] = loader_rate(cached, items, transform)
        figures["cache read"] = loader_rate(cached, items)
        figures["pipeline, 1 process, cached"] = loader_rate(cached, items, transform)
        if workers:
            fresh = ImageLoader(size, str(Path(cache) / "two"))
            figures[f"pipeline, DataLoader {workers} workers, cold"] = dataloader_rate(fresh, items, transform, workers)
            figures[f"pipeline, DataLoader {workers} workers, cached"] = dataloader_rate(fresh, items, transform,
                                                                                        workers)
    print(f"\n{name}: {len(items)} images, size {size}")
    for label, value in figures.items():
        print(f"  {label:<42} {value:9.1f} img/s")
    print(f"  cache read / full decode + resize: {figures['cache read'] / figures['full decode + resize']:.1f}x")
    return figures


@cli_entry
def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic-root", default=None,
                        help="synthetic dataset folder (generated there if missing); omit to skip")
    parser.add_argument("--dogfacenet", default=None,
                        help="DogFaceNet-dev folder (ROOT/<identity>/<image>); omit to skip")
    parser.add_argument("--images", type=int, default=300, help="images per set (at most)")
    parser.add_argument("--photos", type=int, default=60, help="3,000-px photos to generate")
    parser.add_argument("--size", type=int, default=224, help="target shorter side in pixels")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (0 = skip that test)")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)  # a fair single-core comparison; DataLoader workers add the parallelism
    torch.set_num_threads(1)

    if args.synthetic_root is not None:
        items = synthetic_items(args.synthetic_root, args.images)
        if items:
            bench("synthetic", items, args.size, args.workers)
    if args.dogfacenet is not None:
        dogs = Path(args.dogfacenet)
        if not dogs.is_dir():
            raise UserError(f"--dogfacenet {dogs}: no such folder")
        bench("DogFaceNet-dev", folder_items(dogs, args.images), args.size, args.workers)
    with tempfile.TemporaryDirectory(prefix="reidzoo-bench-photos-") as folder:
        photos = bench("3,000 x 2,000 JPEG photos", make_photos(Path(folder), min(args.photos, args.images)),
                       args.size, args.workers)
    ratio = photos["cache read"] / photos["full decode + resize"]
    pipeline = photos["pipeline, 1 process, cached"] / photos["pipeline, 1 process, full decode, no cache"]
    verdict = "met" if ratio >= 5 else "NOT met"
    print(f"\ntarget (cached >= 5x full decode + resize on 3,000-px photos): {verdict}: "
          f"cache read {ratio:.1f}x; with the train transform, cached vs full decode {pipeline:.1f}x")


if __name__ == "__main__":
    main()

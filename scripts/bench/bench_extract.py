"""Images/s of our embedding extraction against a bare `model(x)` loop over tensors in memory.

    python scripts/bench/bench_extract.py [--images 512] [--size 128] [--batch 64] [--workers 0]

Same model (a resnet18 embedder), same images, same batch size, in one run. Ours reads the images
from disk through the resized-image cache (warmed first), applies the eval transform and calls
`extract_embeddings`; the bare loop only runs the model on tensors prepared beforehand, so the
ratio is what the data path and the bookkeeping cost. Each side is timed `--rounds` times,
alternating, and the best round counts (other work on the machine only ever slows a round down).
Target: ratio >= 0.9.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch

import engine.components  # noqa: F401  (the built-in names a config may use, registered)
from core.errors import cli_entry
from core.schema import IMAGENET_MEAN, IMAGENET_STD
from data.dataset import ReIDDataset
from data.formats import DATASETS
from data.images import ImageLoader
from data.synthetic import ensure_synthetic
from data.transforms import build_tta_transform
from engine.extraction import extract_embeddings
from zoo import build_model


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512, help="images embedded per round")
    parser.add_argument("--size", type=int, default=128, help="input size in pixels")
    parser.add_argument("--batch", type=int, default=64, help="batch size")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of our extraction")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds of each side (best counts)")
    return parser.parse_args(argv)


def bare_loop(model: torch.nn.Module, tensors: torch.Tensor, batch: int) -> None:
    with torch.no_grad():
        for start in range(0, len(tensors), batch):
            model(tensors[start:start + batch])


@cli_entry
def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    per_individual = 8
    root = ensure_synthetic(individuals=-(-args.images // per_individual), images_per_individual=per_individual)
    table = DATASETS.get("animalclef2025")(root, {}).iloc[: args.images].reset_index(drop=True)
    model = build_model({"name": "embedder", "args": {"backbone": "resnet18", "embed_dim": 512}}, num_classes=0).eval()
    with tempfile.TemporaryDirectory() as cache_dir:
        dataset = ReIDDataset(table, ImageLoader(args.size, cache_dir), build_tta_transform(["identity"], args.size,
                                                                                         IMAGENET_MEAN, IMAGENET_STD))
        # Warm the resized-image cache, and keep the tensors the bare loop gets for free.
        tensors = torch.cat([dataset[i]["image"] for i in range(len(dataset))])
        bare_loop(model, tensors[: args.batch], args.batch)  # one-off allocations and kernel choices
        ours_best, bare_best = float("inf"), float("inf")
        for _ in range(args.rounds):
            start = time.perf_counter()
            extract_embeddings(model, dataset, batch_size=args.batch, num_workers=args.workers, progress=False)
            ours_best = min(ours_best, time.perf_counter() - start)
            start = time.perf_counter()
            bare_loop(model, tensors, args.batch)
            bare_best = min(bare_best, time.perf_counter() - start)
    ours, bare = len(table) / ours_best, len(table) / bare_best
    print(f"images={len(table)} size={args.size} batch={args.batch} workers={args.workers} "
          f"threads={torch.get_num_threads()} rounds={args.rounds}")
    print(f"ours (disk, image cache warm): {ours:8.1f} images/s")
    print(f"bare model(x) on tensors:      {bare:8.1f} images/s")
    print(f"ratio: {ours / bare:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main(sys.argv[1:])

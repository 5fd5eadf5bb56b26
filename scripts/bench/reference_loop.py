"""The plain training loop our default recipe is compared with, on the same wall-clock budget.

    python scripts/bench/reference_loop.py --format animalclef2025 --root /tmp/dogs/train --minutes 8 --out runs/reference
    python eval.py models=[runs/reference/export] data.format=animalclef2025 data.root=/tmp/dogs/test

What a practitioner writes in 60 lines from the libraries' front pages: a timm resnet18 from
scratch (pooled features are the embedding), pytorch-metric-learning's ArcFaceLoss at scale 30,
AdamW at a constant 1e-3, batches of 64 drawn at random, torchvision's RandomResizedCrop (0.7-1),
horizontal flip and colour jitter, 96 px. No scheduler, no neck, no validation, no Accelerate.
Images are decoded into memory before the clock starts (through the same resized-image cache
train.py uses), so the budget is spent on training steps only. The model is written as a reidzoo
export (`features` architecture), so eval.py scores it with exactly the procedure it uses for ours.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from pytorch_metric_learning.losses import ArcFaceLoss
from torchvision.transforms import v2
from tqdm import tqdm

import engine.components  # noqa: F401  (the built-in names a config may use, registered)
from core.config import load_config
from core.errors import cli_entry
from core.schema import DataConfig
from data.dataset import ReIDDataset, build_label_map
from data.formats import load_table
from data.images import ImageLoader
from engine.training.data import training_rows
from zoo import build_model, save_export


def load_images(table, size: int, cache_dir: str) -> torch.Tensor:
    """(N, 3, size, size) uint8: every training image, decoded once, cropped to its bbox and squashed to a
    square as eval.py's transform does."""
    dataset = ReIDDataset(table, ImageLoader(size, cache_dir), transform=lambda image: image)
    images = [cv2.resize(dataset.load_image(i), (size, size), interpolation=cv2.INTER_AREA)
              for i in tqdm(range(len(table)), desc="decoding", unit="img")]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def augmenter(size: int):
    """Per-image random resized crop (70-100 % of the area), flip and colour jitter, on uint8 tensors."""
    return v2.Compose([v2.RandomResizedCrop(size, scale=(0.7, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                       v2.ColorJitter(0.3, 0.3, 0.3, 0.05)])


def train(images: torch.Tensor, labels: torch.Tensor, num_classes: int, size: int, minutes: float, batch_size: int,
          seed: int) -> tuple[torch.nn.Module, int]:
    torch.manual_seed(seed)
    model = build_model({"name": "features", "args": {"backbone": "resnet18", "pretrained": False, "input_size": size}},
                        num_classes=0)
    criterion = ArcFaceLoss(num_classes, model.embed_dim, scale=30.0)
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(criterion.parameters()), lr=1e-3)
    mean = torch.tensor(model.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(model.std).view(1, 3, 1, 1) * 255
    augment = augmenter(size)
    model.train()
    deadline, steps = time.monotonic() + 60 * minutes, 0
    with tqdm(desc="reference loop", unit="step") as bar:
        while time.monotonic() < deadline:
            for batch in torch.randperm(len(labels)).split(batch_size):
                if time.monotonic() >= deadline:
                    break
                if len(batch) < 2:  # BatchNorm needs two samples
                    continue
                x = torch.stack([augment(images[i]) for i in batch.tolist()]).float()
                loss = criterion(model((x - mean) / std)["embedding"], labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps += 1
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval(), steps


@cli_entry
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default="", help="resized-image cache, as data.cache_dir (default: shared)")
    args = parser.parse_args(argv)

    table = training_rows(load_table(load_config(DataConfig, None, [f"format={args.format}", f"root={args.root}"])))
    label_map = build_label_map(table["identity"])
    labels = torch.tensor([label_map[i] for i in table["identity"]])
    images = load_images(table, args.image_size, args.cache_dir)
    model, steps = train(images, labels, len(label_map), args.image_size, args.minutes, args.batch_size, args.seed)
    # metrics.step as train.py records it: the step of the exported weights.
    out = save_export(model, Path(args.out) / "export", train_config={"reference_loop": vars(args)},
                      metrics={"step": steps})
    print(f"{steps} steps ({steps * args.batch_size / len(labels):.1f} epochs of {len(labels)} images, "
          f"{len(label_map)} identities) in {args.minutes} minutes -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

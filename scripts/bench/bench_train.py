"""Training speed of train.py's loop against a bare PyTorch loop, measured in one run.

    python scripts/bench/bench_train.py [--steps 60] [--batch-size 32] [--image-size 128] [--workers 2] [--individuals 240]

Three figures, each over the same number of optimizer steps of the default recipe's model and
loss (resnet18 embedder + ArcFace) on the synthetic dataset:
  bare      a plain loop: model -> loss -> backward -> AdamW step, batches already in memory
  ours/mem  engine.training.loop's loop (Accelerate, scheduler, clipping, logging, progress bar) fed
            the very same in-memory batches
  ours/disk engine.training.loop's loop reading images from disk through the resized-image cache
            (warmed first) with its DataLoader workers and augmentation
These three run in float32, contiguous memory, like the bare loop, so the ratios measure the
loop's overhead. A fourth figure, ours/mem at the recipe's numerics (channels-last and, where the
CPU or GPU has it, bf16 autocast), shows what those settings add.
Targets: ours/mem >= 0.9 x bare, ours/disk >= 0.9 x ours/mem.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import torch
from accelerate.state import AcceleratorState
from benchmarking import REPO

import engine.components  # noqa: F401  (the built-in names a config may use, registered)
from core.config import load_config
from core.errors import ConfigError, cli_entry
from core.schema import TrainConfig
from engine.training.loop import Trainer
from losses import build_criterion
from zoo import build_model


def make_config(out: Path, args, recipe_numerics: bool = False) -> TrainConfig:
    numerics = [] if recipe_numerics else ["train.mixed_precision=no", "train.channels_last=false"]
    return load_config(
        TrainConfig,
        REPO / "configs/train/default.yaml",
        [
            f"output_dir={out}",
            f"train.max_steps={args.steps}",
            f"train.batch_size={args.batch_size}",
            f"data.image_size={args.image_size}",
            f"data.num_workers={args.workers}",
            f"data.synthetic.individuals={args.individuals}",
            "train.checkpoint_every=1000000",
            "train.log_every=1000000",
            "val.enabled=false",
            *numerics,
        ],
    )


def bare_loop(trainer: Trainer, batches, lr: float) -> float:
    """The same model and loss modules, freshly initialised, trained by hand."""
    torch.manual_seed(0)
    num_classes = len(trainer.data.label_map)
    model = build_model(trainer.cfg.model, num_classes=num_classes)
    criterion = build_criterion(trainer.cfg.losses, embed_dim=model.embed_dim, num_classes=num_classes)
    params = list(model.parameters()) + list(criterion.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    start = time.perf_counter()
    for batch in batches:
        loss, _ = criterion(model(batch["image"]), batch["label"], model=model)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


@cli_entry
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    # Twice the default set: 60 batches in one epoch, so the DataLoader workers' start-up weighs
    # about as much as in a real run instead of dominating a few seconds of timing.
    parser.add_argument("--individuals", type=int, default=240)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        # Disk: the cache is warmed by a first run, then a second run is timed.
        Trainer(make_config(Path(tmp) / "warm", args)).fit()
        disk = Trainer(make_config(Path(tmp) / "disk", args)).fit()

        memory_run = Trainer(make_config(Path(tmp) / "mem", args))
        memory_run.data.batch_sampler.set_epoch(0)
        batches = list(itertools.islice(memory_run.data.loader, args.steps))
        if len(batches) < args.steps:
            raise ConfigError(f"an epoch has only {len(batches)} batches; use --steps {len(batches)} or fewer")
        memory_run.data.loader = batches
        memory = memory_run.fit()
        bare_seconds = bare_loop(memory_run, batches, memory_run.cfg.train.lr)

        AcceleratorState._reset_state()  # the precision is process-wide state in Accelerate
        recipe_run = Trainer(make_config(Path(tmp) / "recipe", args, recipe_numerics=True))
        recipe_run.data.loader = batches
        recipe = recipe_run.fit()
        precision = f"{recipe_run.acc.mixed_precision}, channels-last={recipe_run.cfg.train.channels_last}"

    rates = {
        "bare (in memory)": args.steps / bare_seconds,
        "ours (in memory)": args.steps / memory["train_seconds"],
        "ours (disk, cached)": args.steps / disk["train_seconds"],
        "ours (in memory, recipe numerics)": args.steps / recipe["train_seconds"],
    }
    print(f"{args.steps} steps, batch {args.batch_size}, {args.image_size} px, {args.workers} workers, "
          f"{torch.get_num_threads()} threads")
    for name, rate in rates.items():
        print(f"  {name:34s} {rate:6.3f} steps/s  {rate * args.batch_size:7.1f} images/s")
    print(f"ours/mem vs bare:       {rates['ours (in memory)'] / rates['bare (in memory)']:.3f}  (target >= 0.9)")
    print(f"ours/disk vs ours/mem:  {rates['ours (disk, cached)'] / rates['ours (in memory)']:.3f}  (target >= 0.9)")
    print(f"recipe numerics ({precision}) vs float32: "
          f"{rates['ours (in memory, recipe numerics)'] / rates['ours (in memory)']:.2f}x")


if __name__ == "__main__":
    main(sys.argv[1:])

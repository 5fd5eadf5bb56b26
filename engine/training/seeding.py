"""Per-sample augmentation seeds, so a resumed run sees exactly the augmentations it would have.

DataLoader workers draw augmentation randomness from their own RNG streams, which depend on
how batches were spread over workers since the epoch began; resuming mid-epoch would change
them. Instead every sample carries a seed derived from (run seed, epoch, global batch index),
and the dataset reseeds the transform with it before transforming: the albumentations pipeline of
our datasets, or the global Python, NumPy and torch generators that ultralytics' augmentation
draws from (`seed_global_rngs`).
"""
from __future__ import annotations

import random
from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset


def seed_global_rngs(seed: int) -> None:
    """Reseed the generators a transform without a seed of its own draws from."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class SeededBatchSampler:
    """Wraps a batch sampler with `set_epoch(epoch, start_batch)`; yields [(index, seed), ...]."""

    def __init__(self, batch_sampler, seed: int):
        self.batch_sampler = batch_sampler
        self.seed = seed
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch
        self.batch_sampler.set_epoch(epoch, start_batch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        # Seeds follow the batch's place in the epoch's global order, not in this process's share,
        # so one process with gradient accumulation sees exactly what several processes see.
        world = getattr(self.batch_sampler, "num_replicas", 1)
        rank = getattr(self.batch_sampler, "rank", 0)
        for offset, batch in enumerate(self.batch_sampler):
            position = (self.start_batch + offset) * world + rank
            seeds = np.random.SeedSequence([self.seed, self.epoch, position]).generate_state(len(batch))
            yield [(int(i), int(s)) for i, s in zip(batch, seeds)]


class SeededDataset(Dataset):
    """Dataset view taking (index, seed) and reseeding the wrapped dataset's transform with
    `reseed(seed)` (default: its albumentations pipeline's `set_random_seed`)."""

    def __init__(self, dataset, reseed: Optional[Callable[[int], None]] = None):
        self.dataset = dataset
        self.reseed = reseed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: Tuple[int, int]):
        index, seed = item
        if self.reseed is None:
            self.dataset.transform.set_random_seed(seed)
        else:
            self.reseed(seed)
        return self.dataset[index]

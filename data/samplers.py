"""Batch samplers: lists of dataset indices, deterministic by (seed, epoch), sharded per process.

Each sampler draws the whole epoch's batches from a generator seeded by (seed, epoch), the same
on every process, pads the list to a multiple of the number of processes by repeating its first
batches, and gives process r the batches r, r + R, r + 2R, ... So shares are disjoint (up to
the padding), every process runs the same number of steps (no hang at a collective), and
`set_epoch(epoch, start_batch)` replays an interrupted epoch in the same order.
Images whose label is < 0 (unknown identity) are never drawn.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Iterator, List, Sequence

import numpy as np
from torch.utils.data import Sampler

from core.errors import ConfigError, DataError
from core.registry import Registry
from core.schema import SamplerConfig

SAMPLERS = Registry("sampler")


class ShardedBatchSampler(Sampler[List[int]], ABC):
    """Shared epoch/shard/resume logic; subclasses draw the global batches of one epoch."""

    def __init__(self, labels: Sequence[int], batch_size: int, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.labelled = np.flatnonzero(self.labels >= 0)
        if len(self.labelled) == 0:
            raise DataError("no labelled images to train on (every identity is unknown)")
        self.batch_size = batch_size
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.start_batch = 0

    @abstractmethod
    def num_global_batches(self) -> int:
        """Batches in one epoch over all processes."""

    @abstractmethod
    def global_batches(self, rng: np.random.Generator) -> List[List[int]]:
        """The epoch's batches over all processes, in order."""

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order; iteration starts at this process's batch `start_batch`."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} is outside 0..{len(self)}")
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        return math.ceil(self.num_global_batches() / self.num_replicas)

    def __iter__(self) -> Iterator[List[int]]:
        batches = self.global_batches(np.random.default_rng([self.seed, self.epoch]))
        padded = len(self) * self.num_replicas
        batches = (batches * math.ceil(padded / len(batches)))[:padded]
        for batch in batches[self.rank::self.num_replicas][self.start_batch:]:
            yield [int(i) for i in batch]


@SAMPLERS.register("pk")
class PKBatchSampler(ShardedBatchSampler):
    """P = batch_size // k identities x K images each.

    An epoch draws about as many images as the training set holds: it visits every identity
    round(mean images per identity / K) times (at least once), each visit in a fresh order.
    Identities with fewer than K images contribute all of them, topped up with repeats.
    """

    def __init__(self, labels: Sequence[int], batch_size: int, k: int = 4, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0):
        super().__init__(labels, batch_size, seed, num_replicas, rank)
        if k < 1 or batch_size % k:
            raise ConfigError(f"sampler.k={k} must divide the batch size {batch_size} (P identities x K images)")
        self.k = k
        self.p = batch_size // k
        ids, inverse = np.unique(self.labels[self.labelled], return_inverse=True)
        self.images_of = [self.labelled[inverse == i] for i in range(len(ids))]
        if len(ids) < self.p:
            raise DataError(f"P x K sampling needs at least P={self.p} identities per batch, the training "
                            f"set has {len(ids)}: lower train.batch_size or raise sampler.k")
        self.visits = max(1, round(len(self.labelled) / (len(ids) * k)))

    def num_global_batches(self) -> int:
        return self.visits * math.ceil(len(self.images_of) / self.p)

    def global_batches(self, rng: np.random.Generator) -> List[List[int]]:
        batches = []
        for _ in range(self.visits):
            batches.extend(self._one_visit(rng))
        return batches

    def _one_visit(self, rng: np.random.Generator) -> List[List[int]]:
        order = rng.permutation(len(self.images_of))
        batches = []
        for start in range(0, len(order), self.p):
            chosen = order[start:start + self.p]
            if len(chosen) < self.p:  # the last group is filled with other, random identities
                others = np.setdiff1d(order, chosen)
                chosen = np.concatenate([chosen, rng.choice(others, self.p - len(chosen), replace=False)])
            batches.append([i for identity in chosen for i in self._k_images(identity, rng)])
        return batches

    def _k_images(self, identity: int, rng: np.random.Generator) -> np.ndarray:
        images = self.images_of[identity]
        if len(images) >= self.k:
            return rng.choice(images, self.k, replace=False)
        repeats = rng.choice(images, self.k - len(images), replace=True)
        return rng.permutation(np.concatenate([images, repeats]))


@SAMPLERS.register("balanced")
class BalancedBatchSampler(ShardedBatchSampler):
    """Class-balanced oversampling: each image drawn with weight 1 / (images of its identity),
    so every identity is equally likely; epoch = labelled images // batch_size batches."""

    def __init__(self, labels: Sequence[int], batch_size: int, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0):
        super().__init__(labels, batch_size, seed, num_replicas, rank)
        _check_enough(len(self.labelled), batch_size)
        _, inverse, counts = np.unique(self.labels[self.labelled], return_inverse=True, return_counts=True)
        weights = 1.0 / counts[inverse]
        self.probabilities = weights / weights.sum()

    def num_global_batches(self) -> int:
        return len(self.labelled) // self.batch_size

    def global_batches(self, rng: np.random.Generator) -> List[List[int]]:
        n = self.num_global_batches() * self.batch_size
        drawn = rng.choice(self.labelled, n, replace=True, p=self.probabilities)
        return drawn.reshape(-1, self.batch_size).tolist()


@SAMPLERS.register("random")
class RandomBatchSampler(ShardedBatchSampler):
    """A plain shuffle of the labelled images; the last partial batch is dropped."""

    def __init__(self, labels: Sequence[int], batch_size: int, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0):
        super().__init__(labels, batch_size, seed, num_replicas, rank)
        _check_enough(len(self.labelled), batch_size)

    def num_global_batches(self) -> int:
        return len(self.labelled) // self.batch_size

    def global_batches(self, rng: np.random.Generator) -> List[List[int]]:
        n = self.num_global_batches() * self.batch_size
        return rng.permutation(self.labelled)[:n].reshape(-1, self.batch_size).tolist()


def _check_enough(num_images: int, batch_size: int) -> None:
    if num_images < batch_size:
        raise DataError(f"only {num_images} labelled images for a batch size of {batch_size}: "
                        f"lower train.batch_size")


def build_batch_sampler(cfg: SamplerConfig, labels: Sequence[int], batch_size: int, seed: int,
                        num_replicas: int = 1, rank: int = 0) -> ShardedBatchSampler:
    """The sampler named by `cfg.name`; `cfg.k` goes to the samplers that take it."""
    accepted = SAMPLERS.accepted_args(cfg.name) or set()
    args = {"k": cfg.k} if "k" in accepted else {}
    return SAMPLERS.build(cfg.name, args, labels=labels, batch_size=batch_size, seed=seed,
                          num_replicas=num_replicas, rank=rank)

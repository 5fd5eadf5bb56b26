"""Batch samplers: P x K composition, sharding, determinism, resume, balancing."""
from __future__ import annotations

from collections import Counter

import pytest

from core.errors import ConfigError, DataError
from core.schema import SamplerConfig
from data.samplers import (
    SAMPLERS,
    BalancedBatchSampler,
    PKBatchSampler,
    RandomBatchSampler,
    build_batch_sampler,
)

# 10 identities: identity i has i + 1 images (so 0..2 have fewer than K=4); plus 5 unknown images
LABELS = [i for i in range(10) for _ in range(i + 1)] + [-1] * 5


def all_batches(sampler, epoch=0, start_batch=0):
    sampler.set_epoch(epoch, start_batch)
    return list(sampler)


def test_pk_composition_and_replacement():
    sampler = PKBatchSampler(LABELS, batch_size=12, k=4, seed=0)
    batches = all_batches(sampler)
    assert len(batches) == len(sampler) == 4  # ceil(10 identities / P=3)
    seen = set()
    for batch in batches:
        counts = Counter(LABELS[i] for i in batch)
        assert len(batch) == 12 and len(counts) == 3 and set(counts.values()) == {4}
        assert -1 not in counts
        seen |= set(counts)
        for identity in counts:  # small identities: every image, topped up with repeats
            images = {i for i in batch if LABELS[i] == identity}
            assert len(images) == min(identity + 1, 4)
    assert seen == set(range(10))  # the epoch visits every identity


def test_pk_rejects_bad_settings():
    with pytest.raises(ConfigError, match="sampler.k"):
        PKBatchSampler(LABELS, batch_size=10, k=4)
    with pytest.raises(DataError, match="identities"):
        PKBatchSampler(LABELS, batch_size=48, k=4)  # P = 12 > 10 identities
    with pytest.raises(DataError, match="labelled"):
        PKBatchSampler([-1, -1], batch_size=4, k=2)


@pytest.mark.parametrize("make", [
    lambda **kw: PKBatchSampler(LABELS, batch_size=8, k=2, **kw),
    lambda **kw: BalancedBatchSampler(LABELS, batch_size=8, **kw),
    lambda **kw: RandomBatchSampler(LABELS, batch_size=8, **kw),
], ids=["pk", "balanced", "random"])
def test_determinism_sharding_and_resume(make):
    single = make(seed=3)
    assert all_batches(single, 1) == all_batches(make(seed=3), 1)
    assert all_batches(single, 1) != all_batches(single, 2)
    assert all_batches(single, 1) != all_batches(make(seed=4), 1)
    assert all(i >= 0 and LABELS[i] >= 0 for batch in all_batches(single) for i in batch)

    ranks = [make(seed=3, num_replicas=2, rank=r) for r in range(2)]
    shards = [all_batches(s, 1) for s in ranks]
    assert len(shards[0]) == len(shards[1]) == len(ranks[0]) == len(ranks[1])
    assert len(shards[0]) == -(-len(all_batches(single, 1)) // 2)
    # disjoint shares of one global order: rank r holds global batches r, r+2, ...
    interleaved = [b for pair in zip(*shards, strict=True) for b in pair]
    assert interleaved[: len(all_batches(single, 1))] == all_batches(single, 1)
    padded = len(all_batches(single, 1)) % 2
    pairs = [(a, b) for a in shards[0] for b in shards[1]]
    assert sum(a == b for a, b in pairs) == padded  # only the padding batch repeats

    full = all_batches(ranks[1], 5)
    assert all_batches(ranks[1], 5, start_batch=2) == full[2:]
    assert all_batches(ranks[1], 5) == full  # a later set_epoch without start_batch starts over


def test_balanced_oversamples_rare_identities():
    labels = [0] * 90 + [1] * 10
    sampler = BalancedBatchSampler(labels, batch_size=10, seed=0)
    counts = Counter(labels[i] for epoch in range(20) for batch in all_batches(sampler, epoch) for i in batch)
    assert len(sampler) == 10
    assert abs(counts[1] / (counts[0] + counts[1]) - 0.5) < 0.05  # 10 % of images, half the draws
    plain = RandomBatchSampler(labels, batch_size=10, seed=0)
    plain_counts = Counter(labels[i] for batch in all_batches(plain) for i in batch)
    assert plain_counts == {0: 90, 1: 10}  # a plain shuffle keeps the proportions


def test_build_batch_sampler_by_name():
    assert SAMPLERS.names() == ["balanced", "pk", "random"]
    pk = build_batch_sampler(SamplerConfig(name="pk", k=2), LABELS, 8, seed=0, num_replicas=2, rank=1)
    assert isinstance(pk, PKBatchSampler) and pk.k == 2 and pk.rank == 1
    assert isinstance(build_batch_sampler(SamplerConfig(name="balanced"), LABELS, 8, seed=0), BalancedBatchSampler)
    with pytest.raises(ConfigError, match="did you mean 'random'"):
        build_batch_sampler(SamplerConfig(name="randm"), LABELS, 8, seed=0)


def test_random_sampler_covers_each_image_once_per_epoch():
    sampler = RandomBatchSampler(LABELS, batch_size=5, seed=0)
    drawn = [i for batch in all_batches(sampler) for i in batch]
    labelled = [i for i, label in enumerate(LABELS) if label >= 0]
    assert len(drawn) == len(set(drawn)) == len(labelled) // 5 * 5 and set(drawn) <= set(labelled)
    assert drawn != sorted(drawn)  # shuffled, not in file order


def test_pk_epoch_draws_about_as_many_images_as_the_set_holds():
    labels = [i for i in range(6) for _ in range(12)]  # 72 images, 12 per identity
    sampler = PKBatchSampler(labels, batch_size=8, k=4, seed=0)
    batches = all_batches(sampler)
    assert len(batches) == 9  # 3 visits x ceil(6 identities / P=2)
    visits = Counter(labels[b[0]] for b in batches for b in (b[:4], b[4:]))
    assert set(visits.values()) == {3}
    assert sum(len(b) for b in batches) == len(labels)

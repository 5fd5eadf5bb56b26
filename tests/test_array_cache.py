"""ArrayCache: keyed arrays and named groups on disk, atomic, damaged = miss, processes agree."""
from __future__ import annotations

import warnings

import accelerate.utils
import numpy as np
import pytest

import core.array_cache as array_cache
from core.array_cache import ArrayCache


class FakeAccelerator:
    """Two processes, as Accelerate shows them to one of them."""

    num_processes = 2

    def __init__(self, main: bool):
        self.is_main_process = main
        self.waited = 0

    def wait_for_everyone(self):
        self.waited += 1


def group() -> dict:
    return {"keypoints": np.arange(12, dtype=np.float32).reshape(4, 3), "scores": np.array([0.5, 1, 0, 2]),
            "labels": np.array([3, 1, 4, 1], dtype=np.int16)}


def counting(value):
    calls = []

    def compute():
        calls.append(1)
        return value

    return compute, calls


def test_single_arrays_and_groups_round_trip(tmp_path):
    cache = ArrayCache(tmp_path)
    array = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    cache.save("ab" * 32, array)
    cache.save_group("cd" * 32, group())
    np.testing.assert_array_equal(cache.load("ab" * 32), array)
    loaded = cache.load_group("cd" * 32)
    assert set(loaded) == set(group())
    for name, value in group().items():
        assert loaded[name].dtype == value.dtype
        np.testing.assert_array_equal(loaded[name], value)
    assert cache.path("ab" * 32) == tmp_path / "ab" / f"{'ab' * 32}.npy"
    assert cache.path("cd" * 32, group=True).is_file()
    assert cache.load("cd" * 32) is None and cache.load_group("ab" * 32) is None, "a group is not an array"
    assert not list(tmp_path.rglob("*.tmp")), "atomic writes leave no temporary file"


def swapped(tmp_path) -> tuple:
    """(.npy bytes, .npz bytes) of valid entries: what the other kind of entry must not accept."""
    donor = ArrayCache(tmp_path / "donor")
    donor.save("0" * 64, np.zeros(3))
    donor.save_group("0" * 64, group())
    return donor.path("0" * 64).read_bytes(), donor.path("0" * 64, group=True).read_bytes()


@pytest.mark.parametrize("damage", ["empty", "truncated zip", "broken npy", "swapped"])
def test_a_damaged_entry_is_a_miss_and_is_rewritten(tmp_path, damage):
    cache = ArrayCache(tmp_path / "cache")
    key = "e" * 64
    npy, npz = swapped(tmp_path)
    contents = {"empty": (b"", b""), "truncated zip": (npz[:40], npz[:40]), "broken npy": (npy[:20], npy[:20]),
                "swapped": (npz, npy)}[damage]
    for path, content in zip((cache.path(key), cache.path(key, group=True)), contents):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    assert cache.load(key) is None and cache.load_group(key) is None

    compute, calls = counting(group())
    first = cache.get_or_compute_group(key, compute)
    second = cache.get_or_compute_group(key, compute)
    assert len(calls) == 1 and set(first) == set(second) == set(group())

    compute_one, calls_one = counting({"embedding": np.ones((4, 2), np.float32)})
    cache.get_or_compute({"embedding": key}, compute_one, expected_rows=4)
    cache.get_or_compute({"embedding": key}, compute_one, expected_rows=4)
    cache.get_or_compute({"embedding": key}, compute_one, expected_rows=5)  # the image list grew
    assert len(calls_one) == 2


def test_several_names_each_under_its_own_key_hit_only_together(tmp_path):
    cache = ArrayCache(tmp_path)
    keys = {"embedding": "1" * 64, "logits": "2" * 64}
    arrays = {"embedding": np.zeros((3, 4), np.float32), "logits": np.ones((3, 2), np.float32)}
    compute, calls = counting(arrays)
    cache.get_or_compute(keys, compute, expected_rows=3)
    cache.path(keys["logits"]).unlink()
    cache.get_or_compute(keys, compute, expected_rows=3)
    cached = cache.get_or_compute(keys, compute, expected_rows=3)
    assert len(calls) == 2
    np.testing.assert_array_equal(cached["logits"], arrays["logits"])


def test_disabled_cache_always_computes(tmp_path):
    cache = ArrayCache(None)
    assert not cache.enabled and cache.path("x" * 64) is None
    compute, calls = counting(group())
    cache.get_or_compute_group("x" * 64, compute)
    cache.get_or_compute_group("x" * 64, compute)
    cache.save("x" * 64, np.zeros(1))
    assert len(calls) == 2 and cache.load("x" * 64) is None


def test_processes_agree_on_a_miss_and_only_the_main_one_writes(tmp_path, monkeypatch):
    cache = ArrayCache(tmp_path)
    key = "f" * 64
    cache.save_group(key, group())
    # This process can read the entry, the other cannot: both must compute (compute is collective).
    monkeypatch.setattr(accelerate.utils, "gather_object", lambda values: values + [False])
    worker = FakeAccelerator(main=False)
    fresh = {"keypoints": np.full((4, 3), 7.0, np.float32)}
    compute, calls = counting(fresh)
    assert cache.get_or_compute_group(key, compute, accelerator=worker) is fresh
    assert len(calls) == 1 and worker.waited == 1
    assert set(cache.load_group(key)) == set(group()), "a non-main process does not write"

    main = FakeAccelerator(main=True)
    cache.get_or_compute_group(key, compute, accelerator=main)
    assert set(cache.load_group(key)) == {"keypoints"}

    monkeypatch.setattr(accelerate.utils, "gather_object", lambda values: values + [True])
    assert cache.get_or_compute_group(key, compute, accelerator=worker)["keypoints"][0, 0] == 7.0
    assert len(calls) == 2, "every process read it: a hit"


def test_a_refused_write_warns_once_and_the_run_goes_on(tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(array_cache, "save_npz_atomic", full_disk)
    cache = ArrayCache(tmp_path, what="keypoint")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert set(cache.get_or_compute_group("9" * 64, lambda: group())) == set(group())
    assert [str(w.message) for w in caught] == [f"keypoint cache not written ({tmp_path}): [Errno 28] No space left on device"]


def test_reserved_group_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="'file' is reserved"):
        ArrayCache(tmp_path).save_group("a" * 64, {"file": np.zeros(1)})

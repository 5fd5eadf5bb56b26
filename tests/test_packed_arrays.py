"""PackedArrays: small groups of arrays in one SQLite file (the pair match records' cache)."""
from __future__ import annotations

import multiprocessing
import struct
import warnings

import numpy as np
import pytest

from core.packed_arrays import PackedArrays, unpack


def _entry(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 40))
    return {"first": rng.integers(0, 512, n).astype(np.int32), "second": rng.integers(0, 512, n).astype(np.int32),
            "inlier": rng.random(n) < 0.5, "grid": rng.random((3, 2)).astype(np.float16)}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)


def test_entries_round_trip_across_instances_and_missing_keys_are_absent(tmp_path):
    path = tmp_path / "records.sqlite"
    entries = {f"k{i}": _entry(i) for i in range(1200)}  # more than one lookup chunk
    PackedArrays(path).save_many(entries)
    found = PackedArrays(path).load_many([*entries, "absent"])
    assert set(found) == set(entries)
    assert all(_same(found[k], entries[k]) for k in entries)
    assert found["k3"]["first"].dtype == np.int32 and found["k3"]["inlier"].dtype == bool


def test_an_entry_written_again_is_replaced(tmp_path):
    store = PackedArrays(tmp_path / "r.sqlite")
    store.save_many({"a": {"x": np.arange(3)}})
    store.save_many({"a": {"x": np.arange(5)}})
    assert np.array_equal(store.load_many(["a"])["a"]["x"], np.arange(5))


@pytest.mark.parametrize("damage", [b"", b"\x05\x00\x00\x00[[", b"junk bytes", b"\x02\x00\x00\x00[]extra"])
def test_undecodable_bytes_are_refused(damage):
    with pytest.raises(ValueError):
        unpack(damage)


def test_object_arrays_are_never_read_back():
    header = b'[["x", "|O", [2]]]'
    blob = struct.pack("<I", len(header)) + header + bytes(16)
    with pytest.raises(ValueError, match="object"):
        unpack(blob)


def test_a_damaged_entry_is_a_miss(tmp_path):
    store = PackedArrays(tmp_path / "r.sqlite")
    store.save_many({"good": {"x": np.arange(4)}, "bad": {"x": np.arange(4)}})
    with store._database() as database:
        database.execute("UPDATE entries SET arrays = ? WHERE key = 'bad'", (b"\x00\x00",))
    assert set(PackedArrays(tmp_path / "r.sqlite").load_many(["good", "bad"])) == {"good"}


def test_a_file_that_is_not_a_database_warns_once_and_the_run_goes_on(tmp_path):
    path = tmp_path / "r.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    store = PackedArrays(path, what="pair match")
    with pytest.warns(UserWarning, match="pair match cache"):
        assert store.load_many(["a"]) == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store.save_many({"a": {"x": np.arange(2)}})
        assert store.load_many(["a"]) == {}
    assert not store.enabled


def test_disabled_store_reads_and_writes_nothing():
    store = PackedArrays(None)
    store.save_many({"a": {"x": np.arange(2)}})
    assert not store.enabled and store.load_many(["a"]) == {}


def _write_share(path, start):
    PackedArrays(path).save_many({f"k{i}": {"x": np.full(3, i)} for i in range(start, start + 300)})


def test_two_processes_writing_the_same_file_keep_every_entry(tmp_path):
    path = tmp_path / "r.sqlite"
    PackedArrays(path).save_many({"seed": {"x": np.arange(1)}})  # created before the workers start
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_share, args=(path, start)) for start in (0, 300)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    found = PackedArrays(path).load_many([f"k{i}" for i in range(600)])
    assert len(found) == 600 and all(int(found[f"k{i}"]["x"][0]) == i for i in range(600))

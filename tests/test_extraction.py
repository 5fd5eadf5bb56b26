"""Embedding extraction (TTA averaging, order, logits, process shares) and the embedding cache."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.extraction import (
    EMBEDDING,
    LOGITS,
    _reassemble,
    _share,
    extract,
    extract_embeddings,
)
from engine.scoring.embed_cache import (
    EmbeddingCache,
    cache_key,
    image_list_fingerprint,
    resolve_embed_cache_dir,
    transform_description,
)


class TinyClassifier(nn.Module):
    """forward -> {"embedding", "logits"} like zoo models; records the mode it ran in."""

    def __init__(self, dim: int = 5, classes: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(3 * 4 * 4, dim)
        self.head = nn.Linear(dim, classes)
        self.forwards = 0
        self.modes = []

    def forward(self, images):
        self.forwards += 1
        self.modes.append(self.training)
        embedding = self.body(images.flatten(1))
        return {"embedding": embedding, "logits": self.head(embedding)}

    def embed(self, images):
        return F.normalize(self(images)["embedding"], dim=1)


class Items(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": -1, "index": i}


def test_tta_views_are_averaged_in_embedding_space():
    model = TinyClassifier()
    views = torch.randn(7, 3, 3, 4, 4)  # 7 images, 3 views each
    got = extract_embeddings(model, Items(views), batch_size=3, progress=False)
    with torch.no_grad():
        per_view = torch.stack([model.embed(views[:, v]) for v in range(3)], dim=1)
        expected = F.normalize(per_view.mean(dim=1), dim=1).numpy()
    assert got.dtype == np.float32 and got.shape == (7, 5)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_a_single_tta_view_equals_plain_images():
    model = TinyClassifier()
    images = torch.randn(5, 3, 4, 4)
    np.testing.assert_allclose(extract_embeddings(model, Items(images[:, None]), batch_size=2, progress=False),
                               extract_embeddings(model, Items(images), batch_size=2, progress=False), atol=1e-6)


def test_rows_keep_dataset_order_across_uneven_batches():
    model = TinyClassifier()
    images = torch.randn(10, 3, 4, 4)
    got = extract_embeddings(model, Items(images), batch_size=4, progress=False)
    with torch.no_grad():
        one_by_one = np.concatenate([model.embed(images[i:i + 1]).numpy() for i in range(10)])
    np.testing.assert_allclose(got, one_by_one, atol=1e-6)


def test_logits_and_embeddings_come_from_one_forward_and_mode_is_restored():
    model = TinyClassifier()
    model.train()
    views = torch.randn(6, 2, 3, 4, 4)
    out = extract(model, Items(views), heads=(EMBEDDING, LOGITS), batch_size=6, progress=False)
    assert model.forwards == 1 and model.modes == [False]
    assert model.training, "extraction must restore training mode (the trainer calls it mid-training)"
    with torch.no_grad():
        logits = torch.stack([model(views[:, v])["logits"] for v in range(2)], dim=1).mean(dim=1).numpy()
    np.testing.assert_allclose(out[LOGITS], logits, atol=1e-6)
    np.testing.assert_allclose(out[EMBEDDING], extract_embeddings(model, Items(views), progress=False), atol=1e-6)
    np.testing.assert_allclose(extract(model, Items(views), heads=(LOGITS,), progress=False)[LOGITS], logits, atol=1e-6)


def test_logits_of_a_model_without_them_is_an_error():
    class EmbedOnly(TinyClassifier):
        def forward(self, images):
            return {"embedding": self.body(images.flatten(1))}

    with pytest.raises(ValueError, match="not a classifier"):
        extract(EmbedOnly(), Items(torch.randn(2, 3, 4, 4)), heads=(LOGITS,), progress=False)


@pytest.mark.parametrize("n,world", [(1, 2), (5, 2), (7, 3), (9, 3), (4, 4)])
def test_process_shares_are_disjoint_cover_and_reassemble_in_order(n, world):
    rows = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 2), dtype=np.float32)
    shares = [_share(n, rank, world) for rank in range(world)]
    assert len({len(s) for s in shares}) == 1, "every process must run the same number of batches"
    assert set().union(*map(set, shares)) == set(range(n))
    assert sum(map(len, shares)) < n + world, "padding adds fewer than one item per process"
    gathered = torch.from_numpy(np.concatenate([rows[s] for s in shares]))  # what accelerator.gather returns
    np.testing.assert_array_equal(_reassemble(gathered, n, world).numpy(), rows)


# ----------------------------------------------------------------------------- the cache


def test_second_request_is_served_from_the_cache(tmp_path):
    cache = EmbeddingCache(tmp_path / "emb")
    calls = []

    def compute():
        calls.append(1)
        return {EMBEDDING: np.arange(6, dtype=np.float32).reshape(3, 2)}

    first = cache.get_or_compute({EMBEDDING: "k" * 64}, compute, expected_rows=3)
    second = cache.get_or_compute({EMBEDDING: "k" * 64}, compute, expected_rows=3)
    assert len(calls) == 1
    np.testing.assert_array_equal(first[EMBEDDING], second[EMBEDDING])
    assert not list((tmp_path / "emb").rglob("*.tmp")), "atomic writes leave no temporary file"


def test_damaged_or_wrong_sized_entry_is_recomputed(tmp_path):
    cache = EmbeddingCache(tmp_path)
    key = "a" * 64
    cache.path(key).parent.mkdir(parents=True)
    cache.path(key).write_bytes(b"not an npy file")
    calls = []

    def compute():
        calls.append(1)
        return {EMBEDDING: np.ones((4, 2), np.float32)}

    cache.get_or_compute({EMBEDDING: key}, compute, expected_rows=4)
    cache.get_or_compute({EMBEDDING: key}, compute, expected_rows=5)  # the image list grew
    assert len(calls) == 2


def test_cache_dir_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("REIDZOO_CACHE", str(tmp_path))
    assert resolve_embed_cache_dir("") == tmp_path / "embeddings"
    assert resolve_embed_cache_dir("none") is None and resolve_embed_cache_dir("None") is None
    assert resolve_embed_cache_dir(str(tmp_path / "x")) == tmp_path / "x"
    disabled = EmbeddingCache(None)
    calls = []
    for _ in range(2):
        disabled.get_or_compute({EMBEDDING: "b" * 64}, lambda: calls.append(1) or {EMBEDDING: np.zeros((1, 1))})
    assert len(calls) == 2


def _transform(**changes):
    args = dict(size=128, mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2], tta=["identity", "hflip"],
                orientation_rules={}, crop_to_bbox=True, bbox_padding=0.1)
    args.update(changes)
    return transform_description(**args)


def test_cache_key_changes_with_the_transform_the_model_and_the_head():
    base = cache_key("model", "images", _transform(), EMBEDDING)
    assert cache_key("model", "images", _transform(), EMBEDDING) == base
    variants = [_transform(size=224), _transform(tta=["identity"]), _transform(mean=[0.4, 0.5, 0.5]),
                _transform(orientation_rules={"Sal": {"left": 90}}), _transform(crop_to_bbox=False),
                _transform(bbox_padding=0.2)]
    keys = {cache_key("model", "images", v, EMBEDDING) for v in variants}
    keys |= {cache_key("other", "images", _transform(), EMBEDDING), cache_key("model", "other", _transform(), EMBEDDING),
             cache_key("model", "images", _transform(), LOGITS)}
    assert base not in keys and len(keys) == len(variants) + 3


def test_image_fingerprint_follows_files_boxes_and_order(tmp_path):
    paths = []
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / name).write_bytes(b"x" * 10)
        paths.append(str(tmp_path / name))
    table = pd.DataFrame({"path": paths, "bbox": [None, [1, 2, 3, 4]], "dataset": ["d", "d"],
                          "orientation": [None, "left"]})
    base = image_list_fingerprint(table)
    assert image_list_fingerprint(table.copy()) == base
    assert image_list_fingerprint(table.iloc[::-1]) != base
    assert image_list_fingerprint(table.assign(bbox=[None, [1, 2, 3, 5]])) != base
    assert image_list_fingerprint(table.assign(orientation=[None, "right"])) != base
    stat = os.stat(paths[0])
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the photo was replaced
    assert image_list_fingerprint(table) != base


DISTRIBUTED_SCRIPT = """
import sys
import numpy as np, torch
sys.path.insert(0, {repo!r})
from accelerate import Accelerator
from engine.accel import leave_process_group
from engine.scoring.embed_cache import EmbeddingCache
from engine.extraction import extract
from tests.test_extraction import Items, TinyClassifier, distributed_views
acc = Accelerator(cpu=True)
cache = EmbeddingCache({cache!r})
calls = []
def compute():
    calls.append(1)
    return extract(TinyClassifier(), Items(distributed_views()), heads=("embedding", "logits"), batch_size=2,
                   accelerator=acc, progress=False)
keys = {{"embedding": "e" * 64, "logits": "l" * 64}}
out = cache.get_or_compute(keys, compute, accelerator=acc, expected_rows=11)
again = cache.get_or_compute(keys, compute, accelerator=acc, expected_rows=11)
if acc.is_main_process:
    np.savez({out!r}, world=acc.num_processes, calls=len(calls), **out)
leave_process_group()  # as every program does at exit (engine.accel.make_accelerator registers it)
"""


def distributed_views() -> torch.Tensor:
    return torch.randn(11, 2, 3, 4, 4, generator=torch.Generator().manual_seed(1))


@pytest.mark.distributed
def test_two_processes_give_the_single_process_result_in_order(tmp_path):
    import socket
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "run.py"
    script.write_text(DISTRIBUTED_SCRIPT.format(repo=repo, cache=str(tmp_path / "cache"), out=str(tmp_path / "out.npz")))
    with socket.socket() as probe:  # a free port: other test runs may hold accelerate's default one
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launched = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                               "--main_process_port", str(port), str(script)],
                              capture_output=True, text=True, timeout=300, cwd=repo)
    assert launched.returncode == 0, launched.stderr[-3000:]
    result = np.load(tmp_path / "out.npz")
    assert int(result["world"]) == 2
    assert int(result["calls"]) == 1, "the second request must be a cache hit on both processes"
    single = extract(TinyClassifier(), Items(distributed_views()), heads=(EMBEDDING, LOGITS), batch_size=2, progress=False)
    np.testing.assert_allclose(result[EMBEDDING], single[EMBEDDING], atol=1e-6)
    np.testing.assert_allclose(result[LOGITS], single[LOGITS], atol=1e-6)

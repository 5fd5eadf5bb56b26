"""eval.py's models built only when they must run: checksum and probe remembered per export files."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, TINY_BACKBONE

from engine.scoring import lazy_model
from engine.scoring.embed_cache import EmbeddingCache
from engine.scoring.lazy_model import LazyModel
from zoo import build_model, model_checksum, probe, save_export

CPU = torch.device("cpu")


def export(folder, kind: str = "embedder", seed: int = 0):
    torch.manual_seed(seed)
    model = build_model({"name": kind, "args": {"backbone": TINY_BACKBONE, "embed_dim": 8}}, num_classes=0)
    model.input_size = 32
    return save_export(model, folder), model


def forbid_building(monkeypatch):
    def not_built(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(lazy_model, "load_for_eval", not_built)


def test_a_second_opening_of_an_export_answers_from_the_cache_without_building(tmp_path, monkeypatch):
    folder, model = export(tmp_path / "export")
    cache = EmbeddingCache(tmp_path / "cache")
    first = LazyModel(str(folder), CPU, cache)
    expected = (model_checksum(model), probe(model.eval(), "m", 32, CPU))
    assert first.identify(32) == expected

    forbid_building(monkeypatch)
    again = LazyModel(str(folder), CPU, cache)
    assert again.identify(32) == expected
    assert again.meta["input_size"] == 32 and again.inputs == "images"
    with pytest.raises(AssertionError, match="built"):  # a size never probed must run the model
        again.identify(48)


def test_a_rewritten_export_is_built_checksummed_and_probed_again(tmp_path):
    folder, _ = export(tmp_path / "export", seed=0)
    cache = EmbeddingCache(tmp_path / "cache")
    old = LazyModel(str(folder), CPU, cache).identify(32)[0]
    folder, retrained = export(tmp_path / "export", seed=1)  # same size on disk, new weights and times
    new = LazyModel(str(folder), CPU, cache).identify(32)[0]
    assert new == model_checksum(retrained) != old


def test_without_a_cache_and_for_names_the_model_is_built_at_once(tmp_path, monkeypatch):
    folder, model = export(tmp_path / "export")
    built = LazyModel(str(folder), CPU, EmbeddingCache(None))
    assert built.identify(32)[0] == model_checksum(model)
    forbid_building(monkeypatch)
    with pytest.raises(AssertionError, match="built"):
        LazyModel(str(folder), CPU, EmbeddingCache(None))
    with pytest.raises(AssertionError, match="built"):
        LazyModel(TINY_BACKBONE, CPU, EmbeddingCache(tmp_path / "cache"))


def test_a_damaged_entry_is_a_miss(tmp_path):
    folder, model = export(tmp_path / "export")
    cache = EmbeddingCache(tmp_path / "cache")
    handle = LazyModel(str(folder), CPU, cache)
    cache.save_group(handle._key(32), {"checksum": np.array(["x", "y"]), "embed_dim": np.array([1]),
                                       "classes": np.array([-1]), "pair_head": np.array([0])})
    assert LazyModel(str(folder), CPU, cache).identify(32)[0] == model_checksum(model)


def test_a_pair_head_model_is_built_when_its_head_runs(tmp_path, monkeypatch):
    folder, model = export(tmp_path / "export", kind="siamese")
    cache = EmbeddingCache(tmp_path / "cache")
    LazyModel(str(folder), CPU, cache).identify(32)
    handle = LazyModel(str(folder), CPU, cache)
    assert handle.identify(32)[1]["pair_head"] is True
    a, b = torch.randn(3, 8).numpy(), torch.randn(3, 8).numpy()
    assert np.allclose(handle.model().pair_scores(a, b), model.eval().pair_scores(a, b), atol=1e-6)


def test_eval_imports_no_model_loss_or_augmentation_library_before_it_needs_them():
    """eval.py's start: timm and torchvision (with torch._dynamo: 1.5 s) are imported when a model is
    built, pytorch-metric-learning when a loss is, albumentations when a transform is; not when the
    registries are filled, nor for the report."""
    code = ("import sys, engine.components, engine.identify.pipeline, engine.identify.report; "
            "print(sorted(m for m in ('timm', 'torchvision', 'pytorch_metric_learning', 'albumentations')"
            " if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"

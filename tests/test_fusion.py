"""The trained fusion model (zoo/fusion.py): PCA per member fitted on training rows only, an MLP that
learns, export round trip, members checked by checksum, pair mining, train.py and eval.py end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO

from core.config import load_config
from core.errors import ConfigError, DataError
from core.schema import TrainConfig
from data.formats import load_table
from engine.cached_outputs import ImageViews
from engine.embed_cache import EmbeddingCache, image_list_fingerprint
from engine.member_features import load_members, load_recorded_members, member_features
from engine.training.member_data import ROW, build_member_feature_data, evaluation_rows, fit_pca
from losses import build_criterion
from losses.pair import select_pairs
from zoo import build_model, load_export, model_checksum, save_export
from zoo.fusion import Fusion


def member_record(dim: int, name: str = "m") -> dict:
    return {"spec": name, "checksum": "0" * 64, "dim": dim, "input_size": 32}


def tiny_fusion(num_classes: int = 0, dims=(16, 12), pca=(8, 6), **args) -> Fusion:
    return Fusion(num_classes, members=[member_record(d, f"m{i}") for i, d in enumerate(dims)], pca_dims=list(pca),
                  hidden=32, embed_dim=16, **args)


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> list:
    """Two untrained exports of different families (an embedder and a classifier's features), 32 px."""
    base = tmp_path_factory.mktemp("fusion_members")
    torch.manual_seed(0)
    embedder = build_model({"name": "embedder", "args": {"backbone": "resnet18", "embed_dim": 16}}, num_classes=0)
    features = build_model({"name": "features", "args": {"backbone": "resnet18"}}, num_classes=0)
    exports = []
    for name, model in (("embedder", embedder), ("features", features)):
        model.input_size = 32
        exports.append(str(save_export(model, base / name)))
    return exports


def fusion_overrides(root: Path, members: list, out: Path, cache: Path) -> list:
    return [f"output_dir={out}", "data.format=animalclef2025", f"data.root={root}", f"data.cache_dir={cache / 'images'}",
            "data.num_workers=0", "model.name=fusion", f"model.args={{members: [{members[0]}, {members[1]}], pca_dim: 8, "
            "hidden: 32, embed_dim: 16, pair_hidden: 16}", "losses=[{name: arcface}, {name: contrastive}]",
            "sampler.name=pk", "sampler.k=4", "train.batch_size=16", "train.warmup_steps=2", "train.max_minutes=0",
            f"features.cache={cache / 'embeddings'}", "features.batch_size=32", "features.train_views=[hflip]",
            "val.fraction=0.3"]


# ----------------------------------------------------------------------------- units


def test_pca_is_fitted_on_training_rows_only(tiny_synthetic, members, tmp_path):
    cfg = load_config(TrainConfig, None, fusion_overrides(tiny_synthetic, members, tmp_path / "run", tmp_path))
    data = build_member_feature_data(cfg)
    recorded = []
    data.setup_model(type("Recorder", (), {"set_pca": lambda self, t: recorded.extend(t)})())

    rows = evaluation_rows(load_table(cfg.data))
    views = ImageViews(cfg.data, cfg.features.tta, 32)
    cache = EmbeddingCache(tmp_path / "embeddings")
    features = member_features(load_members(members, torch.device("cpu")), views, rows, cache,
                               image_list_fingerprint(rows), None, "no")
    train_rows = data.train_table[ROW].to_numpy()
    assert set(rows.iloc[train_rows]["split"]) == {"database"}
    assert not set(data.train_table["identity"]) & set(data.val_table["identity"])
    assert len(train_rows) < (rows["split"] == "database").sum() < len(rows)  # validation and queries left out
    for block, (a, b) in zip(features, recorded, strict=True):
        expected_a, expected_b = fit_pca(block[train_rows], 8, whiten=False)
        np.testing.assert_allclose(a, expected_a, atol=1e-5)
        np.testing.assert_allclose(b, expected_b, atol=1e-5)
        # Fitting on every row (queries included) would give another centre: the test can fail.
        assert not np.allclose(b, fit_pca(block, 8, whiten=False)[1], atol=1e-5)
    assert [m["spec"] for m in data.model_args["members"]] == members
    assert data.model_args["pca_dims"] == [8, 8] and data.model_args["members"][1]["dim"] == 512


def test_whitened_pca_gives_unit_variance_and_caps_its_size():
    features = np.random.default_rng(0).normal(size=(40, 12)).astype(np.float32) * np.arange(1, 13, dtype=np.float32)
    a, b = fit_pca(features, 64, whiten=True)
    assert a.shape == (12, 12)  # capped at the feature size
    np.testing.assert_allclose((features @ a.T + b).std(axis=0), 1.0, rtol=1e-3)
    np.testing.assert_allclose((features @ a.T + b).mean(axis=0), 0.0, atol=1e-4)
    assert fit_pca(features[:5], 64, whiten=False)[0].shape == (4, 12)  # at most N - 1 components


def test_mlp_loss_falls_on_a_tiny_separable_problem():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 28)).astype(np.float32)
    labels = np.repeat(np.arange(6), 20)
    x = centres[labels] + 0.3 * rng.normal(size=(120, 28)).astype(np.float32)
    torch.manual_seed(0)
    model = tiny_fusion(6, dims=(16, 12), pca=(8, 6), classifier=True)
    model.set_pca([fit_pca(x[:, :16], 8, False), fit_pca(x[:, 16:], 6, False)])
    criterion = build_criterion([{"name": "cross_entropy"}], embed_dim=16, num_classes=6)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(labels)
    losses = []
    for _ in range(60):
        loss, _ = criterion(model(inputs), targets, model=model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses[::10]
    model.eval()
    assert (model(inputs)["logits"].argmax(1) == targets).float().mean() > 0.95


def test_export_load_gives_identical_embeddings_and_pair_scores(tmp_path):
    torch.manual_seed(0)
    model = tiny_fusion(4, pair_hidden=8)
    model.set_pca([(np.random.rand(8, 16).astype(np.float32), np.random.rand(8).astype(np.float32)),
                   (np.random.rand(6, 12).astype(np.float32), np.random.rand(6).astype(np.float32))])
    model.eval()
    x = torch.randn(5, 28)
    export = save_export(model, tmp_path / "export", label_map={str(i): i for i in range(4)})
    loaded, meta = load_export(export)
    assert meta["architecture"] == "fusion" and meta["model_args"]["members"][0]["spec"] == "m0"
    with torch.no_grad():
        assert torch.equal(model(x)["embedding"], loaded(x)["embedding"])
        a, b = model(x)["embedding"], model(x.flip(0))["embedding"]
    assert np.array_equal(model.pair_scores(a, b), loaded.pair_scores(a, b))
    assert model_checksum(model) == model_checksum(export) == model_checksum(loaded)


def test_unresolved_or_misspelt_fusion_arguments_are_refused():
    with pytest.raises(ConfigError, match="not resolved"):
        Fusion(0, members=["runs/a/export"], pca_dims=[8])
    with pytest.raises(ConfigError, match="did you mean 'pca_dims'"):
        build_model({"name": "fusion", "args": {"members": [member_record(4)], "pca_dim": [2], "pca_dims": [2],
                                                "pca_dimz": 2}}, num_classes=0)
    with pytest.raises(ConfigError, match="no pair head"):
        tiny_fusion().pair_logits(torch.zeros(1, 16), torch.zeros(1, 16))


def test_a_changed_member_is_refused(members, tmp_path):
    recorded = [{"spec": spec, "checksum": model_checksum(spec), "dim": 0, "input_size": 32} for spec in members]
    assert len(load_recorded_members(recorded, "fusion", torch.device("cpu"))) == 2
    changed, meta = load_export(members[0])
    with torch.no_grad():
        next(changed.parameters()).add_(0.01)
    copy = save_export(changed, tmp_path / "changed")
    recorded[0]["spec"] = str(copy)
    with pytest.raises(DataError, match=f"member {copy} has changed since it was trained"):
        load_recorded_members(recorded, "fusion", torch.device("cpu"))


def test_pair_mining_never_pairs_an_image_with_itself():
    # Items 3 and 5 are one image drawn twice (a PK sampler repeats images of small identities).
    labels = torch.tensor([0, 0, 1, 2, 1, 2, 0])
    items = torch.tensor([10, 11, 12, 13, 14, 13, 15])
    embedding = torch.randn(7, 8)
    for negatives in ("hard", "all"):
        positives, negative_pairs = select_pairs(embedding, labels, negatives, items)
        for i, j in torch.cat([positives, negative_pairs]).tolist():
            assert items[i] != items[j]
        assert sorted(map(tuple, positives.tolist())) == [(0, 1), (0, 6), (1, 6), (2, 4)]
    assert (3, 5) in map(tuple, select_pairs(embedding, labels, "hard")[0].tolist())  # without items: paired


# ----------------------------------------------------------------------------- end to end


def run_script(script: str, args: list, launcher=None, env=None) -> subprocess.CompletedProcess:
    cmd = (launcher or [sys.executable]) + [str(REPO / script)] + [str(a) for a in args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_fusion_trains_exports_and_votes_in_an_eval_ensemble(tiny_synthetic, members, tmp_path):
    out = tmp_path / "fusion"
    trained = run_script("train.py", fusion_overrides(tiny_synthetic, members, out, tmp_path) + ["train.epochs=3"])
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "fusion member" in trained.stdout and "PCA to 8" in trained.stdout
    assert "exported model's validation: rank1=" in trained.stdout
    loss = [json.loads(line)["loss"] for line in (out / "loss.jsonl").read_text().splitlines()]
    assert all(np.isfinite(loss))
    config = json.loads((out / "export" / "config.json").read_text())
    assert config["architecture"] == "fusion"
    assert [m["checksum"] for m in config["model_args"]["members"]] == [model_checksum(m) for m in members]

    cached = set((tmp_path / "embeddings").rglob("*.npy"))
    eval_out = tmp_path / "eval"
    evaluated = run_script("eval.py", [
        "data.format=animalclef2025", f"data.root={tiny_synthetic}", f"data.cache_dir={tmp_path / 'images'}",
        "data.num_workers=0", f"embed_cache={tmp_path / 'embeddings'}", f"models=[{members[0]},{out / 'export'}]",
        f"output_dir={eval_out}", "rerank.matcher=none", "threshold.min_queries=40", "report=false"])
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    # The members' features were read from the entries training wrote: nothing new was extracted.
    assert set((tmp_path / "embeddings").rglob("*.npy")) == cached
    manifest = json.loads((eval_out / "manifest.json").read_text())
    fused = next(m for m in manifest["models"] if m.get("architecture") == "fusion")
    assert [m["spec"] for m in fused["members"]] == members and fused["pair_head"]
    submission = pd.read_csv(eval_out / "submission.csv")
    checked = subprocess.run([sys.executable, str(REPO / "scripts" / "validate_submission.py"),
                              str(eval_out / "submission.csv"), "--format", "animalclef2025", "--root",
                              str(tiny_synthetic)], capture_output=True, text=True, cwd=REPO)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert len(submission) == (load_table(load_config(TrainConfig, None, [
        "data.format=animalclef2025", f"data.root={tiny_synthetic}"]).data)["split"] == "query").sum()


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_train_the_fusion_model_like_one_accumulating(tiny_synthetic, members, tmp_path):
    common = fusion_overrides(tiny_synthetic, members, tmp_path / "x", tmp_path)[1:] + [
        "train.max_steps=3", "val.enabled=false", "train.log_every=1", "train.warmup_steps=0", "train.batch_size=8",
        "model.args.dropout=0.0", "losses=[{name: arcface}]"]  # per-sample, unlike the global batch's pairs
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    two, one = tmp_path / "two", tmp_path / "one"
    result = run_script("train.py", [f"output_dir={two}"] + common, launcher=launcher, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_script("train.py", [f"output_dir={one}", "train.grad_accum=2"] + common, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    curves = [[json.loads(line)["loss"] for line in (run / "loss.jsonl").read_text().splitlines()] for run in (one, two)]
    assert len(curves[0]) == len(curves[1]) == 3  # within the first epoch: its last step may be a single micro-batch
    assert curves[0] == pytest.approx(curves[1], rel=1e-3), curves

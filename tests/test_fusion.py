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
from conftest import REPO, TINY_BACKBONE, script_env, tiny_train_overrides

from core.config import load_config
from core.errors import ConfigError, DataError
from core.schema import TrainConfig
from data.formats import load_table
from data.splits import identity_part
from engine.accel import eval_precision
from engine.scoring.cached_outputs import CachedRows, ImageViews
from engine.scoring.embed_cache import EmbeddingCache, image_list_fingerprint
from engine.scoring.member_features import Member, load_members, load_recorded_members, member_features
from engine.training.data import build_train_data, training_rows
from engine.training.member_data import (
    ROW,
    build_member_feature_data,
    evaluation_rows,
    fit_learned_whitening,
    fit_pca,
    shares_identities,
    warn_shared_identities,
)
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
    embedder = build_model({"name": "embedder", "args": {"backbone": TINY_BACKBONE, "embed_dim": 16}}, num_classes=0)
    features = build_model({"name": "features", "args": {"backbone": TINY_BACKBONE}}, num_classes=0)
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
    cfg = load_config(TrainConfig, None, [*fusion_overrides(tiny_synthetic, members, tmp_path / "run", tmp_path),
                                          "model.args.learned_whitening_dim=64"])
    data = build_member_feature_data(cfg)
    assert data.model_args["learned_whitening_dim"] == 16  # capped at the concatenation's size
    recorded, whitening = [], []

    class Recorder:
        has_whitening = True
        model_args = {**data.model_args, "learned_whitening_shrinkage": 0.2}

        def set_pca(self, transforms, fitted):
            recorded.extend(transforms)
            whitening.extend(fitted)
    data.setup_model(Recorder())

    rows = evaluation_rows(load_table(cfg.data))
    views = ImageViews(cfg.data, cfg.features.tta, 32)
    cache = EmbeddingCache(tmp_path / "embeddings")
    features = member_features(load_members(members, torch.device("cpu")), views,
                               CachedRows(rows, cache, image_list_fingerprint(rows)), None, eval_precision())
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
    # Recorded relative to the export that will name them (tests/test_trust.py moves one)
    export = tmp_path / "run" / "export"
    assert [os.path.normpath(export / m["spec"]) for m in data.model_args["members"]] == members
    assert data.model_args["pca_dims"] == [8, 8] and data.model_args["members"][1]["dim"] == 96  # test_resnet's pooled features
    reduced = np.concatenate([block[train_rows] @ a.T + b for block, (a, b) in zip(features, recorded, strict=True)], 1)
    expected = fit_learned_whitening(reduced, data.train_table["identity"].astype(str).to_numpy(), 16, 0.2)
    for fitted, wanted in zip(whitening, expected, strict=True):
        np.testing.assert_allclose(fitted, wanted, atol=1e-4)


def test_whitened_pca_gives_unit_variance_and_caps_its_size():
    features = np.random.default_rng(0).normal(size=(40, 12)).astype(np.float32) * np.arange(1, 13, dtype=np.float32)
    a, b = fit_pca(features, 64, whiten=True)
    assert a.shape == (12, 12)  # capped at the feature size
    np.testing.assert_allclose((features @ a.T + b).std(axis=0), 1.0, rtol=1e-3)
    np.testing.assert_allclose((features @ a.T + b).mean(axis=0), 0.0, atol=1e-4)
    assert fit_pca(features[:5], 64, whiten=False)[0].shape == (4, 12)  # at most N - 1 components


def identities_with_noisy_directions(rng, n_ids: int = 8, per_id: int = 12, dim: int = 10):
    """Identities told apart along the last dimensions only; photos of one identity vary most along the first."""
    centres = np.zeros((n_ids, dim))
    centres[:, dim // 2:] = rng.normal(size=(n_ids, dim - dim // 2))
    labels = np.repeat(np.arange(n_ids), per_id)
    noise = rng.normal(size=(len(labels), dim)) * np.r_[np.full(dim // 2, 3.0), np.full(dim - dim // 2, 0.3)]
    return centres[labels] + noise, labels


def nearest_neighbour_accuracy(x: np.ndarray, labels: np.ndarray) -> float:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    return float((labels[similarity.argmax(1)] == labels).mean())


def test_learned_whitening_whitens_the_within_identity_scatter_and_separates_identities():
    x, labels = identities_with_noisy_directions(np.random.default_rng(0))
    a, b = fit_learned_whitening(x, labels, dim=64, shrinkage=0.0)
    assert a.shape == (10, 10) and b.shape == (10,)  # capped at the feature size
    y = x @ a.T + b
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-5)
    within = sum((y[labels == k] - y[labels == k].mean(0)).T @ (y[labels == k] - y[labels == k].mean(0))
                 for k in np.unique(labels)) / len(y)
    np.testing.assert_allclose(within, np.eye(10), atol=1e-4)  # hand computation: A S_w A^T = I without shrinkage
    assert nearest_neighbour_accuracy(y, labels) > nearest_neighbour_accuracy(x, labels) + 0.2
    # Kept dimensions are the whitened features' principal axes, largest first.
    kept, _ = fit_learned_whitening(x, labels, dim=3, shrinkage=0.2)
    variances = np.var(x @ fit_learned_whitening(x, labels, dim=10, shrinkage=0.2)[0].T, axis=0)
    assert kept.shape == (3, 10) and np.all(np.diff(variances) <= 1e-6)
    np.testing.assert_allclose(np.var(x @ kept.T, axis=0), variances[:3], rtol=1e-4)


def test_a_fusion_of_fitted_maps_only_has_no_parameters_and_reloads_identically(tmp_path):
    x, labels = identities_with_noisy_directions(np.random.default_rng(1), dim=28)
    model = Fusion(0, members=[member_record(16, "m0"), member_record(12, "m1")], pca_dims=[8, 6],
                   learned_whitening_dim=5, hidden=0)
    assert not list(model.parameters()) and model.embed_dim == 5
    transforms = [fit_pca(x[:, :16], 8, False), fit_pca(x[:, 16:], 6, False)]
    with pytest.raises(ValueError, match="needs learned whitening"):
        model.set_pca(transforms)
    reduced = np.concatenate([x[:, :16] @ transforms[0][0].T + transforms[0][1],
                              x[:, 16:] @ transforms[1][0].T + transforms[1][1]], axis=1)
    whitening = fit_learned_whitening(reduced, labels, 5, 0.2)
    model.set_pca(transforms, whitening)
    model.eval()
    inputs = torch.from_numpy(x.astype(np.float32))
    with torch.no_grad():
        embedding = model(inputs)["embedding"]
    np.testing.assert_allclose(embedding.numpy(), reduced @ whitening[0].T + whitening[1], atol=1e-4)
    loaded, meta = load_export(save_export(model, tmp_path / "export"))
    assert meta["model_args"]["learned_whitening_dim"] == 5 and meta["model_args"]["hidden"] == 0
    with torch.no_grad():
        assert torch.equal(loaded(inputs)["embedding"], embedding)


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
    with pytest.raises(ConfigError, match="learned_whitening_dim must be 0"):
        tiny_fusion(learned_whitening_dim=-1)
    with pytest.raises(ConfigError, match="learned_whitening_shrinkage must be in"):
        tiny_fusion(learned_whitening_dim=4, learned_whitening_shrinkage=1.5)
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


def test_members_and_fusion_train_on_disjoint_identity_parts(tiny_synthetic, members, tmp_path, capsys):
    member_cfg = load_config(TrainConfig, None, [*tiny_train_overrides(tiny_synthetic, tmp_path / "m", tmp_path),
                                                 "data.format=animalclef2025", "data.identity_parts=2"])
    member_data = build_train_data(member_cfg)
    fusion_cfg = load_config(TrainConfig, None, [*fusion_overrides(tiny_synthetic, members, tmp_path / "f", tmp_path),
                                                 "data.identity_parts=2", "data.identity_part=1"])
    fusion_data = build_member_feature_data(fusion_cfg)
    member_ids, fusion_ids = set(member_data.train_table["identity"]), set(fusion_data.train_table["identity"])
    table = load_table(member_cfg.data)
    assert member_ids == set(training_rows(identity_part(table, 2, 0))["identity"])
    assert fusion_ids == set(training_rows(identity_part(table, 2, 1))["identity"])
    assert member_ids and fusion_ids and not member_ids & fusion_ids
    assert f"training on identity part 1 of 0..1: {len(fusion_ids)} identities" in capsys.readouterr().out

    # Only a member trained on the same data and an overlapping part is reported.
    def meta(**data) -> dict:
        return {"train_config": {"data": {"format": "animalclef2025", "root": str(tiny_synthetic), **data}}}
    assert not shares_identities(meta(identity_parts=2, identity_part=0), fusion_cfg)
    assert shares_identities(meta(identity_parts=2, identity_part=1), fusion_cfg)
    assert shares_identities(meta(), fusion_cfg)  # trained on every identity
    assert not shares_identities(meta(root=str(tmp_path)), fusion_cfg)  # other data
    assert not shares_identities({}, fusion_cfg)  # a pretrained model
    whole = load_config(TrainConfig, None, fusion_overrides(tiny_synthetic, members, tmp_path / "f", tmp_path))
    assert shares_identities(meta(identity_parts=2, identity_part=0), whole)
    warn_shared_identities([Member("runs/a/export", None, meta(), "0")], fusion_cfg, None)
    assert "warning: fusion member(s) runs/a/export trained on the identities this fusion trains on" in capsys.readouterr().out


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
                              str(tiny_synthetic)], capture_output=True, text=True, cwd=REPO, env=script_env())
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert len(submission) == (load_table(load_config(TrainConfig, None, [
        "data.format=animalclef2025", f"data.root={tiny_synthetic}"]).data)["split"] == "query").sum()


@pytest.mark.slow
def test_a_fusion_without_trainable_layers_takes_no_steps_and_exports(tiny_synthetic, members, tmp_path):
    out = tmp_path / "fitted"
    trained = run_script("train.py", fusion_overrides(tiny_synthetic, members, out, tmp_path) + [
        "model.args.learned_whitening_dim=6", "model.args.hidden=0", "model.args.pair_hidden=0",
        "losses=[{name: contrastive}]", "train.epochs=2"])
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "no training steps" in trained.stdout and "exported model's validation: rank1=" in trained.stdout
    model, meta = load_export(out / "export")
    assert meta["model_args"]["learned_whitening_dim"] == 6 and model.embed_dim == 6
    assert torch.count_nonzero(model.whitening_A) > 0  # fitted, not the zeros it was built with


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

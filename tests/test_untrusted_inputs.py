"""Inputs a person did not mean the way a parser reads them: overrides kept as typed, non-finite
numbers, photos reidzoo cannot decode, spreadsheet formulas in names, a rank whose cache read missed."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import accelerate.utils
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, tiny_train_overrides
from PIL import Image
from safetensors.torch import load_file, save_file
from test_detector_annotations import hand_made_items

from core.array_cache import ArrayCache
from core.config import load_config
from core.csv_cells import plain_cell, plain_cells, safe_cell, safe_cells
from core.errors import ConfigError, DataError, UserError
from core.schema import ComponentConfig, DataConfig, EvalConfig, RerankConfig, TrainConfig
from data import readable
from data.dataset import ReIDDataset
from data.formats import load_table
from data.images import ImageLoader
from data.readable import decode_problem
from data.table import make_table
from data.transforms import build_tta_transform
from engine.accel import make_accelerator
from engine.detection.annotations import write_yolo_dataset
from engine.identify.predictions import write_predictions
from engine.matching.pairs import PairMatcher
from engine.outputs.submission import check_submission, read_submission, write_submission
from engine.scoring.cached_outputs import CachedModel, CachedRows, ImageViews, cached_outputs
from engine.scoring.embed_cache import EmbeddingCache
from engine.training.checkpoint import checkpoint_dirs
from engine.training.epochs import EpochLoop
from engine.training.loop import Trainer
from engine.training.validation import METRICS, improves, undefined_metrics, validate
from zoo import build_model, load_export, save_export

# --------------------------------------------------------------------------- overrides kept as typed


@pytest.mark.parametrize("text", ["2024_05", "0755", "12:30", "2024-05-01", "1e3", "0x10", "null", "yes"])
def test_string_keys_keep_the_override_as_typed(text):
    cfg = load_config(TrainConfig, None, [f"output_dir={text}", f"data.root={text}", f"data.cache_dir={text}"])
    assert (cfg.output_dir, cfg.data.root, cfg.data.cache_dir) == (text, text, text)
    cfg = load_config(EvalConfig, None, ["data.format=folders", f"data.query_root={text}", f"output_dir={text}"])
    assert (cfg.data.query_root, cfg.output_dir) == (text, text)


def test_list_items_and_recipe_files_read_those_forms_as_text_too(tmp_path):
    cfg = load_config(EvalConfig, None, ["models=[2024_05, 0755, '12:30']", "data.datasets=[2024_05]"])
    assert cfg.models == ["2024_05", "0755", "12:30"] and cfg.data.datasets == ["2024_05"]
    (tmp_path / "recipe.yaml").write_text("output_dir: 2024_05\ndata: {root: 12:30, cache_dir: 2024-05-01}\n")
    cfg = load_config(TrainConfig, tmp_path / "recipe.yaml")
    assert (cfg.output_dir, cfg.data.root, cfg.data.cache_dir) == ("2024_05", "12:30", "2024-05-01")


def test_a_quoted_override_is_unquoted_and_typed_keys_still_parse():
    cfg = load_config(TrainConfig, None, ["output_dir='my runs'", 'data.root="0755"', "train.epochs=0755",
                                          "train.max_steps=1_000", "train.lr=3e-4", "train.ema=true",
                                          "augment.scale=[0.5, 1]", "model.args.embed_dim=128"])
    assert cfg.output_dir == "my runs" and cfg.data.root == "0755"
    assert cfg.train.epochs == 755 and cfg.train.max_steps == 1000, "an integer key reads digits as decimal"
    assert cfg.train.lr == pytest.approx(3e-4) and cfg.train.ema is True and cfg.augment.scale == [0.5, 1.0]
    assert cfg.model.args["embed_dim"] == 128
    with pytest.raises(ConfigError, match="'train.lr' must be a number, got '12:30'"):
        load_config(TrainConfig, None, ["train.lr=12:30"])


# --------------------------------------------------------------------------- non-finite numbers

# A model small enough for a few steps in a test (as tests/test_train_crash.py's runs).
TINY = ["model.args.backbone=test_resnet", "data.image_size=32", "model.args.embed_dim=16",
        "train.deterministic=true", "train.mixed_precision=no"]


@pytest.fixture
def tiny_config(tiny_synthetic, tmp_path):
    def make(*overrides: str) -> TrainConfig:
        args = tiny_train_overrides(tiny_synthetic, tmp_path / "run", tmp_path / "cache") + TINY + list(overrides)
        return load_config(TrainConfig, REPO / "configs/train/default.yaml", args)

    return make


def nan_from_step(monkeypatch, first_bad_step: int) -> None:
    """The loss of every micro-batch of optimizer step `first_bad_step` and after is NaN."""
    original = Trainer._forward_loss

    def forward_loss(trainer, batch):
        loss, parts = original(trainer, batch)
        if trainer.state["step"] + 1 >= first_bad_step:
            return loss * float("nan"), {name: float("nan") for name in parts}
        return loss, parts

    monkeypatch.setattr(Trainer, "_forward_loss", forward_loss)


class TinyLoop(EpochLoop):
    """The shared epoch loop around one linear layer; `loss(step, layer)` is the loss of each step."""

    def __init__(self, out: Path, loss, clip_grad: float = 1.0):
        self.cfg = SimpleNamespace(train=SimpleNamespace(grad_accum=1, clip_grad=clip_grad, log_every=1))
        self.acc = make_accelerator("no")
        self.state = {"step": 0, "epoch": 0}
        self.trained_module = self.ema_source = torch.nn.Linear(2, 1)
        self.optimizer = torch.optim.SGD(self.trained_module.parameters(), lr=0.1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1.0)
        self.ema, self.writer, self.out, self._step_loss = None, None, out, 0.0
        self.loss, self.position = loss, 0

    def _forward_loss(self, batch):
        value = self.loss(self.state["step"] + 1, self.trained_module)
        return value, {"test": float(value.detach())}

    def _validate(self):
        return {}

    def _checkpoint(self):
        pass

    def steps(self, n: int) -> None:
        for _ in range(n):
            self._micro_step(None, self.position, 100)
            self.position += 1


def test_a_nan_loss_stops_before_its_optimizer_step_naming_the_step(tmp_path):
    loop = TinyLoop(tmp_path, lambda step, layer: layer(torch.ones(1, 2)).sum() * (math.nan if step >= 3 else 1.0))
    loop.steps(2)
    before = [p.detach().clone() for p in loop.trained_module.parameters()]
    with pytest.raises(UserError, match=r"the loss is nan \(test=nan\) at step 3 \(epoch 1, batch 3\): training "
                                        r"stopped before that step changed the weights; no checkpoint had been "
                                        r"written yet. To go on: lower train.lr"):
        loop.steps(1)
    assert loop.state["step"] == 2
    assert all(torch.equal(a, b) for a, b in zip(before, loop.trained_module.parameters(), strict=True))


def test_finite_loss_with_nan_gradients_stops_before_the_step_too(tmp_path):
    # d sqrt(x) / dx at 0 is infinite, times 0: a loss of 0 with NaN gradients.
    loop = TinyLoop(tmp_path, lambda step, layer: torch.sqrt(layer.weight.sum() * 0.0))
    before = loop.trained_module.weight.detach().clone()
    with pytest.raises(UserError, match=r"the gradients are nan at step 1 \(their norm; the loss was finite\)"):
        loop.steps(1)
    assert torch.equal(before, loop.trained_module.weight)


@pytest.mark.slow
def test_a_nan_loss_stops_training_at_its_step_and_keeps_the_last_checkpoint(tiny_config, monkeypatch):
    cfg = tiny_config("train.max_steps=6", "train.checkpoint_every=2", "val.enabled=false")
    nan_from_step(monkeypatch, 4)
    with pytest.raises(UserError, match=r"the loss is nan \(arcface=nan\) at step 4 \(epoch 1, batch 4\)") as stop:
        Trainer(cfg).fit()
    out = Path(cfg.output_dir)
    assert "step-000002" in str(stop.value) and "train.lr" in str(stop.value)
    assert [p.name for p in checkpoint_dirs(out / "checkpoints")] == ["step-000002"]
    weights = load_file(str(out / "checkpoints" / "step-000002" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert not (out / "export").exists(), "nothing exported from a diverged run"


@pytest.mark.slow
def test_non_finite_weights_are_never_written_to_a_checkpoint_or_an_export(tiny_config, monkeypatch, tmp_path):
    cfg = tiny_config("train.max_steps=3", "train.checkpoint_every=2", "val.enabled=false")
    trainer = Trainer(cfg)
    original = trainer.optimizer.step

    def poisoning_step(*args, **kwargs):  # a finite loss, weights that overflow anyway
        original(*args, **kwargs)
        if trainer.state["step"] + 1 == 2:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("inf"))

    monkeypatch.setattr(trainer.optimizer, "step", poisoning_step)
    with pytest.raises(UserError, match="after step 2 the model weights are not finite: 1 of .* weight tensors hold "
                                        "NaN or infinite values .*no checkpoint had been written yet"):
        trainer.fit()
    assert not checkpoint_dirs(Path(cfg.output_dir) / "checkpoints")
    with pytest.raises(UserError, match=r"refusing to export to .*export: 1 of \d+ weight tensors hold NaN"):
        save_export(trainer.model, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_nan_weights_in_an_export_are_refused_at_load(tmp_path):
    model = build_model(ComponentConfig("embedder", {"backbone": "test_resnet", "pretrained": False, "embed_dim": 8}),
                        num_classes=0)
    save_export(model, tmp_path / "export")
    weights = load_file(str(tmp_path / "export" / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, str(tmp_path / "export" / "model.safetensors"))
    with pytest.raises(DataError, match=f"model.safetensors cannot be used: 1 of .* hold NaN or infinite values \\({name}\\)"):
        load_export(tmp_path / "export")


def test_nan_validation_embeddings_give_nan_metrics_that_never_count_as_the_best(tiny_synthetic, capsys):
    table = pd.read_csv(tiny_synthetic / "metadata.csv").head(12)
    table = make_table([{"image_id": r.image_id, "identity": r.identity, "path": str(tiny_synthetic / r.path),
                         "split": "database" if i % 2 else "query", "dataset": "d"} for i, r in enumerate(table.itertuples())])
    dataset = ReIDDataset(table, ImageLoader(32, None), build_tta_transform(["identity"], 32, [0.5] * 3, [0.5] * 3))
    metrics, grid = validate(AlwaysNan(), dataset, table, make_accelerator("no"), batch_size=4)
    assert set(metrics) == set(METRICS) and all(math.isnan(v) for v in metrics.values()) and grid is None
    assert "12 of 12 validation embeddings are NaN or infinite" in capsys.readouterr().out
    assert undefined_metrics(metrics) == list(METRICS)
    assert not improves(math.nan, None) and not improves(math.nan, 0.5)
    assert improves(0.1, math.nan) and improves(0.1, None) and not improves(0.1, 0.2)


class AlwaysNan(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    def embed(self, images):
        return images.flatten(1)[:, :8] * self.scale * float("nan")


class FlatIsNan(torch.nn.Module):
    """Embeds an image by its first pixels; an image of one colour gives NaN (0 / 0), as a broken
    layer would for some inputs."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    def embed(self, images):
        flat = images[:, 0].flatten(1)
        spread = flat.std(dim=1, keepdim=True)
        return (flat[:, :8] - flat.mean(dim=1, keepdim=True)) * self.scale / torch.where(spread > 0, spread, 0.0)


def test_nan_embeddings_stop_evaluation_naming_the_images(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for name in ("a.png", "flat.png", "b.png", "flat2.png"):
        pixels = np.full((40, 40, 3), 90, np.uint8) if name.startswith("flat") else rng.integers(0, 255, (40, 40, 3), np.uint8)
        Image.fromarray(pixels).save(tmp_path / name)
        rows.append({"image_id": name, "identity": None, "path": str(tmp_path / name), "split": "query", "dataset": "d"})
    table = make_table(rows)
    views = ImageViews(DataConfig(cache_dir="none", num_workers=0), ["identity"], batch_size=2)
    with pytest.raises(DataError, match=r"model flat-is-nan gives NaN or infinite embedding values for 2 of 4 images "
                                        r"\(flat.png, flat2.png\)"):
        cached_outputs(CachedModel("flat-is-nan", {"input_size": 32}, "0" * 64, FlatIsNan), ["embedding"], views,
                       CachedRows(table, EmbeddingCache(None), "f" * 64), None)


# --------------------------------------------------------------------------- photos reidzoo cannot read


def photo(path: Path, shade: int, fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (shade, 30, 200)).save(path, format=fmt)
    return path


def truncated_jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header is whole: only a decode finds the cut
    return path


def odd_photos(tmp_path: Path) -> tuple:
    """A gallery of two identities and a query folder with good photos (a GIF PIL reads among them),
    a HEIC file PIL has no decoder for, a GIF that is not one and a truncated JPEG."""
    gallery, new = tmp_path / "Dogs", tmp_path / "new"
    photo(gallery / "Bo" / "b1.png", 1)
    photo(gallery / "Rex" / "r1.png", 2)
    photo(new / "good.png", 10)
    photo(new / "anim.gif", 11, "GIF")
    (new / "odd.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    (new / "odd.gif").write_bytes(b"GIF89a" + bytes(40))
    truncated_jpeg(new / "trip" / "cut.jpg")
    return gallery, new


def test_photos_that_cannot_be_read_are_named_together_before_extraction(tmp_path):
    gallery, new = odd_photos(tmp_path)
    with pytest.raises(DataError, match=r"3 photos under .*new cannot be read: ") as refused:
        load_table(DataConfig(format="folders", root=str(gallery), query_root=str(new)))
    message = str(refused.value)
    for name in ("odd.heic (this PIL has no decoder for .heic files)", "odd.gif (", "trip/cut.jpg (OSError: image file is truncated"):
        assert name in message
    assert "good.png" not in message and "anim.gif" not in message and "data.skip_unreadable=true" in message


def test_skip_unreadable_leaves_them_out_and_names_them_in_a_warning(tmp_path):
    gallery, new = odd_photos(tmp_path)
    with pytest.warns(UserWarning, match=r"leaving out 3 photos under .*new that cannot be read") as warned:
        df = load_table(DataConfig(format="folders", root=str(gallery), query_root=str(new), skip_unreadable=True))
    assert all(name in str(warned[0].message) for name in ("odd.heic", "odd.gif", "trip/cut.jpg"))
    assert sorted(df.loc[df["split"] == "query", "image_id"]) == ["anim.gif", "good.png"]


def test_a_folders_dataset_lists_them_too_and_each_photo_is_decoded_once(tmp_path, monkeypatch):
    root = tmp_path / "Dogs"
    for i in range(3):
        photo(root / "Bo" / f"b{i}.png", i)
    truncated_jpeg(root / "Rex" / "cut.jpg")
    (root / "Rex" / "r.heic").write_bytes(bytes(32))
    cfg = DataConfig(format="folders", root=str(root), cache_dir=str(tmp_path / "cache"))
    decoded = []

    def counting(path):
        decoded.append(Path(path).name)
        return decode_problem(path)

    monkeypatch.setattr(readable, "decode_problem", counting)
    with pytest.raises(DataError, match=r"2 photos under .*Dogs cannot be read: Rex/r.heic .*, Rex/cut.jpg "):
        load_table(cfg)
    assert sorted(decoded) == ["b0.png", "b1.png", "b2.png", "cut.jpg"]
    decoded.clear()
    with pytest.warns(UserWarning, match="leaving out 2 photos"):
        df = load_table(DataConfig(**{**cfg.__dict__, "skip_unreadable": True}))
    assert decoded == ["cut.jpg"], "the good photos' verdicts come from the cache; the broken one is checked again"
    assert sorted(df["image_id"]) == ["Bo/b0.png", "Bo/b1.png", "Bo/b2.png"]


# --------------------------------------------------------------------------- names that look like formulas


@pytest.mark.parametrize("text, written", [
    ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"), ("+1+1", "'+1+1"), ("-rex", "'-rex"),
    ("@SUM(A1)", "'@SUM(A1)"), ("\tcmd", "'\tcmd"), ("'=x", "''=x"),
    ("-1", "-1"), ("+0.5", "+0.5"), ("-2e-3", "-2e-3"), ("new_individual", "new_individual"),
    ("LynxID2025_lynx_37", "LynxID2025_lynx_37"), ("w_f48451c new_whale", "w_f48451c new_whale"), ("'abc", "'abc"), ("", ""),
])
def test_cells_a_spreadsheet_would_run_get_a_quote_that_reading_back_removes(text, written):
    assert safe_cell(text) == written and plain_cell(written) == text
    frame = pd.DataFrame({"identity": [text], "score": [-0.5]})
    assert safe_cells(frame)["identity"].tolist() == [written] and safe_cells(frame)["score"].tolist() == [-0.5]
    assert plain_cells(safe_cells(frame)).equals(frame)


def test_the_detector_split_file_quotes_identity_names_that_look_like_formulas(tmp_path):
    items = hand_made_items(tmp_path, ["=cmd|' /C calc'!A0", "=cmd|' /C calc'!A0", "-1", "@x", "b"])
    write_yolo_dataset(items, tmp_path / "out", val_fraction=0.4, seed=0)
    text = (tmp_path / "out" / "split.csv").read_text()
    assert "\n=" not in text and ",=" not in text and ",@" not in text
    split = pd.read_csv(tmp_path / "out" / "split.csv", dtype=str, keep_default_na=False)
    assert sorted(split["identity"]) == sorted(["'=cmd|' /C calc'!A0"] * 2 + ["-1", "'@x", "b"])
    assert sorted(plain_cells(split)["identity"]) == sorted(item.identity for item in items)


# --------------------------------------------------------------------------- a rank whose cache read missed


class CountingMatcher:
    """A matcher stand-in: pair (a, b) gets (a + b) % 5 tentative matches (too few for RANSAC)."""

    name = "counting"

    def match_settings(self):
        return {"name": self.name}

    def match_many(self, hub, others, flipped=False):
        out = []
        for other in others:
            first, second = (other, hub) if flipped else (hub, other)
            n = int(first["row"][0] + second["row"][0]) % 5
            out.append((np.stack([np.arange(n), np.arange(n)[::-1]], axis=1), np.ones(n, np.float32)))
        return out


class RowStore:
    matcher = CountingMatcher()

    def features(self, row):
        points = np.zeros((5, 2), np.float32)
        return {"row": np.array([row]), "keypoints": points, "descriptors": points, "image_size": np.array([9.0, 9.0])}

    def key(self, row):
        return f"row{row}"

    def prepare(self, rows, accelerator=None):
        pass


class SecondProcess:
    """Rank 1 of 2, as Accelerate shows it to that process."""

    process_index, num_processes, is_main_process = 1, 2, False

    def wait_for_everyone(self):
        pass


PAIRS = [(0, 1), (0, 2), (1, 3), (2, 3), (0, 4), (3, 4)]


def as_lists(records):
    return [(r.first.tolist(), r.second.tolist(), r.inlier.tolist()) for r in records]


@pytest.mark.parametrize("first_process_lacks", [[], [(0, 2), (3, 4)]])
def test_a_process_whose_cache_read_missed_gets_the_records_from_the_others(tmp_path, monkeypatch, first_process_lacks):
    cache = ArrayCache(tmp_path / "keypoints")
    q_rows, g_rows = np.array([a for a, _ in PAIRS]), np.array([b for _, b in PAIRS])
    reference = PairMatcher(RowStore(), RerankConfig(), cache, show_progress=False)
    want = as_lists(reference.records(q_rows, g_rows))  # matched once: every record is now on disk
    reference.stored.close()

    # The other process read every record but `first_process_lacks`; this one's read timed out.
    rank0 = PairMatcher(RowStore(), RerankConfig(), ArrayCache(None), show_progress=False)
    rank0_holds = {p: r for p, r in zip(PAIRS, reference.records(q_rows, g_rows), strict=True) if p not in first_process_lacks}
    nobody_has = sorted(first_process_lacks)
    rank0_matched = {p: rank0._match_hub(p[0], [p[1]], False)[p] for p in nobody_has[0::2]}
    sent = iter([[sorted(first_process_lacks)], [{**rank0_holds, **rank0_matched}]])
    monkeypatch.setattr(accelerate.utils, "gather_object", lambda mine: next(sent) + mine)
    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", lambda objects: [sorted(first_process_lacks)])

    engine = PairMatcher(RowStore(), RerankConfig(), cache, accelerator=SecondProcess(), show_progress=False)
    monkeypatch.setattr(engine.stored, "load_many", lambda keys: {})
    assert as_lists(engine.records(q_rows, g_rows)) == want
    assert engine.matched == len(nobody_has[1::2]), "only pairs no process held are matched, each by one process"


def formula_table() -> pd.DataFrame:
    rows = [{"image_id": f"db{i}", "identity": name, "path": f"/x/db{i}.jpg", "split": "database", "dataset": "d"}
            for i, name in enumerate(["=cmd|' /C calc'!A0", "-1", "@x", "+y", "rex"])]
    rows += [{"image_id": f"=q{i}", "identity": None, "path": f"/x/q{i}.jpg", "split": "query", "dataset": "d"}
             for i in range(3)]
    return make_table(rows)


@pytest.mark.parametrize("kind, predictions", [
    ("animalclef", ["=cmd|' /C calc'!A0", "-1", "@x"]),
    ("humpback", [["+y", "new_whale", "-1", "rex", "@x"]] * 3),
])
def test_submissions_quote_formula_names_and_still_validate(tmp_path, kind, predictions):
    path = write_submission(tmp_path / "submission.csv", kind, formula_table(), predictions)
    lines = path.read_text().splitlines()[1:]
    assert all(line.startswith("'=q") for line in lines), "image ids from file names are quoted too"
    assert all(cell[:1] not in "=+@" for line in lines for cell in line.split(","))
    check_submission(path, formula_table(), kind)  # what scripts/validate_submission.py runs
    assert read_submission(path).iloc[:, 1].tolist() == [" ".join(p) if isinstance(p, list) else p for p in predictions]


def test_predictions_csv_quotes_formula_names(tmp_path):
    query = formula_table().query("split == 'query'")
    ev = SimpleNamespace(decided=["=cmd|' /C calc'!A0", "new_individual", "-1"],
                         candidates=[[("=cmd|' /C calc'!A0", 0.9), ("@x", 0.1)], [("+y", 0.4)], [("-1", 0.8)]])
    path = write_predictions(tmp_path / "predictions.csv", DataConfig(format="folders", query_root="q"), query, ev)
    written = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert written["file"].tolist() == ["'=q0", "'=q1", "'=q2"]
    assert written["prediction"].tolist() == ["'=cmd|' /C calc'!A0", "new_individual", "-1"]
    assert written["top2_identity"].tolist() == ["'@x", "", ""] and written["top1_identity"][1] == "'+y"

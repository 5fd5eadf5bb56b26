"""Crop detectors: training through train.py, export and reload, two processes, cropping with a cache."""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO
from test_train import run_train

from core.config import load_config
from core.errors import ConfigError, DataError
from core.schema import CropConfig, DataConfig
from data.formats import load_table
from data.synthetic import generate
from detectors import build_detector, detector_checksum, load_detector, save_detector
from engine.crops import choose_box, crop_with_manifest
from engine.tables import dataset_table

TINY_RUN = ["imgsz=64", "train.batch_size=4", "train.max_minutes=0", "train.warmup_steps=0", "train.log_every=1",
            "data.num_workers=0", "val.max_images=8", "val.grid=2"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """12 individuals x 4 photos in scene mode: small animals, shared backgrounds, YOLO labels."""
    return generate(tmp_path_factory.mktemp("scenes") / "data", seed=2, individuals=12, images_per_individual=4,
                    scenes=True, progress=False)


def scene_args(root: Path, out: Path) -> list:
    return ["--config", str(REPO / "configs/train/detector_yolo.yaml"), f"output_dir={out}", f"data.root={root}",
            "data.synthetic.seed=2", "data.synthetic.individuals=12", "data.synthetic.images_per_individual=4",
            *TINY_RUN]


# ----------------------------------------------------------------------------- choosing the box
FOUND = np.array([[10, 10, 50, 50, 0.9],      # confident, off-centre
                  [80, 60, 120, 100, 0.6],    # central in a 200 x 160 image
                  [0, 0, 5, 5, 0.1]], np.float32)


def test_the_most_confident_box_is_chosen_by_default():
    choice = choose_box(FOUND, 200, 160, min_confidence=0.25, choose="confident")
    assert choice.box == [10, 10, 40, 40] and choice.confidence == pytest.approx(0.9) and choice.detections == 2


def test_central_chooses_the_box_nearest_the_centre():
    choice = choose_box(FOUND, 200, 160, min_confidence=0.25, choose="central")
    assert choice.box == [80, 60, 40, 40] and choice.confidence == pytest.approx(0.6)


def test_nothing_above_the_minimum_confidence_falls_back_to_the_full_frame():
    choice = choose_box(FOUND, 200, 160, min_confidence=0.95, choose="confident")
    assert choice.box is None and choice.detections == 0 and choice.confidence == pytest.approx(0.9)
    assert choose_box(np.zeros((0, 5), np.float32), 200, 160, min_confidence=0.25, choose="confident").box is None


def test_a_box_past_the_border_is_clipped_to_the_image():
    found = np.array([[-4, 150, 30, 170, 0.8]], np.float32)
    assert choose_box(found, 200, 160, min_confidence=0.25, choose="confident").box == [0, 150, 30, 10]


# ----------------------------------------------------------------------------- building detectors
def test_importing_ultralytics_leaves_the_process_as_it_was():
    import subprocess

    code = ("import cv2, torch; from PIL import Image; before = (Image.open, torch.save, cv2.getNumThreads()); "
            "import detectors.yolo; assert before == (Image.open, torch.save, cv2.getNumThreads()), 'patched'")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_unknown_hyperparameters_and_model_yamls_are_refused_with_a_suggestion():
    detector = build_detector("yolo", {"cfg": "yolov8n.yaml", "imgsz": 64})
    with pytest.raises(ConfigError, match="did you mean 'mosaic'"):
        detector.configure({"mosaik": 0.5})
    with pytest.raises(ConfigError, match="set by the training loop"):
        detector.configure({"lr0": 0.1})
    with pytest.raises(ConfigError, match="yolov8n.yaml, yolo11n.yaml"):
        build_detector("yolo", {"cfg": "yolov99z.yaml"})


def test_a_pickled_weights_file_is_never_read(tmp_path):
    marker = tmp_path / "ran"
    pickled = tmp_path / "yolo.pt"
    torch.save({"model": _Exploit(str(marker))}, pickled)
    with pytest.raises(ConfigError, match="not a .safetensors file"):
        build_detector("yolo", {"cfg": "yolov8n.yaml", "weights": str(pickled), "imgsz": 64})
    with pytest.raises(ConfigError, match="no argument 'trust_pickle'"):
        build_detector("yolo", {"cfg": "yolov8n.yaml", "weights": str(pickled), "trust_pickle": True, "imgsz": 64})
    assert not marker.exists()
    with pytest.raises(DataError, match="not found"):
        build_detector("yolo", {"cfg": "yolov8n.yaml", "weights": str(tmp_path / "absent.safetensors")})


class _Exploit:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path(self.path).write_text, ("unpickled",))


def test_safetensors_weights_load_into_a_new_detector(tmp_path):
    source = build_detector("yolo", {"cfg": "yolov8n.yaml", "imgsz": 64})
    save_detector(source, tmp_path / "export")
    rebuilt = build_detector("yolo", {"cfg": "yolov8n.yaml", "imgsz": 64,
                                      "weights": str(tmp_path / "export" / "model.safetensors")})
    assert detector_checksum(rebuilt) == detector_checksum(source)


def test_map_is_one_for_exact_boxes_and_counts_loose_ones_only_at_low_iou():
    from detectors.base import Detections
    from detectors.metrics import MeanAveragePrecision

    truth = np.array([[10, 10, 50, 50]], np.float32)
    exact = MeanAveragePrecision()
    exact.update(Detections(truth.copy(), np.array([0.9], np.float32)), truth, "a")
    # ultralytics' 101-point interpolated AP tops out at 0.995.
    assert exact.compute() == pytest.approx({"mAP50": 0.995, "mAP50-95": 0.995, "precision": 1.0, "recall": 1.0},
                                            abs=1e-3)
    loose = MeanAveragePrecision()  # IoU 0.575 with the true box: right at 0.5 and 0.55, wrong above
    loose.update(Detections(np.array([[10, 10, 50, 33]], np.float32), np.array([0.9], np.float32)), truth, "a")
    result = loose.compute()
    assert result["mAP50"] == pytest.approx(0.995, abs=1e-3) and result["mAP50-95"] == pytest.approx(0.199, abs=1e-3)
    missed = MeanAveragePrecision()
    missed.update(Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32)), truth, "a")
    assert missed.compute()["mAP50"] == 0.0


# ----------------------------------------------------------------------------- training through train.py
@pytest.mark.slow
def test_a_tiny_detector_trains_exports_and_reloads_with_identical_boxes(scenes, tmp_path):
    out = tmp_path / "run"
    result = run_train(scene_args(scenes, out) + ["train.max_steps=3"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mAP50=" in result.stdout
    losses = [json.loads(line)["loss"] for line in (out / "loss.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert list((out / "tensorboard").glob("events.*")) and (out / "yolo_data" / "data.yaml").is_file()
    # The scenes' YOLO labels carry no identities: the table's keep held-out animals out of training.
    split = pd.read_csv(out / "yolo_data" / "split.csv")
    assert split["identity"].notna().all()
    assert not set(split.loc[split.split == "train", "identity"]) & set(split.loc[split.split == "val", "identity"])

    detector, meta = load_detector(out / "export")
    assert meta["kind"] == "detector" and meta["imgsz"] == 64 and {"mAP50", "mAP50-95"} <= set(meta["metrics"])
    again, _ = load_detector(out / "export")
    images = [np.asarray(np.random.default_rng(i).integers(0, 255, (120, 160, 3)), np.uint8) for i in range(2)]
    first, second = detector.detect(images, conf=0.0), again.detect(images, conf=0.0)
    for a, b in zip(first, second):
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
        assert (a.boxes[:, 2] <= 160 + 1e-3).all() and (a.boxes[:, 3] <= 120 + 1e-3).all()  # in image pixels


@pytest.mark.slow
def test_a_resumed_detector_run_ends_with_the_weights_of_a_straight_one(scenes, tmp_path):
    common = ["train.max_steps=4", "train.checkpoint_every=2", "train.keep_last=3", "train.deterministic=true"]
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    assert run_train(scene_args(scenes, straight) + common).returncode == 0
    # The run as it stood at its step-2 checkpoint (everything later removed), then resumed.
    shutil.copytree(straight, cut)
    shutil.rmtree(cut / "checkpoints" / "step-000004")
    shutil.rmtree(cut / "export")
    resumed = run_train(scene_args(scenes, cut) + common + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr and "step 2" in resumed.stdout + resumed.stderr
    a, _ = load_detector(straight / "export")
    b, _ = load_detector(cut / "export")
    assert detector_checksum(a) == detector_checksum(b)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_train_one_detector_like_one_process_accumulating(scenes, tmp_path):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    common = ["train.max_steps=3", "train.mixed_precision=no"]
    two, one = tmp_path / "two", tmp_path / "one"
    result = run_train(scene_args(scenes, two) + common, launcher=launcher, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (two / "export" / "model.safetensors").is_file() and len(list(two.glob("**/config.json"))) == 1
    result = run_train(scene_args(scenes, one) + common + ["train.grad_accum=2"], env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    curves = [[json.loads(line)["loss"] for line in (run / "loss.jsonl").read_text().splitlines()] for run in (one, two)]
    assert len(curves[0]) == len(curves[1]) == 3
    assert curves[0] == pytest.approx(curves[1], rel=1e-3)


# ----------------------------------------------------------------------------- cropping a dataset
def test_cropping_writes_a_manifest_and_a_second_run_reads_the_cache(scenes, tmp_path, monkeypatch):
    detector = build_detector("yolo", {"cfg": "yolov8n.yaml", "imgsz": 64})
    save_detector(detector, tmp_path / "export")
    table = load_table(load_config(DataConfig, None, ["format=animalclef2025", f"root={scenes}"]))
    crop = CropConfig(detector=str(tmp_path / "export"), min_confidence=0.0, cache=str(tmp_path / "cache"))
    cropped, manifest = crop_with_manifest(table, crop, show=False)
    assert list(manifest["image_id"]) == list(table["image_id"]) and len(manifest) == len(table)
    assert not manifest["fallback"].any() and (manifest["w"] > 0).all()
    assert [list(b) for b in cropped["bbox"]] == manifest[["x", "y", "w", "h"]].values.tolist()

    loaded, _ = load_detector(tmp_path / "export")
    monkeypatch.setattr(type(loaded), "detect", lambda *a, **k: pytest.fail("detected again despite the cache"))
    strict = CropConfig(detector=crop.detector, min_confidence=1.0, cache=crop.cache)
    recropped, again = crop_with_manifest(table, strict, show=False, detector=loaded)
    assert again["fallback"].all()  # nothing is that confident: every image keeps its annotated box
    pd.testing.assert_series_equal(recropped["bbox"], table["bbox"])


def test_the_crop_script_writes_the_manifest_and_reads_the_cache_the_second_time(scenes, tmp_path, monkeypatch):
    from detectors.yolo import YoloDetector
    from scripts import crop

    save_detector(build_detector("yolo", {"cfg": "yolov8n.yaml", "imgsz": 64}), tmp_path / "export")
    args = ["--detector", str(tmp_path / "export"), "--format", "animalclef2025", "--root", str(scenes),
            "--cache", str(tmp_path / "cache"), "--min-confidence", "0"]
    first = crop.main(args + ["--out", str(tmp_path / "first.csv")])
    manifest = pd.read_csv(tmp_path / "first.csv")
    assert list(manifest.columns) == ["image_id", "path", "x", "y", "w", "h", "confidence", "fallback", "detections"]
    assert len(manifest) == first["images"] == 48 and first["fallback"] == 0
    monkeypatch.setattr(YoloDetector, "detect", lambda *a, **k: pytest.fail("detected again despite the cache"))
    crop.main(args + ["--out", str(tmp_path / "second.csv")])
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "second.csv"), manifest)


def test_data_crop_detector_sets_every_bbox_when_the_table_is_loaded(scenes, tmp_path):
    save_detector(build_detector("yolo", {"cfg": "yolov8n.yaml", "imgsz": 64}), tmp_path / "export")
    cfg = load_config(DataConfig, None, ["format=animalclef2025", f"root={scenes}", f"crop.detector={tmp_path / 'export'}",
                                         "crop.min_confidence=0.0", f"crop.cache={tmp_path / 'cache'}"])
    plain = load_table(load_config(DataConfig, None, ["format=animalclef2025", f"root={scenes}"]))
    cropped = dataset_table(cfg)
    assert len(cropped) == len(plain)
    assert any(list(a) != list(b) for a, b in zip(cropped["bbox"], plain["bbox"]))

"""Output folders: a command replaces or clears only what carries its own marker, never the working
or home folder nor a folder holding what it reads; train.py refuses an earlier run's folder without
--resume or --overwrite and locks its folder; a disk that refuses writes (read-only, full, no
permission) stops eval.py and train.py with one error line, before the long work where it can.

Tests run as root, where chmod does not stop writes: `refuse_writes` makes the disk refuse them."""
from __future__ import annotations

import builtins
import errno
import io
import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, TINY_BACKBONE, tiny_train_overrides
from PIL import Image
from safetensors import SafetensorError
from test_bad_inputs import assert_refused
from test_checkpoint import FILES, Run

import eval as eval_program
import train
from core.config import load_config
from core.errors import ConfigError, UserError
from core.folder_lock import folder_lock
from core.ownership import EVAL, REPRODUCE, TRAIN, check_output_folder, may_replace, run_marker
from core.schema import CropConfig, EvalConfig
from core.writable import OutputError, disk_errors
from detectors.base import Detections
from engine.crops import crop_with_manifest
from engine.identify import pipeline as identify_pipeline
from engine.outputs import writer as output_writer
from engine.outputs.artifacts import check_output_dir, eval_reads, staged_directory
from engine.reproduce.manifest import write_manifest
from engine.training import checkpoint
from engine.training.checkpoint import find_checkpoint
from engine.training.run_folder import LOCK_FILE, RUN_MARKER, claim_run_dir
from zoo import build_model, save_export

TINY = ["model.args.backbone=test_resnet", "data.image_size=32", "model.args.embed_dim=16",
        "train.mixed_precision=no", "train.max_steps=2", "val.enabled=false"]
FULL_DISK = "Error while serializing: I/O error: No space left on device (os error 28)"  # what safetensors raises


def tree(folder: Path) -> dict:
    """Every file under `folder` and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def refuse_writes(monkeypatch):
    """refuse(folder, code): from now on, creating or writing anything under `folder` fails with
    OSError(code), as a read-only (EROFS), full (ENOSPC) or forbidden (EACCES) disk does."""
    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir
    refused = {}

    def check(path) -> None:
        if isinstance(path, int):
            return
        real = os.path.realpath(os.fsdecode(path))
        for folder, code in refused.items():
            if real == folder or real.startswith(folder + os.sep):
                raise OSError(code, os.strerror(code), os.fsdecode(path))

    def fake_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+"):
            check(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            check(path)
        return real_os_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        check(path)
        return real_mkdir(path, *args, **kwargs)

    for module, name, fake in ((builtins, "open", fake_open), (io, "open", fake_open), (os, "open", fake_os_open),
                               (os, "mkdir", fake_mkdir)):
        monkeypatch.setattr(module, name, fake)

    def refuse(folder: Path, code: int) -> None:
        refused[os.path.realpath(folder)] = code

    return refuse


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> Path:
    """An untrained embedder export: eval.py runs it end to end in seconds."""
    model = build_model({"name": "embedder", "args": {"backbone": TINY_BACKBONE, "embed_dim": 16}}, num_classes=0)
    model.input_size = 32
    return save_export(model, tmp_path_factory.mktemp("model") / "export")


def eval_args(root: Path, export: Path, out, cache: Path) -> list:
    return ["data.format=animalclef2025", f"data.root={root}", f"data.cache_dir={cache / 'images'}",
            "data.num_workers=0", f"embed_cache={cache / 'embeddings'}", f"models=[{export}]", f"output_dir={out}",
            "rerank.matcher=none", "report=false", "tta=[identity]"]


def eval_output(folder: Path, tool: str = EVAL) -> Path:
    """A folder as eval.py (or another tool) leaves it, with a file to lose."""
    (folder / "stage" / "export").mkdir(parents=True)
    (folder / "stage" / "export" / "precious").write_text("weeks of training")
    (folder / "manifest.json").write_text(json.dumps({**run_marker(tool), "data": {}}))
    return folder


# ----------------------------------------------------------------------------- finding 4: eval.py's folder


def test_eval_refuses_a_reproduce_or_train_folder_and_deletes_nothing(tmp_path):
    reproduce_out = tmp_path / "reproduce"
    reproduce_out.mkdir()
    (reproduce_out / "stage" / "export").mkdir(parents=True)
    (reproduce_out / "stage" / "export" / "precious").write_text("weeks of training")
    write_manifest(reproduce_out, {**run_marker(REPRODUCE), "stages": []})
    run_dir = tmp_path / "run"
    claim_run_dir(run_dir, fresh=True)
    (run_dir / "checkpoints").mkdir()
    (run_dir / "manifest.json").write_text(json.dumps(run_marker(EVAL)))  # train's marker is there too
    for folder, owner in ((reproduce_out, "its manifest.json was written by reidzoo reproduce"),
                          (run_dir, "it holds reidzoo-run.json of reidzoo train")):
        before = tree(folder)
        with pytest.raises(ConfigError, match=f"is not a reidzoo eval output folder .{owner}"):
            check_output_dir(folder)
        with pytest.raises(ConfigError, match="is not a reidzoo eval output folder"):
            with staged_directory(folder) as staging:
                (staging / "submission.csv").write_text("image_id,identity\n")
        assert tree(folder) == before


def test_eval_replaces_its_own_earlier_output_or_an_empty_folder(tmp_path):
    own = eval_output(tmp_path / "own")
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "manifest.json").write_text(json.dumps({"tool": "reidzoo eval (task=cluster)"}))  # an older eval.py
    (tmp_path / "empty").mkdir()
    for folder in (own, legacy, tmp_path / "empty"):
        assert may_replace(folder, EVAL)
        with staged_directory(folder) as staging:
            (staging / "submission.csv").write_text("image_id,identity\n")
        assert sorted(p.name for p in folder.iterdir()) == ["submission.csv"]
    assert not may_replace(eval_output(tmp_path / "theirs", REPRODUCE), EVAL)


@pytest.mark.parametrize("out", [".", ""])
def test_eval_into_the_working_folder_is_refused_and_nothing_deleted(tiny_synthetic, tiny_export, tmp_path,
                                                                     monkeypatch, run_here, out):
    here = eval_output(tmp_path / "work")
    (here / "keep").mkdir()
    (here / "keep" / "precious").write_text("mine")
    before = tree(here)
    monkeypatch.chdir(here)
    result = run_here(eval_program, eval_args(tiny_synthetic, tiny_export, out, tmp_path / "cache"), tmp_path / "cache")
    assert_refused(result, "is the working folder", only_line=False)
    assert tree(here) == before


def test_the_home_folder_the_root_and_folders_above_what_a_run_reads_are_refused(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "projects").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    for folder, message in ((home, "is your home folder"), (home.parent, "contains your home folder"),
                            (Path("/"), "is the filesystem root"), (Path(".."), "contains the working folder")):
        with pytest.raises(ConfigError, match=message):
            check_output_folder(folder)
    data, photos, model = tmp_path / "data", tmp_path / "new" / "photos", tmp_path / "runs" / "a" / "export"
    for folder in (data, photos, model):
        folder.mkdir(parents=True)
    cfg = load_config(EvalConfig, None, ["data.format=folders", f"data.root={data}", f"data.query_root={photos}",
                                         f"models=[{model}]"])
    for folder, message in ((data, "is data.root"), (tmp_path / "new", "contains data.query_root"),
                            (tmp_path / "runs", f"contains model {model}")):
        with pytest.raises(ConfigError, match=message):
            check_output_dir(folder, eval_reads(cfg))
    check_output_dir(tmp_path / "runs" / "a" / "eval", eval_reads(cfg))  # beside the model: fine


def test_reproduce_does_not_overwrite_a_manifest_it_did_not_write(tmp_path):
    from engine.reproduce.pipeline import reproduce

    out = eval_output(tmp_path / "out")
    before = tree(out)
    with pytest.raises(ConfigError, match="holds a manifest.json that reidzoo reproduce did not write"):
        reproduce(REPO / "recipes" / "does-not-matter", out=out)
    assert tree(out) == before


# ----------------------------------------------------------------------------- finding 5: train.py's folder


@pytest.fixture
def finished_run(tmp_path) -> Path:
    """A run folder as a finished train.py run leaves it: marker, checkpoints, best/, loss log."""
    out = tmp_path / "run"
    claim_run_dir(out, fresh=True)
    run = Run()
    checkpoint.write_best(out, run.module, step=1, metrics={"rank1": 0.5})
    run.save(out / "checkpoints", 1)
    (out / "loss.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    return out


def test_a_fresh_train_in_an_earlier_runs_folder_is_refused_and_deletes_nothing(finished_run, tiny_synthetic,
                                                                                tmp_path, run_here):
    before = tree(finished_run)
    args = tiny_train_overrides(tiny_synthetic, finished_run, tmp_path / "cache") + TINY
    result = run_here(train, args, tmp_path / "cache")
    assert_refused(result, "holds an earlier run's checkpoints, best, loss.jsonl: continue it with --resume, "
                           "start afresh there with --overwrite")
    assert tree(finished_run) == before
    assert_refused(run_here(train, args + ["--resume", "--overwrite"], tmp_path / "cache"), "give one of them")


def test_a_held_lock_refuses_a_second_run(tiny_synthetic, tmp_path, run_here):
    out = tmp_path / "run"
    args = tiny_train_overrides(tiny_synthetic, out, tmp_path / "cache") + TINY
    with folder_lock(out, LOCK_FILE, what="train.py run"):
        held = json.loads((out / LOCK_FILE).read_text())
        result = run_here(train, args, tmp_path / "cache")
    assert_refused(result, f"is in use by another train.py run (process {held['pid']} on {held['host']}")
    assert not out.exists()  # the lock's folder is gone with the lock: nothing else was written


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_message(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_FILE).write_text(json.dumps({"pid": 4242, "host": "elsewhere", "started": "2024-05-01T10:00:00"}))
    said = []
    with folder_lock(out, LOCK_FILE, what="train.py run", say=said.append):
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
        with pytest.raises(UserError, match=f"in use by another train.py run .process {os.getpid()}"):
            with folder_lock(out, LOCK_FILE, what="train.py run"):
                pass
    assert said == [f"{out}: taking over the lock of process 4242 on elsewhere, started 2024-05-01T10:00:00, "
                    "which is no longer running"]
    assert not (out / LOCK_FILE).exists() and out.is_dir()


HOLDER_KILLED_WITH_A_CHILD_LEFT = """
import os, sys, time
from core.folder_lock import folder_lock
with folder_lock(sys.argv[1], "the.lock", what="train.py run"):
    child = os.fork()
    if child == 0:
        quiet = os.open(os.devnull, os.O_WRONLY)
        os.dup2(quiet, 1)
        os.dup2(quiet, 2)
        time.sleep(60)
        os._exit(0)
    print(child, flush=True)
    os._exit(0)  # ends the way SIGKILL would: the lock is never released by the holder
"""


def test_a_child_forked_by_the_holder_does_not_keep_the_lock(tmp_path):
    # A DataLoader worker outliving its killed train.py must not keep the run folder locked.
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", HOLDER_KILLED_WITH_A_CHILD_LEFT, str(out)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    child = int(result.stdout)
    try:
        os.kill(child, 0)  # the child still runs, with its copy of the lock file open
        with folder_lock(out, "the.lock", what="train.py run", say=lambda _: None):
            pass
    finally:
        os.kill(child, signal.SIGKILL)


def test_train_markers_name_the_tool_and_the_run(finished_run):
    marker = json.loads((finished_run / RUN_MARKER).read_text())
    assert marker["tool"] == TRAIN and len(marker["run"]["id"]) == 32
    assert not may_replace(finished_run, EVAL)


# ----------------------------------------------------------------------------- finding 8: disks that refuse writes


def test_eval_output_under_a_regular_file_is_one_line(tiny_synthetic, tiny_export, tmp_path, run_here):
    (tmp_path / "file").write_text("")
    result = run_here(eval_program, eval_args(tiny_synthetic, tiny_export, tmp_path / "file" / "out", tmp_path / "cache"),
                      tmp_path / "cache")
    assert_refused(result, f"{tmp_path / 'file'} is a file, not a folder", only_line=False)


@pytest.mark.parametrize("code, reason", [(errno.EROFS, "Read-only file system"), (errno.ENOSPC, "No space left"),
                                          (errno.EACCES, "Permission denied")])
def test_eval_into_a_folder_that_refuses_writes_stops_before_the_work(tiny_synthetic, tiny_export, tmp_path,
                                                                       run_here, refuse_writes, monkeypatch, code, reason):
    (tmp_path / "outputs").mkdir()
    refuse_writes(tmp_path / "outputs", code)
    monkeypatch.setattr(identify_pipeline, "load_identify_data", lambda cfg: pytest.fail("the work began"))
    result = run_here(eval_program, eval_args(tiny_synthetic, tiny_export, tmp_path / "outputs" / "eval",
                                              tmp_path / "cache"), tmp_path / "cache")
    assert_refused(result, f"output_dir {tmp_path / 'outputs' / 'eval'}: cannot write in {tmp_path / 'outputs'}: "
                           f"{reason}", only_line=False)
    assert list((tmp_path / "outputs").iterdir()) == []


def test_a_disk_that_fills_while_eval_writes_keeps_the_previous_output(tmp_path, refuse_writes):
    out = eval_output(tmp_path / "out")
    before = tree(out)
    with pytest.raises(OutputError, match=f"writing output_dir {out}: No space left on device"):
        with staged_directory(out) as staging:
            (staging / "submission.csv").write_text("image_id,identity\n")
            refuse_writes(tmp_path, errno.ENOSPC)
            pd.DataFrame({"a": [1]}).to_csv(staging / "predictions.csv")
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left


def test_train_into_a_read_only_folder_stops_before_the_work(tiny_synthetic, tmp_path, run_here, refuse_writes):
    (tmp_path / "runs").mkdir()
    refuse_writes(tmp_path / "runs", errno.EROFS)
    out = tmp_path / "runs" / "a"
    result = run_here(train, tiny_train_overrides(tiny_synthetic, out, tmp_path / "cache") + TINY, tmp_path / "cache")
    assert_refused(result, f"output_dir {out}: cannot write in {tmp_path / 'runs'}: Read-only file system")
    assert list((tmp_path / "runs").iterdir()) == []


@pytest.mark.parametrize("writer", ["safetensors", "torch.save"])
def test_a_full_disk_at_a_checkpoint_keeps_the_last_complete_one(tmp_path, monkeypatch, writer):
    run = Run()
    root = tmp_path / "run" / "checkpoints"
    first = run.save(root, 1)
    kept = tree(first)
    run.step()
    if writer == "safetensors":  # its Rust writer raises a SafetensorError naming the OS error
        def full(*args, **kwargs):
            raise SafetensorError(FULL_DISK)
        monkeypatch.setattr(checkpoint, "save_model", full)
    else:  # torch.save: the disk fills after its first kilobyte
        class Filling:
            def __init__(self, handle):
                self.handle, self.written = handle, 0

            def __getattr__(self, name):
                return getattr(self.handle, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.handle.close()

            def write(self, data):
                self.written += len(data)
                if self.written > 1024:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return self.handle.write(data)

        monkeypatch.setattr(checkpoint, "open", lambda path, mode: Filling(builtins.open(path, mode)), raising=False)
    with pytest.raises(OutputError, match=f"writing the run in {tmp_path / 'run'}: No space left on device; "
                                          "checkpoints already written are kept"):
        with disk_errors(f"writing the run in {tmp_path / 'run'}", "; checkpoints already written are kept",
                         within=tmp_path / "run"):
            run.save(root, 2)
    assert find_checkpoint(root.parent, "latest") == first and tree(first) == kept
    assert sorted(p.name for p in root.iterdir()) == ["step-000001"]  # the half-written step 2 is gone
    assert sorted(p.name for p in first.iterdir()) == sorted(FILES)


def test_an_error_about_a_file_elsewhere_is_not_blamed_on_the_output_folder(tmp_path):
    with pytest.raises(PermissionError):
        with disk_errors("writing the run", within=tmp_path / "run"):
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "data" / "photo.jpg"))


class StandInDetector:
    """What cropping reads of a detector: one box in the middle of every image."""

    name, imgsz = "stand-in", 32

    def __init__(self):
        self.module = torch.nn.Linear(1, 1)

    def rebuild_args(self):
        return {}

    def detect(self, images, conf):
        return [Detections(np.array([[4.0, 4.0, 20.0, 20.0]]), np.array([0.9])) for _ in images]


def test_a_read_only_detection_cache_warns_once_and_crops(tmp_path, refuse_writes):
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"{i}.jpg"))
        Image.new("RGB", (32, 32), (i * 40, 90, 200)).save(paths[-1])
    table = pd.DataFrame({"image_id": ["0", "1", "2"], "path": paths, "bbox": [None] * 3})
    (tmp_path / "cache").mkdir()
    refuse_writes(tmp_path / "cache", errno.EROFS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cropped, manifest = crop_with_manifest(table, CropConfig(detector="stand-in", cache=str(tmp_path / "cache")),
                                               show=False, detector=StandInDetector())
    said = [str(w.message) for w in caught if "cache" in str(w.message)]
    assert len(said) == 1 and said[0].startswith(f"detection cache {tmp_path / 'cache'} cannot be written "
                                                 "(Read-only file system"), said
    assert not manifest["fallback"].any() and list((tmp_path / "cache").iterdir()) == []


# ----------------------------------------------------------------------------- end to end (slow: real runs)


@pytest.mark.slow
def test_train_twice_into_one_folder_then_overwrite(tiny_synthetic, tmp_path, run_here):
    out = tmp_path / "run"
    args = tiny_train_overrides(tiny_synthetic, out, tmp_path / "cache") + TINY
    assert run_here(train, args, tmp_path / "cache").returncode == 0
    before = tree(out)
    assert_refused(run_here(train, args, tmp_path / "cache"), "holds an earlier run's checkpoints")
    assert tree(out) == before
    again = run_here(train, args + ["--overwrite"], tmp_path / "cache")
    assert again.returncode == 0 and "the previous run's checkpoints, loss.jsonl are removed" in again.stdout


@pytest.mark.slow
def test_a_disk_that_fills_at_a_checkpoint_ends_training_with_one_line(tiny_synthetic, tmp_path, run_here, monkeypatch):
    out = tmp_path / "run"
    real = checkpoint.save_model

    def fills_at_step_2(module, path, *args, **kwargs):
        if ".step-000002." in path:
            raise SafetensorError(FULL_DISK)
        return real(module, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_model", fills_at_step_2)
    args = tiny_train_overrides(tiny_synthetic, out, tmp_path / "cache") + TINY + ["train.checkpoint_every=1"]
    assert_refused(run_here(train, args, tmp_path / "cache"), f"writing the run in {out}: No space left on device",
                   only_line=False)
    assert find_checkpoint(out, "latest").name == "step-000001"
    assert not (out / LOCK_FILE).exists()


@pytest.mark.slow
def test_a_disk_that_fills_while_eval_writes_is_one_line(tiny_synthetic, tiny_export, tmp_path, run_here, monkeypatch,
                                                          refuse_writes):
    real = output_writer.write_submission

    def fills(path, *args, **kwargs):
        refuse_writes(tmp_path / "outputs", errno.ENOSPC)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(output_writer, "write_submission", fills)
    (tmp_path / "outputs").mkdir()
    result = run_here(eval_program, eval_args(tiny_synthetic, tiny_export, tmp_path / "outputs" / "eval",
                                              tmp_path / "cache"), tmp_path / "cache")
    assert_refused(result, "No space left on device", only_line=False)
    assert list((tmp_path / "outputs").iterdir()) == []

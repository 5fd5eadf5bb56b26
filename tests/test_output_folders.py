"""Output folders: a command replaces or clears only what carries its own marker, never the working
or home folder nor a folder holding what it reads; train.py refuses an earlier run's folder without
--resume or --overwrite and locks its folder."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import REPO, TINY_BACKBONE, tiny_train_overrides
from test_bad_inputs import assert_refused
from test_checkpoint import Run

import eval as eval_program
import train
from core.config import load_config
from core.errors import ConfigError, UserError
from core.folder_lock import folder_lock
from core.ownership import EVAL, REPRODUCE, TRAIN, check_output_folder, may_replace, run_marker
from core.schema import EvalConfig
from engine.evaluation.artifacts import check_output_dir, eval_reads, staged_directory
from engine.reproduce.manifest import write_manifest
from engine.training import checkpoint
from engine.training.run_folder import LOCK_FILE, RUN_MARKER, claim_run_dir
from zoo import build_model, save_export

TINY = ["model.args.backbone=test_resnet", "data.image_size=32", "model.args.embed_dim=16",
        "train.mixed_precision=no", "train.max_steps=2", "val.enabled=false"]

def tree(folder: Path) -> dict:
    """Every file under `folder` and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


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


def test_train_markers_name_the_tool_and_the_run(finished_run):
    marker = json.loads((finished_run / RUN_MARKER).read_text())
    assert marker["tool"] == TRAIN and len(marker["run"]["id"]) == 32
    assert not may_replace(finished_run, EVAL)


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

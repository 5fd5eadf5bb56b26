"""Output folders: a command replaces or clears only what carries its own marker, never the working
or home folder nor a folder holding what it reads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, TINY_BACKBONE
from test_bad_inputs import assert_refused

import eval as eval_program
from core.config import load_config
from core.errors import ConfigError
from core.ownership import EVAL, REPRODUCE, check_output_folder, may_replace, run_marker
from core.schema import EvalConfig
from engine.evaluation.artifacts import check_output_dir, eval_reads, staged_directory
from engine.reproduce.manifest import write_manifest
from engine.training.checkpoint import claim_run_dir
from zoo import build_model, save_export

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

"""Packaging: console scripts, the installed top-level names, the default recipes an installed copy
does without, and a user's module that would shadow one of ours."""
from __future__ import annotations

import shutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

import engine.components as components
from core.config import load_config, to_dict
from core.detector_schema import DetectorTrainConfig
from core.schema import EvalConfig, TrainConfig

# What a non-editable install puts into site-packages besides its metadata (docs/install.md says why).
TOP_LEVEL = {"core", "data", "detectors", "engine", "losses", "matchers", "zoo", "train.py", "eval.py", "review.py"}


@pytest.mark.parametrize("schema, recipe", [(TrainConfig, "configs/train/default.yaml"),
                                            (EvalConfig, "configs/eval/default.yaml"),
                                            (DetectorTrainConfig, "configs/train/detector_yolo.yaml")])
def test_default_recipes_restate_the_schema_so_an_installed_copy_needs_no_configs_folder(schema, recipe):
    assert to_dict(load_config(schema, REPO / recipe)) == to_dict(load_config(schema, None))


def test_console_scripts_are_installed_and_run(tmp_path):
    bin_dir = Path(sys.executable).parent
    for script in ("reidzoo-train", "reidzoo-eval", "reidzoo-zoo", "reidzoo-review"):
        assert (bin_dir / script).is_file(), f"{script} missing: pip install -e . installs it"
    shown = subprocess.run([str(bin_dir / "reidzoo-eval"), "--print-config", "tta=[identity]"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert shown.returncode == 0 and "- identity" in shown.stdout and not shown.stderr, shown.stderr
    listed = subprocess.run([str(bin_dir / "reidzoo-zoo"), "list", "--zoo", str(tmp_path / "zoo")],
                            capture_output=True, text=True)
    assert listed.returncode == 0 and "is empty" in listed.stdout, listed.stderr


def test_a_users_module_that_shadows_one_of_ours_is_named(monkeypatch, tmp_path):
    components.check_not_shadowed()
    theirs = types.ModuleType("data")
    theirs.__file__ = str(tmp_path / "project" / "data" / "__init__.py")
    monkeypatch.setitem(sys.modules, "data", theirs)
    with pytest.raises(ImportError, match=r"'data' is imported from .*project/data/__init__.py.*comes first on sys.path"):
        components.check_not_shadowed()


@pytest.mark.slow
def test_a_wheel_installs_only_the_documented_top_level_names(tmp_path):
    # Built from a copy: setuptools writes build/ and egg-info into the folder it builds.
    source = shutil.copytree(REPO, tmp_path / "source", ignore=shutil.ignore_patterns(
        ".git", ".venv", ".cache-ci", "runs", "build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("reidzoo-*.whl"))
    files = zipfile.ZipFile(wheel).namelist()
    names = {name.split("/")[0] for name in files}
    assert {n for n in names if not n.endswith(".dist-info")} == TOP_LEVEL
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info")) + "/entry_points.txt")
    assert b"reidzoo-train = train:console" in entry_points and b"reidzoo-review = review:console" in entry_points
    # the review page's own assets travel with the package: the server serves nothing from elsewhere
    assert {f"engine/review/static/{n}" for n in ("index.html", "review.js", "review.css")} <= set(files)

"""recipes/: every real recipe and its stage configs parse (they are not run: they need GPUs and
the competitions' data), each synthetic twin mirrors its recipe and reproduces from scratch, and
one twin reproduces twice with a byte-identical submission and weights."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from core.errors import ConfigError
from engine.reproduce.pipeline import reproduce
from engine.reproduce.recipe import check_twin, load_recipe
from engine.reproduce.runner import load_stage_config, plan_stages

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(path.parent for path in (REPO / "recipes").glob("*/*/recipe.yaml"))
IDS = [f"{path.parent.name}/{path.name}" for path in RECIPES]


def test_the_leaderboard_recipes_are_all_there():
    assert IDS == ["animalclef2025/arcface_dinov2", "animalclef2025/fusion", "animalclef2025/wildfusion",
                   "animalclef2026/megadescriptor_miewid", "humpback/siamese_classifiers", "kcc/fsim",
                   "wildlifereid10k/arcface"]


def _model_names(plans) -> list:
    """Backbones of train stages and models of eval stages that are names, not stage folders."""
    names = []
    for plan in plans:
        cfg = load_stage_config(plan.stage, plan.arguments)
        if plan.stage.script == "eval":
            names += [m for m in cfg.models if "/" not in m or m.startswith("hf-hub:")]
        elif cfg.task != "detector" and "backbone" in cfg.model.args:
            names.append(cfg.model.args["backbone"])
    return names


def _pretrained(plan) -> object:
    """model.args.pretrained of a re-identification train stage (False when it is not set)."""
    return load_stage_config(plan.stage, plan.arguments).model.args.get("pretrained", False)


@pytest.mark.parametrize("folder", RECIPES, ids=IDS)
@pytest.mark.parametrize("synthetic", [False, True], ids=["recipe", "twin"])
def test_recipe_and_its_stage_configs_parse(folder, synthetic, tmp_path):
    from zoo.backbones import check_backbone_name
    from zoo.loading import ZOO

    recipe = load_recipe(folder, synthetic=synthetic)
    if synthetic:
        check_twin(load_recipe(folder), recipe)
    assert recipe.description and recipe.expected.get("metric") and "value" in recipe.expected
    for deterministic in (False, True):  # every config loads with its overrides; no wall-clock budgets
        plans = plan_stages(recipe, tmp_path / "out", tmp_path / "data", deterministic=deterministic)
    assert [p.stage.script for p in plans][-1] == "eval"  # every recipe ends in a submission
    for name in _model_names(plans):
        if name.lower() not in ZOO:
            check_backbone_name(name)  # a timm architecture (or an hf-hub: name timm resolves itself)
    if synthetic:  # twins run offline: nothing pretrained, no model named that would need a download
        assert all(_pretrained(p) is False for p in plans if p.stage.script == "train"
                   and p.config.get("task") != "detector")
        assert not _model_names([p for p in plans if p.stage.script == "eval"])


def test_a_twin_with_other_stages_than_its_recipe_is_refused(tmp_path):
    import shutil

    folder = tmp_path / "kcc" / "fsim"
    shutil.copytree(REPO / "recipes" / "kcc" / "fsim", folder)
    shutil.copytree(REPO / "recipes" / "_synthetic", tmp_path / "_synthetic")
    (folder / "fsim.yaml").write_text("base: " + str(REPO / "configs" / "train" / "fsim.yaml") + "\n")
    (folder / "eval.yaml").write_text("base: " + str(REPO / "configs" / "eval" / "animalclef2025.yaml") + "\n")
    twin = folder / "synthetic.yaml"
    twin.write_text(twin.read_text().replace("name: fsim", "name: fsim2").replace("{stages.fsim}", "{stages.fsim2}"))
    with pytest.raises(ConfigError, match=r"must be the stages of recipe.yaml, in its order: \['fsim', 'submission'\]"):
        check_twin(load_recipe(folder), load_recipe(folder, synthetic=True))


def _tree_digest(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_humpback_twin_data_is_humpback_format_and_deterministic(tmp_path):
    import pandas as pd

    from data.formats import DATASETS
    from data.synthetic_humpback import UNKNOWN, generate_humpback

    first = generate_humpback(tmp_path / "a", seed=0, individuals=8, images_per_individual=3)
    second = generate_humpback(tmp_path / "b", seed=0, individuals=8, images_per_individual=3)
    assert _tree_digest(first) == _tree_digest(second)
    train = pd.read_csv(first / "train.csv")
    assert list(train.columns) == ["Image", "Id"] and (train["Id"] == UNKNOWN).any()
    table = DATASETS.get("humpback")(first, {})
    assert len(table) == 24 and table["bbox"].notna().all()  # every photo has its box from bboxes.csv
    query = table[table["split"] == "query"]
    assert len(query) == len(list((first / "test").iterdir())) > 0 and query["identity"].isna().all()
    database = table[table["split"] == "database"]
    assert database["identity"].isna().sum() == (train["Id"] == UNKNOWN).sum()  # new_whale names no whale


# The twin reproduced a second time to check byte-identity: the one with the most kinds of stage (a
# detector, crops by its export, classifiers, a Siamese embedder, the Humpback evaluation with SIFT).
# The other twins run once (a second run of each doubled the slow set's longest file); bitwise
# repeatable training and submissions are also checked by test_train.py, test_train_crash.py,
# test_detectors.py (resumes), test_rerank.py and test_clustering.py (one process against two).
TWICE = ["humpback/siamese_classifiers"]


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """reproduce(twin) from scratch in a folder of its own, once per (twin, run name) in the module: the
    byte-identity test compares a second run with the first run that the run-once test checked."""
    manifests = {}

    def run(folder: Path, name: str = "first") -> dict:
        if (folder, name) not in manifests:
            base = tmp_path_factory.mktemp(f"{folder.parent.name}-{folder.name}-{name}")
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("REIDZOO_CACHE", str(base / "cache"))  # nothing shared between runs
                manifests[folder, name] = reproduce(folder, out=base / "out", synthetic=True, deterministic=True,
                                                    echo=False, say=lambda _: None)
        return manifests[folder, name]

    return run


def _export_weights(manifest: dict) -> list:
    """The checksum of every train stage's weights (config.json records the run's own paths)."""
    return [stage["export"]["model.safetensors"] for stage in manifest["stages"] if stage["script"] == "train"]


@pytest.mark.slow
@pytest.mark.parametrize("folder", RECIPES, ids=IDS)
def test_the_twin_reproduces_from_scratch(folder, reproduced):
    manifest = reproduced(folder)
    assert all(stage["ran"] for stage in manifest["stages"])
    assert manifest["submission"] is not None and len(manifest["submission"]["sha256"]) == 64
    exports = [stage["export"] for stage in manifest["stages"] if stage["script"] == "train"]
    assert exports and all(exports)  # every train stage exported a model, its files checksummed


@pytest.mark.slow
@pytest.mark.parametrize("folder", [REPO / "recipes" / twin for twin in TWICE], ids=TWICE)
def test_the_twin_reproduces_twice_from_scratch_with_the_same_submission(folder, reproduced):
    first, second = reproduced(folder), reproduced(folder, "second")
    assert all(stage["ran"] for stage in second["stages"])
    assert first["submission"]["sha256"] == second["submission"]["sha256"]
    assert _export_weights(first) == _export_weights(second)  # a coarse submission could hide different weights

"""Files from other people run no code and are used as paths only once checked (issue 39): detector and
model exports, the zoo index, recipes' `base:` chains, fusion members; and commands replace or skip
only what they made themselves (the open-set protocol folder, reproduce's stage records)."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, TINY_BACKBONE
from test_reproduce import fakes, ran, write_recipe  # noqa: F401  (fakes is a fixture)

import train
from core.config import load_config
from core.errors import ConfigError, DataError, UserError
from core.schema import DataConfig, TrainConfig
from core.store import published_folder
from data import protocol
from data.formats import load_table
from detectors import build_detector, load_detector, save_detector
from engine.reproduce.pipeline import reproduce
from engine.scoring.cached_outputs import ImageViews
from engine.scoring.member_features import Member, load_recorded_members
from zoo import build_model, load_export, model_checksum, save_export
from zoo.__main__ import main as zoo_cli


class Exploit:
    """Unpickling it writes a file: whether anything unpickled it is then plain to see."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (Path(self.path).write_text, ("unpickled",))


def pickle_with_side_effect(folder: Path) -> tuple:
    """(a torch file that writes `marker` when unpickled, marker)."""
    marker = folder / "ran"
    pickled = folder / "weights.pt"
    torch.save({"state_dict": Exploit(marker)}, pickled)
    return pickled, marker


def one_error_line(result, *expected: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr[-2000:]
    for text in expected:
        assert text in result.stderr, result.stderr


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- detector exports


@pytest.fixture(scope="module")
def detector_export(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_detector(build_detector("yolo", {"cfg": "yolov8n.yaml", "imgsz": 64}),
                         tmp_path_factory.mktemp("detector") / "export")


def crafted(source: Path, folder: Path, edit) -> Path:
    """A copy of the export `source` whose config.json `edit` (config -> None) changed."""
    shutil.copytree(source, folder)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def code_writing(marker: Path) -> str:
    """Python that writes `marker` and gives a valid activation, so that a build that evaluates it succeeds."""
    return f"__import__('pathlib').Path({str(marker)!r}).write_text('ran') and nn.SiLU()"


def set_activation(code: str):
    def edit(config):
        config["detector_args"]["cfg"]["activation"] = code
    return edit


def detector_edits(marker: Path, pickled: Path) -> dict:
    """Ways a detector export could make reidzoo run code or read a file, each refused."""
    def trust_pickle(config):
        config["detector_args"].update(weights=str(pickled), trust_pickle=True)

    def layer_is_a_loader(config):  # ultralytics looks layer names up among its tasks module's names
        config["detector_args"]["cfg"]["backbone"][0] = [-1, 1, "torch_safe_load", [str(pickled)]]

    def cfg_is_a_file(config):
        config["detector_args"]["cfg"] = str(pickled)

    def argument_names_a_local(config):  # a string argument is read as a local name or a literal
        config["detector_args"]["cfg"]["backbone"][0][3][0] = "d"

    return {"activation": set_activation(code_writing(marker)),
            "trust_pickle": trust_pickle, "layer": layer_is_a_loader, "cfg_file": cfg_is_a_file,
            "local_name": argument_names_a_local}


@pytest.mark.parametrize("variant", ["activation", "trust_pickle", "layer", "cfg_file", "local_name"])
def test_a_crafted_detector_export_runs_nothing_and_is_refused(detector_export, tmp_path, variant):
    pickled, marker = pickle_with_side_effect(tmp_path)
    export = crafted(detector_export, tmp_path / "export", detector_edits(tmp_path / "ran", pickled)[variant])
    with pytest.raises(UserError, match="detector_args"):
        load_detector(export)
    assert not marker.exists()


def test_publishing_a_detector_export_whose_activation_is_code_exits_2(detector_export, tmp_path, run_here, monkeypatch):
    marker = tmp_path / "ran"
    export = crafted(detector_export, tmp_path / "export", set_activation(code_writing(marker)))
    monkeypatch.setenv("REIDZOO_ZOO", str(tmp_path / "zoo"))
    result = run_here(sys.modules["zoo.__main__"], ["publish", export, "--name", "det"], tmp_path / "cache")
    one_error_line(result, "activation must be one of nn.SiLU()")
    assert not marker.exists() and not (tmp_path / "zoo" / "zoo.json").exists()


def test_cropping_with_a_detector_export_that_names_a_pickle_exits_2(detector_export, tmp_path, run_here):
    pickled, marker = pickle_with_side_effect(tmp_path)
    export = crafted(detector_export, tmp_path / "export", detector_edits(marker, pickled)["trust_pickle"])
    photos = tmp_path / "photos" / "a"
    photos.mkdir(parents=True)
    cv2.imwrite(str(photos / "1.jpg"), np.zeros((32, 32, 3), np.uint8))
    result = run_here(script("crop"), ["--detector", export, "--root", photos.parent, "--out", tmp_path / "crops.csv",
                                       "--cache", "none"], tmp_path / "cache")
    one_error_line(result, "'weights' is not read from an export")
    assert not marker.exists() and not (tmp_path / "crops.csv").exists()


def test_a_published_detector_is_checked_again_when_loaded_by_name(detector_export, tmp_path, monkeypatch):
    """The zoo's sha256 only proves a file unchanged since someone published it, not that it is safe."""
    monkeypatch.setenv("REIDZOO_ZOO", str(tmp_path / "zoo"))
    zoo_cli(["publish", str(detector_export), "--name", "det"])
    folder = published_folder("det")
    marker = tmp_path / "ran"
    config = json.loads((folder / "config.json").read_text())
    set_activation(code_writing(marker))(config)
    (folder / "config.json").write_text(json.dumps(config))
    index = json.loads((tmp_path / "zoo" / "zoo.json").read_text())  # whoever edits the file can edit the index
    from core.files import file_sha256
    index["models"]["det"]["files"]["config.json"] = file_sha256(folder / "config.json")
    (tmp_path / "zoo" / "zoo.json").write_text(json.dumps(index))
    with pytest.raises(ConfigError, match="activation"):
        load_detector("det")
    assert not marker.exists()


def test_a_checked_activation_is_built_from_the_table(detector_export, tmp_path):
    export = crafted(detector_export, tmp_path / "export", set_activation("nn.ReLU()"))
    detector, _ = load_detector(export)
    activations = {type(m.act).__name__ for m in detector.module.modules() if hasattr(m, "act") and hasattr(m, "conv")}
    assert activations == {"ReLU"} and detector.rebuild_args()["cfg"]["activation"] == "nn.ReLU()"


# ----------------------------------------------------------------------------- model exports


@pytest.fixture(scope="module")
def model_export(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model({"name": "embedder", "args": {"backbone": TINY_BACKBONE, "embed_dim": 8}}, num_classes=0)
    model.input_size = 32
    return save_export(model, tmp_path_factory.mktemp("model") / "export")


def set_backbone_args(args: dict):
    def edit(config):
        config["model_args"]["trunk"]["backbone_args"] = args
    return edit


def test_publishing_a_model_export_whose_backbone_args_name_a_pickle_runs_nothing_and_exits_2(
        model_export, tmp_path, run_here, monkeypatch):
    pickled, marker = pickle_with_side_effect(tmp_path)
    export = crafted(model_export, tmp_path / "export", set_backbone_args({"checkpoint_path": str(pickled)}))
    monkeypatch.setenv("REIDZOO_ZOO", str(tmp_path / "zoo"))
    result = run_here(sys.modules["zoo.__main__"], ["publish", export, "--name", "m1"], tmp_path / "cache")
    one_error_line(result, "backbone_args.checkpoint_path is not passed to timm")
    assert not marker.exists() and not (tmp_path / "zoo" / "zoo.json").exists()


@pytest.mark.parametrize("edit, message", [
    (set_backbone_args({"pretrained_cfg_overlay": {"file": "/etc/passwd"}}), "pretrained_cfg_overlay is not passed"),
    (set_backbone_args({"cache_dir": "/tmp"}), "cache_dir is not passed"),
    (set_backbone_args({"act_layer": "../../gelu"}), "act_layer must be a number"),
    (set_backbone_args({"drop_path_rte": 0.1}), "did you mean 'drop_path_rate'"),
    (lambda config: config["model_args"]["trunk"].update(backbone="local-dir:/tmp/x"), "timm architecture name"),
    (lambda config: config.update(input_size="32"), "input_size must be an integer"),
])
def test_a_model_export_holds_only_architecture_settings(model_export, tmp_path, edit, message):
    export = crafted(model_export, tmp_path / "export", edit)
    with pytest.raises(UserError, match=message):
        load_export(export)


def test_allowed_backbone_args_still_build_and_reload(model_export, tmp_path):
    export = crafted(model_export, tmp_path / "export", set_backbone_args({"drop_path_rate": 0.1, "act_layer": "relu"}))
    model, meta = load_export(export)
    assert meta["model_args"]["trunk"]["backbone_args"] == {"drop_path_rate": 0.1, "act_layer": "relu"}
    with pytest.raises(ConfigError, match="checkpoint_path is not passed to timm"):
        build_model({"name": "embedder", "args": {"backbone": TINY_BACKBONE, "backbone_args": {"checkpoint_path": "x"}}},
                    num_classes=0)


# ----------------------------------------------------------------------------- the zoo index


@pytest.fixture
def zoo_with_m1(model_export, tmp_path, monkeypatch) -> Path:
    root = tmp_path / "zoo"
    monkeypatch.setenv("REIDZOO_ZOO", str(root))
    zoo_cli(["publish", str(model_export), "--name", "m1"])
    return root


def edit_index(root: Path, edit) -> str:
    index = json.loads((root / "zoo.json").read_text())
    edit(index["models"]["m1"])
    text = json.dumps(index)
    (root / "zoo.json").write_text(text)
    return text


@pytest.mark.parametrize("folder", ["../victim", "", "victim-absolute"])
def test_publish_force_never_removes_a_folder_the_index_names_outside_the_store(
        zoo_with_m1, model_export, tmp_path, run_here, folder):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep")
    text = edit_index(zoo_with_m1, lambda entry: entry.update(folder=str(victim) if folder == "victim-absolute" else folder))
    result = run_here(sys.modules["zoo.__main__"], ["publish", model_export, "--name", "m1", "--force"], tmp_path / "c")
    one_error_line(result, "entry 'm1' names the folder")
    assert (victim / "precious").read_text() == "keep"
    assert (zoo_with_m1 / "zoo.json").read_text() == text  # the zoo itself untouched too


def test_loading_never_reads_outside_the_store(zoo_with_m1, tmp_path):
    entry = json.loads((zoo_with_m1 / "zoo.json").read_text())["models"]["m1"]
    outside = tmp_path / "outside"
    shutil.copytree(zoo_with_m1 / entry["folder"], outside)  # every hash would match
    edit_index(zoo_with_m1, lambda e: e.update(folder="../outside"))
    with pytest.raises(DataError, match="not a version folder of this store"):
        published_folder("m1")
    edit_index(zoo_with_m1, lambda e: e.update(folder=entry["folder"],
                                               files={**entry["files"], "../../outside/config.json": "0" * 64}))
    with pytest.raises(DataError, match="lists the file '../../outside/config.json'"):
        published_folder("m1")


def test_a_hub_manifest_naming_files_outside_its_folder_is_refused_before_any_download(zoo_with_m1, monkeypatch):
    import huggingface_hub

    from zoo.huggingface import load_from_hub

    folder = published_folder("m1")
    manifest = json.loads((folder / "reidzoo.json").read_text())
    manifest["files"]["../../../.ssh/id_rsa"] = "0" * 64
    (folder / "reidzoo.json").write_text(json.dumps(manifest))
    downloads: list = []
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: str(folder / name))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name: str(folder / name))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, allow_patterns: downloads.append(allow_patterns))
    with pytest.raises(DataError, match="hf-hub:org/m1: its manifest lists the file '../../../.ssh/id_rsa'"):
        load_from_hub("org/m1")
    assert downloads == []


@pytest.mark.parametrize("edit, message", [
    (lambda entry: entry.pop("files"), "has no 'files'"),
    (lambda entry: entry.update(input_size="32"), "has input_size '32', which must be an integer"),
    (lambda entry: entry.update(name="m2"), "is named 'm2'"),
])
def test_a_malformed_index_entry_is_one_error_line(zoo_with_m1, tmp_path, run_here, edit, message):
    edit_index(zoo_with_m1, edit)
    one_error_line(run_here(sys.modules["zoo.__main__"], ["list"], tmp_path / "c"), f"entry 'm1' {message}")


def test_publish_force_leaves_a_listed_folder_it_did_not_write(zoo_with_m1, model_export, tmp_path):
    entry = json.loads((zoo_with_m1 / "zoo.json").read_text())["models"]["m1"]
    foreign = zoo_with_m1 / "m1@aaaaaaaaaaaa"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    edit_index(zoo_with_m1, lambda e: e.update(folder=foreign.name))
    zoo_cli(["publish", str(model_export), "--name", "m1", "--force"])
    assert (foreign / "notes.txt").read_text() == "mine"  # no reidzoo.json of its own: not the store's to remove
    assert (zoo_with_m1 / entry["folder"]).is_dir()


# ----------------------------------------------------------------------------- the open-set protocol folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("protocol") / "Animals"
    for identity in range(8):
        (root / f"id{identity}").mkdir(parents=True)
        for k in range(2):
            cv2.imwrite(str(root / f"id{identity}" / f"{k}.jpg"), np.full((8, 8, 3), identity * 20 + k, np.uint8))
    return root


def test_the_protocol_replaces_only_a_folder_it_made(photos, tmp_path):
    table = load_table(load_config(DataConfig, None, ["format=folders", f"root={photos}"]))
    dataset = tmp_path / "dataset"  # someone's own data laid out as train/metadata.csv
    (dataset / "train").mkdir(parents=True)
    (dataset / "train" / "metadata.csv").write_text("path,identity\nx.jpg,a\n")
    with pytest.raises(ConfigError, match="not a protocol folder this script made"):
        protocol.build_protocol(table, photos, dataset)
    assert (dataset / "train" / "metadata.csv").read_text() == "path,identity\nx.jpg,a\n"
    out = tmp_path / "proto"
    protocol.build_protocol(table, photos, out, seed=1)
    assert (out / protocol.MARKER).is_file()
    protocol.build_protocol(table, photos, out, seed=2)  # its own folder: replaced
    assert json.loads((out / protocol.PROTOCOL_FILE).read_text())["arguments"]["seed"] == 2


def test_a_protocol_part_is_a_root_another_protocol_can_split(photos, tmp_path):
    from PIL import Image

    table = load_table(load_config(DataConfig, None, ["format=folders", f"root={photos}"]))
    first = tmp_path / "first"
    protocol.build_protocol(table, photos, first, train_fraction=0.5)
    part = first / "train"  # its images/ links the photos' folder
    again = load_table(load_config(DataConfig, None, ["format=animalclef2025", f"root={part}"]))
    second = tmp_path / "second"
    protocol.build_protocol(again, part, second, train_fraction=0.5)
    rows = pd.read_csv(second / "train" / "metadata.csv")
    assert all(Image.open(second / "train" / path).size for path in rows["path"])
    with pytest.raises(DataError, match="lies outside the dataset root"):
        protocol.write_part(again.assign(path=[str(tmp_path / "elsewhere.jpg")] * len(again)), part, tmp_path / "x")


# ----------------------------------------------------------------------------- recipes


def test_a_base_loop_is_one_error_line(tmp_path, run_here):
    (tmp_path / "a.yaml").write_text("base: b.yaml\ntrain: {epochs: 1}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="base in a loop: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_config(TrainConfig, tmp_path / "a.yaml")
    one_error_line(run_here(train, ["--config", tmp_path / "a.yaml", "--print-config"], tmp_path / "c"), "in a loop")


# ----------------------------------------------------------------------------- reproduce


def test_reproduce_runs_a_stage_again_when_its_export_was_edited_or_deleted(tmp_path, tiny_synthetic, fakes):  # noqa: F811
    scripts, runs = fakes
    recipe = write_recipe(tmp_path / "r", "- {name: a, script: train, config: train.yaml}\n"
                                          "- {name: c, script: eval, config: eval.yaml, overrides: [\"models=[{stages.a}/export]\"]}\n")
    said: list = []

    def run():
        said.clear()
        return reproduce(recipe, out=tmp_path / "out", data_root=str(tiny_synthetic), scripts=scripts, echo=False,
                         say=said.append)

    run()
    run()
    assert ran(runs) == ["a", "c"]  # the second run skipped both
    config = tmp_path / "out" / "a" / "export" / "config.json"
    config.write_text(config.read_text() + " ")
    manifest = run()
    assert ran(runs) == ["a", "c", "a"]
    assert any("a: running" in line and "export/config.json edited" in line for line in said)
    assert manifest["stages"][0]["ran"] and config.read_text().endswith("]")  # made again by its stage
    shutil.rmtree(tmp_path / "out" / "a" / "export")
    run()
    assert ran(runs) == ["a", "c", "a", "a"] and any("export/config.json deleted" in line for line in said)
    (tmp_path / "out" / "c" / "submission.csv").write_text("image_id,identity\n")
    run()
    assert ran(runs)[-1] == "c" and any("submission.csv edited" in line for line in said)


# ----------------------------------------------------------------------------- fusion members


def test_fusion_members_are_found_from_any_working_folder(model_export, tmp_path, monkeypatch):
    tree = tmp_path / "runs"
    shutil.copytree(model_export, tree / "a" / "export")
    (tree / "fusion" / "export").mkdir(parents=True)
    model, meta = load_export(tree / "a" / "export")
    monkeypatch.chdir(tmp_path)
    member = Member("runs/a/export", model, meta, model_checksum(model))  # as a user names it, from the working folder
    record = member.record(8, ImageViews(DataConfig(), ["identity"], 8), Path("runs/fusion/export"))
    assert record["spec"] == os.path.join("..", "..", "a", "export")

    moved = tmp_path / "elsewhere" / "runs"
    shutil.move(tree, moved)
    monkeypatch.chdir(tmp_path / "elsewhere")
    loaded = load_recorded_members([record], str(moved / "fusion" / "export"), torch.device("cpu"))
    assert loaded[0].checksum == record["checksum"] and Path(loaded[0].spec) == (moved / "a" / "export").resolve()

"""Publishing exports to the zoo and loading them back by name, with every file's hash checked."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import TINY_BACKBONE

import core.store as store_module
import zoo
from core.errors import ConfigError, DataError
from zoo import build_model, model_checksum, save_export
from zoo import published as published_module
from zoo.__main__ import main as zoo_cli


@pytest.fixture
def export(tmp_path):
    torch.manual_seed(0)
    model = build_model({"name": "embedder", "args": {"backbone": TINY_BACKBONE, "embed_dim": 16}}, num_classes=0)
    model.input_size = 32
    return save_export(model, tmp_path / "export", train_config={"data": {"format": "synthetic", "root": ""},
                                                                  "losses": [{"name": "arcface"}]},
                       metrics={"rank1": 0.5})


@pytest.fixture
def root(tmp_path, monkeypatch):
    folder = tmp_path / "zoo"
    monkeypatch.setenv("REIDZOO_ZOO", str(folder))
    return folder


def test_publish_list_and_load_give_back_the_same_model(export, root, capsys):
    zoo_cli(["publish", str(export), "--name", "tiny-resnet", "--licence", "cc-by-4.0"])
    entry = zoo.list()[0]
    assert entry["name"] == "tiny-resnet" and entry["model_checksum"] == model_checksum(export)
    folder = root / entry["folder"]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors", "reidzoo.json"]
    assert set(entry["files"]) == {"README.md", "config.json", "model.safetensors"}
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlicense: cc-by-4.0\nlibrary_name: reidzoo") and 'zoo.load("tiny-resnet")' in card
    model = zoo.load("tiny-resnet")
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.embed(images), zoo.load(str(export)).embed(images))
    assert model_checksum(model) == model_checksum(export)
    zoo_cli(["list"])
    assert "tiny-resnet" in capsys.readouterr().out


def test_an_existing_name_needs_force_and_the_old_version_goes(export, root):
    first = zoo.publish(export, "tiny")
    with pytest.raises(ConfigError, match="--force"):
        zoo.publish(export, "tiny")
    torch.manual_seed(1)
    other = build_model({"name": "embedder", "args": {"backbone": TINY_BACKBONE, "embed_dim": 16}}, num_classes=0)
    second = zoo.publish(save_export(other, root.parent / "other"), "tiny", force=True)
    assert second["folder"] != first["folder"] and not (root / first["folder"]).exists()
    assert model_checksum(zoo.load("tiny")) == model_checksum(other)


@pytest.mark.parametrize("target", ["model.safetensors", "config.json"])
def test_a_changed_file_is_refused_naming_it(export, root, target):
    entry = zoo.publish(export, "tiny")
    path = root / entry["folder"] / target
    path.write_bytes(path.read_bytes() + b" ")
    with pytest.raises(DataError, match=rf"{target} has changed since it was published"):
        zoo.load("tiny")


def test_an_interrupted_publish_leaves_the_zoo_as_it_was(export, root, monkeypatch):
    zoo.publish(export, "tiny")
    before = json.loads((root / "zoo.json").read_text())
    torch.manual_seed(2)
    other = save_export(build_model({"name": "embedder", "args": {"backbone": TINY_BACKBONE, "embed_dim": 16}},
                                    num_classes=0), root.parent / "other")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("simulated crash")

    for step in ("copyfile", "atomic_write_text"):  # while copying files; after the folder, before the index
        target = shutil if step == "copyfile" else store_module
        with monkeypatch.context() as patch:
            patch.setattr(target, step, crash)
            with pytest.raises(KeyboardInterrupt):
                zoo.publish(other, "tiny", force=True)
        assert json.loads((root / "zoo.json").read_text()) == before
        assert model_checksum(zoo.load("tiny")) == model_checksum(export)


def test_names_and_unknown_models_get_clear_errors(export, root):
    with pytest.raises(ConfigError, match="lowercase"):
        zoo.publish(export, "Bad Name")
    zoo.publish(export, "tiny-resnet")
    with pytest.raises(DataError, match="did you mean 'tiny-resnet'"):
        published_module.load_published("tiny-resnt")


def test_eval_loads_zoo_names(export, root):
    from zoo.loading import load_for_eval

    zoo.publish(export, "tiny")
    model, meta, checksum = load_for_eval("tiny")
    assert checksum == model_checksum(export) and meta["zoo"]["name"] == "tiny"


def test_a_failed_push_to_the_hub_says_so_and_keeps_the_local_publish(export, root, monkeypatch, capsys):
    import huggingface_hub

    class Offline:
        def create_repo(self, *args, **kwargs):
            raise ConnectionError("simulated: no network")

    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    with pytest.raises(SystemExit):
        zoo_cli(["publish", str(export), "--name", "tiny", "--hf-repo", "org/tiny"])
    assert "could not push to the Hugging Face Hub repo org/tiny" in capsys.readouterr().err
    assert zoo.load("tiny") is not None


def test_a_reidzoo_model_on_the_hub_is_checked_and_loaded(export, root, monkeypatch):
    import huggingface_hub

    from zoo.huggingface import load_from_hub

    folder = root / zoo.publish(export, "tiny")["folder"]
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: str(folder / name))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name: str(folder / name))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, allow_patterns: str(folder))
    model, meta = load_from_hub("org/tiny")
    assert model_checksum(model) == model_checksum(export) and meta["zoo"]["name"] == "hf-hub:org/tiny"
    (folder / "config.json").write_text((folder / "config.json").read_text() + "\n")
    with pytest.raises(DataError, match="hf-hub:org/tiny: .*config.json has changed"):
        load_from_hub("org/tiny")


def test_a_fusion_model_publishes_with_its_members_and_loads_them_by_name(root, tmp_path):
    from engine.scoring.member_features import load_recorded_members
    from zoo.fusion import Fusion
    from zoo.huggingface import push

    torch.manual_seed(0)
    members = []
    for name, args in (("a", {"backbone": TINY_BACKBONE, "embed_dim": 16}), ("b", {"backbone": TINY_BACKBONE, "embed_dim": 12})):
        member = build_model({"name": "embedder", "args": args}, num_classes=0)
        member.input_size = 32
        export = save_export(member, tmp_path / name)
        members.append({"spec": str(export), "checksum": model_checksum(export), "dim": args["embed_dim"], "input_size": 32})
    fusion = Fusion(0, members=members, pca_dims=[8, 6], hidden=16, embed_dim=8)
    export = save_export(fusion, tmp_path / "fusion")
    zoo_cli(["publish", str(export), "--name", "tiny-fusion"])
    index = {entry["name"]: entry for entry in zoo.list()}
    assert set(index) == {"tiny-fusion", "tiny-fusion.member0", "tiny-fusion.member1"}
    assert index["tiny-fusion"]["model_checksum"] == model_checksum(export)
    published = json.loads((root / index["tiny-fusion"]["folder"] / "config.json").read_text())
    assert [m["spec"] for m in published["model_args"]["members"]] == ["tiny-fusion.member0", "tiny-fusion.member1"]
    elsewhere = zoo.publish(export, "other-fusion", root=tmp_path / "other-zoo")  # a zoo given by --zoo
    with pytest.raises(DataError, match="are on this machine only"):
        push(tmp_path / "other-zoo" / elsewhere["folder"], "org/other-fusion")
    # The members are found by their zoo names (the export folders may go) and pass the checksum check.
    shutil.rmtree(tmp_path / "a"), shutil.rmtree(tmp_path / "b")
    loaded = zoo.load("tiny-fusion")
    assert model_checksum(loaded) == model_checksum(fusion)
    found = load_recorded_members(loaded.members, "tiny-fusion", torch.device("cpu"))
    assert [m.checksum for m in found] == [m["checksum"] for m in members]
    with pytest.raises(DataError, match="members .*tiny-fusion.member0.* are on this machine only"):
        push(root / index["tiny-fusion"]["folder"], "org/tiny-fusion")  # refused before any network access


def test_a_detector_publishes_and_crops_by_its_zoo_name(root, tmp_path):
    from detectors import build_detector, detector_checksum, load_detector, save_detector

    detector = build_detector("yolo", {"cfg": "yolov8n.yaml", "imgsz": 64})
    export = save_detector(detector, tmp_path / "detector", metrics={"mAP50": 0.5})
    zoo_cli(["publish", str(export), "--name", "tiny-detector"])
    entry = zoo.list()[0]
    assert entry["kind"] == "detector" and entry["model_checksum"] == detector_checksum(detector)
    card = (root / entry["folder"] / "README.md").read_text()
    assert "pipeline_tag: object-detection" in card and "data.crop.detector=tiny-detector" in card
    assert detector_checksum(load_detector("tiny-detector")[0]) == detector_checksum(detector)
    with pytest.raises(ConfigError, match="crop detector"):
        zoo.load("tiny-detector")
    weights = root / entry["folder"] / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(DataError, match="model.safetensors has changed"):
        load_detector("tiny-detector")

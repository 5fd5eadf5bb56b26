"""Export folders: save -> rebuild from the folder alone -> identical embeddings; clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import timm.models
import torch
from conftest import IMAGE_MODELS, TINY_BACKBONE

from core.errors import ConfigError, DataError
from zoo import build_model, load_export, load_model, model_checksum, save_export
from zoo.export import unwrap_model

ARGS = {"backbone": "test_resnet", "pretrained": False}
LABELS = {"lynx_1": 0, "lynx_2": 1, "lynx_3": 2}


def images() -> torch.Tensor:
    return torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(0))


def trained(name: str, **args) -> torch.nn.Module:
    """A model whose BatchNorm statistics moved away from their initial values, like after training."""
    torch.manual_seed(0)
    model = build_model({"name": name, "args": {**ARGS, **args}}, num_classes=len(LABELS))
    model.train()
    with torch.no_grad():
        model(images() * 3 + 1)
    return model.eval()


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_export_rebuilds_identical_embeddings(tmp_path, name):
    model = trained(name, pool="gem", feature_layers=[2])
    with torch.no_grad():
        model.trunk.gem.p.fill_(2.5) if hasattr(model, "trunk") else model.embedder.trunk.gem.p.fill_(2.5)
        expected = model.embed(images())
        expected_out = model(images())
    save_export(model, tmp_path / "export", label_map=LABELS, train_config={"seed": 0}, metrics={"rank1": 0.5})

    rebuilt, meta = load_export(tmp_path / "export")
    assert not rebuilt.training
    with torch.no_grad():
        assert torch.equal(rebuilt.embed(images()), expected)
        out = rebuilt(images())
    assert set(out) == set(expected_out)
    if "logits" in out:
        assert torch.equal(out["logits"], expected_out["logits"])
    if name == "siamese":
        a, b = expected[:2], expected[1:]
        assert torch.equal(rebuilt.pair_probability(a, b), model.pair_probability(a, b))
    assert meta["architecture"] == name and meta["label_map"] == LABELS


def test_config_json_has_every_field(tmp_path):
    model = trained("embedder", embed_dim=32)
    model.input_size = 96  # what the trainer sets from data.image_size
    metrics = {"rank1": np.float32(0.75), "mAP": torch.tensor(0.5)}
    save_export(model, tmp_path / "export", label_map=LABELS, train_config={"train": {"lr": 0.001}}, metrics=metrics)
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["format_version"] == 1
    assert config["architecture"] == "embedder"
    assert config["model_args"]["trunk"]["backbone"] == "test_resnet" and config["model_args"]["embed_dim"] == 32
    assert config["embed_dim"] == 32 and config["num_classes"] == 3
    assert config["label_map"] == LABELS
    assert config["input_size"] == 96
    timm_config = timm.data.resolve_data_config({}, model=timm.create_model("test_resnet"))
    assert config["mean"] == pytest.approx(list(timm_config["mean"]))
    assert config["std"] == pytest.approx(list(timm_config["std"]))
    assert config["train_config"] == {"train": {"lr": 0.001}}
    assert config["metrics"] == {"rank1": 0.75, "mAP": 0.5}
    assert {"torch", "timm"} <= set(config["versions"])

    save_export(model, tmp_path / "export", extra={"input_size": 128, "note": "x"})
    rebuilt, meta = load_export(tmp_path / "export")
    assert rebuilt.input_size == 128 and meta["note"] == "x" and meta["label_map"] is None


def test_export_replaces_an_old_one_and_leaves_no_temporary_folders(tmp_path):
    first, second = trained("embedder", embed_dim=16), trained("classifier")
    save_export(first, tmp_path / "export")
    save_export(second, tmp_path / "export")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["config.json", "model.safetensors"]
    assert load_export(tmp_path / "export")[1]["architecture"] == "classifier"


def test_channels_last_and_wrapped_models_export(tmp_path):
    model = trained("embedder").to(memory_format=torch.channels_last)

    class Wrapper(torch.nn.Module):  # stands for DDP / EMA wrappers, which keep the model in `.module`
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert unwrap_model(Wrapper(model)) is model
    save_export(Wrapper(model), tmp_path / "export")
    rebuilt, _ = load_export(tmp_path / "export")
    with torch.no_grad():
        assert torch.allclose(rebuilt.embed(images()), model.embed(images()), atol=1e-6)
    with pytest.raises(TypeError, match="not a reidzoo model"):
        save_export(torch.nn.Linear(2, 2), tmp_path / "other")


def test_broken_exports_give_clear_errors(tmp_path):
    export = save_export(trained("embedder", embed_dim=16), tmp_path / "export")
    with pytest.raises(DataError, match="export folder not found"):
        load_export(tmp_path / "nowhere")

    config = json.loads((export / "config.json").read_text())
    (export / "config.json").write_text(json.dumps({**config, "architecture": "embeder"}))
    with pytest.raises(ConfigError, match="unknown model 'embeder'; did you mean 'embedder'"):
        load_export(export)

    (export / "config.json").write_text(json.dumps({**config, "model_args": {**config["model_args"], "embed_dim": 8}}))
    with pytest.raises(DataError, match="does not fit the architecture"):
        load_export(export)

    (export / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ConfigError, match="upgrade"):
        load_export(export)

    (export / "config.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_export(export)

    (export / "model.safetensors").unlink()
    with pytest.raises(DataError, match="model.safetensors missing"):
        load_export(export)


def test_load_model_and_checksum(tmp_path, monkeypatch):
    model = trained("classifier")
    export = save_export(model, tmp_path / "export", label_map=LABELS)
    loaded, meta = load_model(str(export))
    with torch.no_grad():
        assert torch.equal(loaded.embed(images()), model.embed(images()))
    assert meta["label_map"] == LABELS

    checksum = model_checksum(export)
    assert len(checksum) == 64 and checksum == model_checksum(export)
    with torch.no_grad():
        model.head.bias.add_(1.0)
    save_export(model, export, label_map=LABELS)
    assert model_checksum(export) != checksum

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a reidzoo export"):
        load_model(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="not a complete reidzoo export"):
        model_checksum(tmp_path / "empty")
    with pytest.raises(DataError, match="no export folder there"):
        load_model(str(tmp_path / "missing" / "export"))
    with pytest.raises(ConfigError, match="not an export folder.*'resnet18'"):
        load_model("resnet181")

    # An off-the-shelf timm backbone: its weights come from timm (served here from memory, no network).
    torch.manual_seed(3)
    weights = timm.create_model("test_resnet").state_dict()
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_hf", lambda *a, **k: dict(weights))
    backbone, meta = load_model("test_resnet")
    loaded_weights = backbone.trunk.body.state_dict()
    assert all(torch.equal(tensor, weights[key]) for key, tensor in loaded_weights.items())
    assert meta["architecture"] == "features" and meta["embed_dim"] == 96 and meta["input_size"] == 160
    assert meta["source"] == "test_resnet" and not backbone.training


def test_hub_backbone_is_recorded_as_its_architecture_and_rebuilt_offline(tmp_path, monkeypatch):
    """An `hf-hub:` model (MegaDescriptor-like) exports with its timm architecture: no hub needed to rebuild."""
    hub_cfg = dict(timm.models.get_pretrained_cfg("test_resnet").to_dict(), hf_hub_id="org/x", mean=(0.5,) * 3, std=(0.5,) * 3)
    torch.manual_seed(4)
    weights = timm.create_model("test_resnet").state_dict()
    monkeypatch.setattr(timm.models, "load_model_config_from_hf", lambda model_id: (hub_cfg, "test_resnet", {"drop_path_rate": 0.05}))
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_hf", lambda *a, **k: dict(weights))
    model, meta = load_model("hf-hub:org/x")
    assert meta["model_args"]["trunk"]["backbone"] == "test_resnet"
    assert meta["model_args"]["trunk"]["backbone_args"] == {"drop_path_rate": 0.05}
    assert meta["mean"] == [0.5] * 3 and meta["std"] == [0.5] * 3
    export = save_export(model, tmp_path / "export")

    def offline(*args, **kwargs):
        raise OSError("simulated: no network")

    monkeypatch.setattr(timm.models, "load_model_config_from_hf", offline)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_hf", offline)
    rebuilt, meta = load_export(export)
    assert rebuilt.mean == [0.5] * 3
    with torch.no_grad():
        assert torch.equal(rebuilt.embed(images()), model.embed(images()))


def test_an_export_never_replaces_someone_elses_folder(tmp_path):
    model = build_model({"name": "embedder", "args": {"backbone": TINY_BACKBONE, "embed_dim": 8}}, num_classes=0)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a reidzoo export"):
        save_export(model, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    save_export(model, tmp_path / "export")
    save_export(model, tmp_path / "export")  # an earlier export is replaced
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["config.json", "model.safetensors"]

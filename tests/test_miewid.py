"""MiewID built by zoo.miewid from a folder laid out as the Hub repo (config.json + model.safetensors
with MiewIdNet's key names), loaded through the same path as `hf-hub:conservationxlabs/miewid-msv3`
with the download replaced by that folder; embeddings equal to a hand-built MiewIdNet."""
from __future__ import annotations

import json

import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from torch import nn

import zoo.huggingface
from core.errors import ConfigError, DataError
from zoo import MODELS, load_export, load_model, save_export

BACKBONE = "test_efficientnet"


class ReferenceMiewIdNet(nn.Module):
    """MiewIdNet.extract_feat of wbia-plugin-miew-id, written out by hand: the same module names
    (backbone, pooling.p of shape [1], bn, final) and bn(GeM(forward_features)) as its output."""

    def __init__(self, n_classes: int = 5):
        super().__init__()
        self.backbone = timm.create_model(BACKBONE, pretrained=False)
        features = self.backbone.classifier.in_features
        self.backbone.classifier = nn.Identity()
        self.backbone.global_pool = nn.Identity()
        self.pooling = nn.Module()
        self.pooling.p = nn.Parameter(torch.ones(1) * 3)
        self.bn = nn.BatchNorm1d(features)
        self.final = nn.Linear(features, n_classes)  # the training head: not part of the embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.backbone.forward_features(x)
        p = self.pooling.p
        pooled = F.avg_pool2d(maps.clamp(min=1e-6).pow(p), (maps.size(-2), maps.size(-1))).pow(1.0 / p)
        return self.bn(pooled.view(x.shape[0], -1))


def _hub_folder(tmp_path, **config):
    """A folder as conservationxlabs/miewid-msv3 lays it out, with a tiny backbone; and its reference net."""
    torch.manual_seed(0)
    reference = ReferenceMiewIdNet()
    with torch.no_grad():  # trained-looking values, so a key mapped to the wrong place shows
        reference.pooling.p.fill_(2.5)
        reference.bn.running_mean.normal_()
        reference.bn.running_var.uniform_(0.5, 2.0)
        reference.bn.weight.normal_()
        reference.bn.bias.normal_()
    folder = tmp_path / "miewid-msv3"
    folder.mkdir()
    state = {key: value.contiguous() for key, value in reference.state_dict().items()}
    safetensors.torch.save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["MiewIdNet"], "auto_map": {"AutoModel": "modeling_miewid.MiewIdNet"},
        "model_name": BACKBONE, "n_classes": 5, "loss_module": "arcface_subcenter_dynamic", "use_fc": False,
        **config,
    }))
    return folder, reference.eval()


@pytest.mark.parametrize("spec", ["hf-hub:conservationxlabs/miewid-msv3", "miewid-msv3"])
def test_the_hub_name_builds_miewid_with_its_weights(spec, tmp_path, monkeypatch):
    folder, reference = _hub_folder(tmp_path)
    asked = []
    monkeypatch.setattr(zoo.huggingface, "miewid_snapshot", lambda repo: asked.append(repo) or folder)
    model, meta = load_model(spec)
    assert asked == ["conservationxlabs/miewid-msv3"]
    assert model.architecture == "miewid" and not model.training
    assert (meta["input_size"], meta["mean"], meta["std"]) == (440, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = reference(images)
        got = model(images)["embedding"]
    assert got.shape == expected.shape == (3, reference.bn.num_features) == (3, meta["embed_dim"])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    # ... and it exports and loads back like any reidzoo model
    export = save_export(model, tmp_path / "export")
    again, _ = load_export(export)
    with torch.no_grad():
        torch.testing.assert_close(again(images)["embedding"], got)


def test_miewid_trains_from_config_like_any_model():
    model = MODELS.build("miewid", {"backbone": BACKBONE}, num_classes=7).train()
    out = model(torch.randn(2, 3, 32, 32))
    assert out["embedding"].shape == (2, model.embed_dim) and model.model_args["trunk"]["pool"] == "gem"
    out["embedding"].sum().backward()
    assert model.trunk.gem.p.grad is not None  # the GeM exponent is learnt, as in MiewIdNet
    with pytest.raises(ConfigError, match="pools with GeM"):
        MODELS.build("miewid", {"backbone": BACKBONE, "pool": "avg"}, num_classes=0)


def test_a_folder_that_is_not_miewid_safetensors_is_refused(tmp_path, monkeypatch):
    folder, _ = _hub_folder(tmp_path, use_fc=True)
    monkeypatch.setattr(zoo.huggingface, "miewid_snapshot", lambda repo: folder)
    with pytest.raises(DataError, match="use_fc=True"):
        load_model("miewid-msv3")
    (folder / "config.json").write_text(json.dumps({"architectures": ["MiewIdNet"], "model_name": BACKBONE}))
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(DataError, match="never loaded"):
        load_model("miewid-msv3")


def test_offline_says_what_failed(monkeypatch):
    hub = zoo.huggingface._hub()
    monkeypatch.setattr(hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(zoo.huggingface, "_reachable", lambda hub: False)
    with pytest.raises(DataError, match=r"cannot download hf-hub:conservationxlabs/miewid-msv3 \(config.json, "
                                        r"model.safetensors\): the Hugging Face Hub cannot be reached"):
        load_model("hf-hub:conservationxlabs/miewid-msv3")

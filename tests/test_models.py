"""Zoo models: build from config, forward/backward, feature maps, freezing, weights loading, errors."""
from __future__ import annotations

import pytest
import safetensors.torch
import timm
import timm.models
import torch
import torch.nn.functional as F
from conftest import IMAGE_MODELS

from core.errors import ConfigError
from zoo import build_model
from zoo.pooling import GeM

SIZE = 64
BATCH = 4


def images(size: int = SIZE) -> torch.Tensor:
    return torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_every_model_trains_one_step(name):
    torch.manual_seed(0)
    model = build_model({"name": name, "args": {"backbone": "resnet18", "pretrained": False}}, num_classes=5)
    model.train()
    out = model(images())
    embedding = out["embedding"]
    assert embedding.shape == (BATCH, model.embed_dim)
    assert out["features"] == []
    loss = embedding.pow(2).mean()
    if "logits" in out:
        assert out["logits"].shape == (BATCH, 5)
        loss = loss + F.cross_entropy(out["logits"], torch.tensor([0, 1, 2, 3]))
    if hasattr(model, "pair_logits"):
        pair = model.pair_logits(embedding[:2], embedding[2:])
        assert pair.shape == (2,)
        loss = loss + F.binary_cross_entropy_with_logits(pair, torch.tensor([1.0, 0.0]))
    loss.backward()
    assert torch.isfinite(loss)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    model.eval()
    with torch.no_grad():
        unit = model.embed(images())
    assert torch.allclose(unit.norm(dim=1), torch.ones(BATCH), atol=1e-5)
    assert model.architecture == name and model.model_args["trunk"]["backbone"] == "resnet18"
    assert model.input_size == 224 and len(model.mean) == 3 and len(model.std) == 3


@pytest.mark.parametrize(
    "backbone, layers, size, expected",
    [
        ("resnet18", [2, 3], 64, [(128, 8, 8), (256, 4, 4)]),
        ("test_convnext", [1, -1], 64, [(32, 8, 8), (64, 2, 2)]),
        ("test_vit", [1, 3], 160, [(64, 10, 10), (64, 10, 10)]),
    ],
)
def test_feature_layers_return_intermediate_maps(backbone, layers, size, expected):
    model = build_model({"name": "embedder", "args": {"backbone": backbone, "feature_layers": layers}}, num_classes=0)
    out = model(images(size))
    assert [tuple(m.shape) for m in out["features"]] == [(BATCH, *shape) for shape in expected]
    sum(m.mean() for m in out["features"]).backward()
    assert model.trunk.body.get_parameter(next(n for n, _ in model.trunk.body.named_parameters())).grad is not None


def test_feature_layers_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="feature_layers \\[7\\] out of range.*0..4"):
        build_model({"name": "classifier", "args": {"backbone": "resnet18", "feature_layers": [7]}}, num_classes=3)


def test_freeze_stages_freezes_stem_and_first_stages():
    model = build_model({"name": "embedder", "args": {"backbone": "resnet18", "freeze_stages": 2}}, num_classes=0)
    body = model.trunk.body
    for prefix in ("conv1.", "bn1.", "layer1.", "layer2."):
        assert all(not p.requires_grad for n, p in body.named_parameters() if n.startswith(prefix)), prefix
    for prefix in ("layer3.", "layer4."):
        assert all(p.requires_grad for n, p in body.named_parameters() if n.startswith(prefix)), prefix
    assert all(p.requires_grad for p in model.neck.parameters())

    model.train()
    assert not body.bn1.training and not body.layer2[0].bn1.training and body.layer3[0].bn1.training
    frozen_stats = body.layer1[0].bn1.running_mean.clone()
    model(images())
    assert torch.equal(body.layer1[0].bn1.running_mean, frozen_stats)

    with pytest.raises(ConfigError, match="stem and 4 stages"):
        build_model({"name": "embedder", "args": {"backbone": "resnet18", "freeze_stages": 5}}, num_classes=0)


def test_gem_pooling_matches_its_formula_and_is_learnable():
    x = torch.rand(2, 3, 4, 5) + 0.1
    gem = GeM(p=3.0)
    assert torch.allclose(gem(x), x.pow(3).mean(dim=(2, 3)).pow(1 / 3))
    assert torch.allclose(GeM(p=1.0)(x), x.mean(dim=(2, 3)))
    model = build_model({"name": "embedder", "args": {"backbone": "resnet18", "pool": "gem"}}, num_classes=0)
    model(images())["embedding"].sum().backward()
    assert model.trunk.gem.p.grad is not None
    vit = build_model({"name": "features", "args": {"backbone": "test_vit", "pool": "gem"}}, num_classes=0)
    with pytest.raises(ConfigError, match="pool 'gem' needs"):
        vit(images(160))


def test_config_errors_suggest_close_names():
    with pytest.raises(ConfigError, match="unknown timm backbone 'resnet181'.*'resnet18'"):
        build_model({"name": "embedder", "args": {"backbone": "resnet181"}}, num_classes=0)
    with pytest.raises(ConfigError, match="did you mean 'embedder'"):
        build_model({"name": "embeder"}, num_classes=0)
    with pytest.raises(ConfigError, match="did you mean 'embed_dim'"):
        build_model({"name": "embedder", "args": {"embed_dimm": 128}}, num_classes=0)
    with pytest.raises(ConfigError, match="hf-hub:BVRA/x"):
        build_model({"name": "embedder", "args": {"backbone": "BVRA/x"}}, num_classes=0)
    with pytest.raises(ConfigError, match="does not accept|cannot build backbone"):
        build_model({"name": "embedder", "args": {"backbone": "resnet18", "img_size": 96}}, num_classes=0)
    with pytest.raises(ConfigError, match="at least one training identity"):
        build_model({"name": "classifier"}, num_classes=0)


def test_pretrained_local_file_loads_the_weights(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("resnet18", num_classes=10)  # its fc does not exist in the backbone: skipped
    safetensors.torch.save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    model = build_model(
        {"name": "embedder", "args": {"backbone": "resnet18", "pretrained": str(tmp_path / "w.safetensors")}}, num_classes=0
    )
    body = model.trunk.body
    assert torch.equal(body.conv1.weight, source.conv1.weight)
    assert torch.equal(body.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)
    assert body.weights_report["loaded"] == len(body.state_dict()) and body.weights_report["unexpected"] == 2

    # A torch checkpoint wrapped as {'state_dict': ...} with DDP prefixes, read with weights_only=True.
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "w.pth")
    model = build_model({"name": "classifier", "args": {"pretrained": str(tmp_path / "w.pth")}}, num_classes=3)
    assert torch.equal(model.trunk.body.conv1.weight, source.conv1.weight)

    safetensors.torch.save_file({"unrelated.weight": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ConfigError, match="none of the 1 tensors"):
        build_model({"name": "embedder", "args": {"pretrained": str(tmp_path / "other.safetensors")}}, num_classes=0)
    with pytest.raises(ConfigError, match="not found"):
        build_model({"name": "embedder", "args": {"pretrained": str(tmp_path / "absent.safetensors")}}, num_classes=0)


def test_pretrained_download_without_network_is_a_config_error(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("simulated: no network")

    # Every way timm fetches weights or hub configs; nothing here touches the network.
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_hf", offline)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_url", offline)
    monkeypatch.setattr(timm.models, "load_model_config_from_hf", offline)
    with pytest.raises(ConfigError, match="could not download pretrained weights for 'resnet18' .*pretrained=false"):
        build_model({"name": "embedder", "args": {"backbone": "resnet18", "pretrained": True}}, num_classes=0)
    with pytest.raises(ConfigError, match="could not download the config of 'hf-hub:BVRA/MegaDescriptor-L-384'"):
        build_model({"name": "features", "args": {"backbone": "hf-hub:BVRA/MegaDescriptor-L-384"}}, num_classes=0)


def test_channels_last_model_gives_the_same_embedding():
    model = build_model({"name": "embedder", "args": {"backbone": "resnet18"}}, num_classes=0).eval()
    with torch.no_grad():
        reference = model.embed(images())
        model = model.to(memory_format=torch.channels_last)
        fast = model.embed(images().contiguous(memory_format=torch.channels_last))
    assert torch.allclose(reference, fast, atol=1e-5)

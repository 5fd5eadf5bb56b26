"""The trunk block shared by every zoo model: flat or nested config, unknown keys, old exports."""
from __future__ import annotations

import json

import pytest
import torch

from core.errors import ConfigError
from zoo import MODELS, TrunkConfig, build_model, load_export, save_export
from zoo.embedder import Embedder
from zoo.siamese import Siamese

BACKBONE = {"backbone": "test_resnet", "pool": "gem"}
# model_args of a siamese export as the code before the trunk block wrote them (flat, every argument).
OLD_SIAMESE_ARGS = {
    "backbone": "test_resnet", "pretrained": False, "embed_dim": 8, "pool": "gem", "drop_rate": 0.0,
    "freeze_stages": 0, "feature_layers": None, "img_size": None, "input_size": None, "mean": None,
    "std": None, "backbone_args": {}, "pair_hidden": 16,
}


def images() -> torch.Tensor:
    return torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))


def test_flat_nested_and_keyword_construction_build_the_same_model():
    flat = build_model({"name": "embedder", "args": {**BACKBONE, "embed_dim": 8}}, num_classes=0)
    nested = build_model({"name": "embedder", "args": {"trunk": BACKBONE, "embed_dim": 8}}, num_classes=0)
    direct = Embedder(0, TrunkConfig(backbone="test_resnet", pool="gem"), embed_dim=8)
    assert flat.model_args == nested.model_args == direct.model_args
    assert flat.model_args["trunk"]["pool"] == "gem" and flat.model_args["embed_dim"] == 8
    assert set(flat.model_args["trunk"]) == {f for f in TrunkConfig.__dataclass_fields__}


def test_every_model_takes_the_block_and_only_its_own_arguments():
    own = {name: MODELS.get(name).own_args() for name in MODELS.names()}
    assert own == {"classifier": (), "embedder": ("embed_dim",), "features": (), "miewid": (), "siamese": ("embed_dim", "pair_hidden"),
                   # no trunk: it reads its members' embeddings
                   "fusion": ("members", "pca_dims", "whiten", "learned_whitening_dim", "learned_whitening_shrinkage",
                              "hidden", "embed_dim", "dropout", "classifier", "pair_hidden")}
    model = build_model({"name": "siamese", "args": {"trunk": {**BACKBONE, "drop_rate": 0.5}, "embed_dim": 8}},
                        num_classes=0)
    # The block reaches the embedder inside the Siamese model whole.
    assert model.embedder.dropout.p == 0.5 and model.embedder.trunk.gem is not None


@pytest.mark.parametrize(
    "args, message",
    [
        ({"bakbone": "test_resnet"}, "model 'embedder' has no argument 'bakbone'; did you mean 'backbone'"),
        ({"embed_dimm": 8}, "did you mean 'embed_dim'"),
        ({"trunk": {"pol": "gem"}}, "model 'embedder' trunk has no setting 'pol'; did you mean 'pool'"),
        ({"trunck": {"pool": "gem"}}, "did you mean 'trunk'"),
        ({"trunk": {"pool": "gem"}, "pool": "avg"}, "sets pool both flat and under trunk"),
        ({"trunk": "resnet18"}, "trunk must be a mapping"),
    ],
)
def test_unknown_or_doubled_keys_are_refused_with_a_suggestion(args, message):
    with pytest.raises(ConfigError, match=message):
        build_model({"name": "embedder", "args": args}, num_classes=0)


def test_the_pair_head_argument_is_refused_where_it_does_not_belong():
    with pytest.raises(ConfigError, match="model 'classifier' has no argument 'pair_hidden'"):
        build_model({"name": "classifier", "args": {"pair_hidden": 4}}, num_classes=3)


def test_an_export_with_flat_model_args_still_loads(tmp_path):
    torch.manual_seed(0)
    model = Siamese(0, TrunkConfig(backbone="test_resnet", pool="gem"), embed_dim=8, pair_hidden=16).eval()
    export = save_export(model, tmp_path / "export")
    config = json.loads((export / "config.json").read_text())
    assert config["model_args"] == {"trunk": model.model_args["trunk"], "embed_dim": 8, "pair_hidden": 16}
    (export / "config.json").write_text(json.dumps({**config, "model_args": OLD_SIAMESE_ARGS}))

    rebuilt, meta = load_export(export)
    assert meta["model_args"] == model.model_args, "flat arguments come back as the block"
    with torch.no_grad():
        assert torch.equal(rebuilt.embed(images()), model.embed(images()))
    # Old exports keep their weights' names: the module tree under the block is the one they were saved from.
    names = set(rebuilt.state_dict())
    assert {"embedder.trunk.gem.p", "embedder.neck.0.weight", "pair_head.0.weight", "pair_head.2.bias"} <= names

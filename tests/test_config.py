"""Config system and registry: typed overrides, unknown keys and names suggest the close match."""
from pathlib import Path

import pytest

from core.config import load_config, parse_override, save_config
from core.errors import ConfigError
from core.registry import Registry
from core.schema import EvalConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def test_overrides_are_typed_and_dotted():
    cfg = load_config(TrainConfig, None, ["train.lr=3e-4", "data.root=/x", "train.epochs=3", "data.crop_to_bbox=false"])
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.data.root == "/x" and cfg.train.epochs == 3 and cfg.data.crop_to_bbox is False


def test_override_into_component_args_and_lists():
    cfg = load_config(TrainConfig, None, ["model.args.backbone=resnet50", "losses=[{name: triplet, weight: 2}]"])
    assert cfg.model.args == {"backbone": "resnet50"}
    assert cfg.losses[0].name == "triplet" and cfg.losses[0].weight == 2.0
    assert load_config(EvalConfig, None, ["models=[a,b]"]).models == ["a", "b"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "did you mean 'train.lr'"),
        ("trian.epochs=1", "did you mean 'train'"),
        ("train.epochs=1.5", "'train.epochs' must be an integer"),
        ("train.lr=fast", "'train.lr' must be a number"),
        ("data.crop_to_bbox=3", "must be true or false"),
        ("losses=[{name: arcface, wieght: 2}]", "did you mean 'losses[0].weight'"),
        ("train.epochs", "must look like key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(TrainConfig, None, [override])


def test_yaml_file_base_and_roundtrip(tmp_path):
    (tmp_path / "base.yaml").write_text("train: {epochs: 7, lr: 0.01}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain: {lr: 0.02}\n")
    cfg = load_config(TrainConfig, tmp_path / "child.yaml")
    assert cfg.train.epochs == 7 and cfg.train.lr == 0.02
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(TrainConfig, tmp_path / "resolved.yaml") == cfg


def test_no_and_off_are_strings_not_booleans(tmp_path):
    # YAML 1.1 would read these as False: `train.mixed_precision=no` must stay the string "no".
    cfg = load_config(TrainConfig, None, ["train.mixed_precision=no", "data.crop_to_bbox=False"])
    assert cfg.train.mixed_precision == "no" and cfg.data.crop_to_bbox is False
    (tmp_path / "r.yaml").write_text("train: {mixed_precision: no, deterministic: true}\n")
    cfg = load_config(TrainConfig, tmp_path / "r.yaml")
    assert cfg.train.mixed_precision == "no" and cfg.train.deterministic is True
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(TrainConfig, tmp_path / "resolved.yaml") == cfg
    with pytest.raises(ConfigError, match="'val.enabled' must be true or false, got 'yes'"):
        load_config(TrainConfig, None, ["val.enabled=yes"])


def test_missing_or_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(TrainConfig, tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(TrainConfig, tmp_path / "bad.yaml")


def test_every_shipped_recipe_loads():
    recipes = sorted((ROOT / "configs" / "train").glob("*.yaml"))
    assert recipes, "no training recipes shipped"
    for recipe in recipes:
        load_config(TrainConfig, recipe)
    for recipe in sorted((ROOT / "configs" / "eval").glob("*.yaml")):
        load_config(EvalConfig, recipe)


def test_parse_override_values():
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a=") == ("a", "")
    assert parse_override("a=x=y") == ("a", "x=y")


def test_registry_suggests_names_and_arguments():
    reg = Registry("widget")

    @reg.register("round_widget")
    def round_widget(radius: float = 1.0, *, num_classes: int = 0):
        return radius * 2

    assert reg.build("round_widget", {"radius": 2.0}, num_classes=3) == 4.0
    with pytest.raises(ConfigError, match="did you mean 'round_widget'"):
        reg.build("round_widgt")
    with pytest.raises(ConfigError, match="did you mean 'radius'"):
        reg.build("round_widget", {"radiu": 1})
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("round_widget")(round_widget)


def test_every_recipe_builds_its_model_and_losses():
    import timm

    from losses import build_criterion
    from zoo import build_model

    for recipe in sorted((ROOT / "configs" / "train").glob("*.yaml")):
        cfg = load_config(TrainConfig, recipe, ["model.args.pretrained=false"])
        assert timm.is_model(cfg.model.args["backbone"]), recipe
        # A small backbone keeps the test fast; the recipe's own arguments are still checked.
        cfg.model.args["backbone"] = "resnet18"
        model = build_model(cfg.model, num_classes=5)
        build_criterion(cfg.losses, embed_dim=model.embed_dim, num_classes=5)


def test_recipe_args_replace_the_base_args(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {name: embedder, args: {embed_dim: 64}}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nmodel: {name: classifier, args: {backbone: resnet18}}\n")
    assert load_config(TrainConfig, tmp_path / "child.yaml").model.args == {"backbone": "resnet18"}

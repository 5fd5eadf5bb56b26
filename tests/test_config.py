"""Config system and registry: typed overrides, unknown keys and names suggest the close match."""
from pathlib import Path

import numpy as np
import pytest

from core import schema_rules
from core.config import _merge, load_config, load_yaml, parse_override, read_yaml, save_config, to_dict
from core.detector_schema import DetectorTrainConfig
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
    # A dotted override changes one argument of the default model and keeps the others.
    assert cfg.model.args == {"backbone": "resnet50", "pretrained": False, "embed_dim": 256}
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


DETECTOR_RECIPES = ("detector_yolo.yaml", "detector_yolo_gpu.yaml")


def schema_of(recipe: Path) -> type:
    """The config class train.py reads a recipe with (its `task`)."""
    return DetectorTrainConfig if read_yaml(recipe).get("task") == "detector" else TrainConfig


def test_every_shipped_recipe_loads():
    recipes = sorted((ROOT / "configs" / "train").glob("*.yaml"))
    assert recipes, "no training recipes shipped"
    assert {p.name for p in recipes if schema_of(p) is DetectorTrainConfig} == set(DETECTOR_RECIPES)
    for recipe in recipes:
        load_config(schema_of(recipe), recipe)
    for recipe in sorted((ROOT / "configs" / "eval").glob("*.yaml")):
        load_config(EvalConfig, recipe)


def test_default_recipes_are_the_schema_defaults():
    assert load_config(TrainConfig, ROOT / "configs" / "train" / "default.yaml") == TrainConfig()
    assert load_config(EvalConfig, ROOT / "configs" / "eval" / "default.yaml") == EvalConfig()
    assert load_config(DetectorTrainConfig, ROOT / "configs" / "train" / "detector_yolo.yaml") == DetectorTrainConfig()


def _leaves(tree: dict, prefix: str = "") -> dict:
    """Dotted key -> value; lists and the `model` block (a name and the args it takes) are single values."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "model":
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "configs" / "train").glob("*.yaml")
                                           if p.name not in ("default.yaml", "detector_yolo.yaml")))
def test_recipes_state_only_what_they_change(recipe):
    path = ROOT / "configs" / "train" / recipe
    own = load_yaml(path.read_text())  # the file alone, without what it builds on
    own.pop("task", None)  # train.py reads it to choose the schema
    base_name = own.pop("base", None)
    base = to_dict(schema_of(path)())
    if base_name:
        base = _merge(base, read_yaml(path.parent / base_name))
    base_leaves = _leaves(base)
    restated = [k for k, v in _leaves(own).items() if base_leaves.get(k) == v]
    assert not restated, f"{recipe} restates what it builds on: {restated}"


def test_gpu_recipe_states_its_own_choices():
    own = read_yaml(ROOT / "configs" / "train" / "arcface.yaml")
    for key in ("scale", "rotate", "blur", "gray"):
        assert key in own["augment"], key
    assert "base" not in own and own["sampler"]["name"] == "pk" and own["val"]["export"] == "best"
    cfg = load_config(TrainConfig, ROOT / "configs" / "train" / "arcface.yaml")
    assert cfg.augment.scale == [0.6, 1.0] and cfg.train.head_lr_mult == 10.0


@pytest.mark.parametrize(
    "cls, override, message",
    [
        (TrainConfig, "train.grad_accum=0", "'train.grad_accum' must be >= 1, got 0"),
        (TrainConfig, "val.every_epochs=0", "'val.every_epochs' must be >= 1, got 0"),
        (TrainConfig, "data.image_size=0", "'data.image_size' must be >= 1, got 0"),
        (TrainConfig, "train.mixed_precision=bf61", "must be one of auto, no, fp16, bf16, got 'bf61'; did you mean 'bf16'?"),
        (TrainConfig, "train.optimizer=adam", "'train.optimizer' must be one of adamw, sgd, got 'adam'; did you mean 'adamw'?"),
        (TrainConfig, "sampler.name=pkk", "did you mean 'pk'?"),
        (TrainConfig, "data.format=humpbak", "did you mean 'humpback'?"),
        (TrainConfig, "val.export=bset", "did you mean 'best'?"),
        (TrainConfig, "val.best_metric=rank-1", "did you mean 'rank1'?"),
        (TrainConfig, "val.fraction=1", "'val.fraction' must be in (0, 1), got 1.0"),
        (TrainConfig, "train.ema_decay=0", "'train.ema_decay' must be in (0, 1)"),
        (TrainConfig, "augment.hflip=1.5", "'augment.hflip' must be in [0, 1], got 1.5"),
        (TrainConfig, "data.mean=[0.5,0.5]", "'data.mean' must be a list of 3 numbers, got [0.5, 0.5]"),
        (TrainConfig, "data.std=[0.2,0,0.2]", "'data.std' must be a list of 3 positive numbers"),
        (TrainConfig, "augment.scale=[1,0.5]", "'augment.scale' must be [min, max] with 0 < min <= max <= 1"),
        (TrainConfig, "augment.ratio=[0.75]", "'augment.ratio' must be [min, max]"),
        (TrainConfig, "train.lr=0", "'train.lr' must be > 0, got 0.0"),
        (TrainConfig, "train.lr=.nan", "'train.lr' must be > 0, got nan"),
        (TrainConfig, "losses=[]", "'losses' must be a list of at least one loss"),
        (TrainConfig, "losses=[{name: arcface, weight: 0}]", "'losses[0].weight' must be > 0"),
        (TrainConfig, "sampler.name=pk", "'sampler.k' = 4 must divide 'train.batch_size' = 30"),
        (TrainConfig, "data.identity_part=1", "'data.identity_part' = 1 must be below 'data.identity_parts' = 1"),
        (TrainConfig, "data.identity_parts=0", "'data.identity_parts' must be >= 1, got 0"),
        (EvalConfig, "data.identity_parts=2", "'data.identity_parts' chooses the identities a model trains on"),
        (EvalConfig, "tta=[identity,hflp]", "'tta[1]' must be one of identity, hflip, fivecrop, got 'hflp'"),
        (EvalConfig, "tta=[]", "'tta' must list at least one value"),
        (EvalConfig, "calibration=isotnic", "did you mean 'isotonic'?"),
        (EvalConfig, "submission=kagle", "'submission' must be one of auto, animalclef, humpback"),
        (EvalConfig, "retrieval.index=hnws", "did you mean 'hnsw'?"),
        (EvalConfig, "retrieval.aggregation=mean", "'retrieval.aggregation' must be one of max, mean_top_m"),
        (EvalConfig, "threshold.holdout_fraction=0", "'threshold.holdout_fraction' must be in (0, 1)"),
        (EvalConfig, "weights=[1,2]", "'weights' has 2 values for 1 models"),
        (EvalConfig, "weights=[-1]", "'weights[0]' must be >= 0, got -1.0"),
        (EvalConfig, "models=[]", "'models' must be a list of at least one model"),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_is_valid(cls, override, message):
    extra = ["train.batch_size=30"] if "sampler.name=pk" in override else []
    with pytest.raises(ConfigError) as err:
        load_config(cls, None, [override, *extra])
    assert message in str(err.value)


def test_a_recipe_file_with_a_bad_value_names_the_key(tmp_path):
    (tmp_path / "r.yaml").write_text("train: {grad_accum: 0}\n")
    with pytest.raises(ConfigError, match=r"'train.grad_accum' must be >= 1, got 0"):
        load_config(TrainConfig, tmp_path / "r.yaml")


def test_the_names_the_schema_accepts_are_the_ones_the_code_knows():
    from accelerate.utils import PrecisionType

    from data.transforms import TTA_VIEWS
    from engine import retrieval
    from engine.outputs.submission import COLUMNS
    from engine.scoring.calibration import METHODS
    from engine.training.validation import open_set_metrics
    from matchers.geometry import GEOMETRIES

    for geometry in GEOMETRIES.names():  # read from the registry itself: no copy of the names to drift
        assert load_config(EvalConfig, None, [f"rerank.geometry={geometry}"]).rerank.geometry == geometry
    assert schema_rules.TTA_VIEWS == tuple(TTA_VIEWS)
    assert schema_rules.CALIBRATIONS == tuple(METHODS)
    assert schema_rules.SUBMISSIONS == ("auto", *COLUMNS)
    assert (schema_rules.INDEXES, schema_rules.AGGREGATIONS) == (retrieval.INDEXES, retrieval.AGGREGATIONS)
    assert set(schema_rules.MIXED_PRECISIONS) - {"auto"} <= set(PrecisionType.list())
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(6, 4)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = np.array(["a", "b", "c", "a", "b", "d"], dtype=object)
    metrics, _ = open_set_metrics(emb[:3], ids[:3], emb[3:], ids[3:])
    assert set(schema_rules.VALIDATION_METRICS) == set(metrics) - {"threshold"}


def test_parse_override_values():
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a=") == ("a", "")
    assert parse_override("a=x=y") == ("a", "x=y")


def test_registry_suggests_names_and_arguments():
    reg = Registry("widget")  # one registry per kind: this test runs once per session

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


def cfg_model_name(recipe: Path) -> str:
    return load_config(TrainConfig, recipe).model.name


def check_fusion_recipe(recipe: Path) -> None:
    """A fusion recipe's members resolve (stand-ins here: training extracts the real ones) and its
    model and losses build."""
    from engine.training.member_data import _resolve_args
    from losses import build_criterion
    from zoo import build_model

    cfg = load_config(TrainConfig, recipe)
    specs, pca_dim, own = _resolve_args(cfg)
    members = [{"spec": spec, "checksum": "0" * 64, "dim": 512, "input_size": 96} for spec in specs]
    model = build_model({"name": "fusion", "args": {**own, "members": members, "pca_dims": [pca_dim] * len(specs)}},
                        num_classes=5)
    build_criterion(cfg.losses, embed_dim=model.embed_dim, num_classes=5)


def test_every_recipe_builds_its_model_and_losses():
    import timm

    from losses import build_criterion
    from zoo import build_model

    for recipe in sorted((ROOT / "configs" / "train").glob("*.yaml")):
        if schema_of(recipe) is DetectorTrainConfig:
            continue  # tests/test_detectors.py builds the detectors
        if cfg_model_name(recipe) == "fusion":
            check_fusion_recipe(recipe)
            continue
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

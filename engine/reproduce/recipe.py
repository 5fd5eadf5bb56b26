"""A recipe folder: `recipe.yaml` (the real run) or `synthetic.yaml` (its twin on synthetic data).

Everything is checked here, before any stage runs: unknown keys (with the closest valid one),
stage names, scripts, config files, and placeholders, which may name only the data root, the
output folder and stages that run earlier. recipes/README.md documents the format.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from core.config import read_yaml
from core.errors import ConfigError
from core.suggest import did_you_mean
from data.formats import DATASETS

RECIPE_FILE = "recipe.yaml"
TWIN_FILE = "synthetic.yaml"
EXPECTED_FILE = "expected.json"
SCRIPTS = ("train", "eval")  # train.py and eval.py of this repository
TOP_KEYS = ("description", "data", "stages")
TWIN_KEYS = TOP_KEYS + ("synthetic",)
DATA_KEYS = ("format",)
STAGE_KEYS = ("name", "script", "config", "overrides")
SYNTHETIC_KEYS = ("kind", "individuals", "images_per_individual", "seed")
# kind -> the formats that read what it writes (WildlifeReID-10k's loader reads AnimalCLEF's layout too)
SYNTHETIC_KINDS = {"animalclef": ("animalclef2025", "wildlifereid10k"), "humpback": ("humpback",),
                   "animalclef2026": ("animalclef2026",)}
EXPECTED_KEYS = ("metric", "value", "source", "hardware", "minutes", "submission_sha256", "synthetic_sha256", "notes")
# Set by the runner for every stage: a recipe that set them too would break skipping and the data check.
RUNNER_KEYS = ("output_dir", "data.root", "data.format")
STAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
# `{data_root}`, `{out}`, `{stages.NAME}`; a YAML flow mapping such as `{variant: x}` is not one.
PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w]*(?:\.[\w-]+)?)\}")


@dataclass(frozen=True)
class Stage:
    name: str
    script: str  # train | eval
    config: Path  # absolute
    overrides: Tuple[str, ...] = ()

    def references(self) -> List[str]:
        """Names of the earlier stages whose folders this stage's overrides use."""
        found = [m.group(1) for text in self.overrides for m in PLACEHOLDER.finditer(text)]
        return sorted({ref.split(".", 1)[1] for ref in found if ref.startswith("stages.")})


@dataclass(frozen=True)
class SyntheticSpec:
    kind: str
    individuals: int
    images_per_individual: int
    seed: int = 0


@dataclass(frozen=True)
class Recipe:
    folder: Path
    file: Path  # recipe.yaml or synthetic.yaml
    description: str
    data_format: str
    stages: Tuple[Stage, ...]
    synthetic: Optional[SyntheticSpec] = None
    expected: Dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """competition/entry, as the folder sits under recipes/."""
        return f"{self.folder.parent.name}/{self.folder.name}"


def _check_keys(block: Mapping[str, Any], valid: Tuple[str, ...], where: str) -> None:
    for key in block:
        if key not in valid:
            raise ConfigError(f"{where}: unknown key '{key}'{did_you_mean(str(key), valid)}")


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {value!r}")
    return value


def _stage(raw: Any, index: int, folder: Path, where: str) -> Stage:
    raw = _mapping(raw, f"{where}: stages[{index}]")
    _check_keys(raw, STAGE_KEYS, f"{where}: stages[{index}]")
    missing = [key for key in ("name", "script", "config") if key not in raw]
    if missing:
        raise ConfigError(f"{where}: stages[{index}] has no '{missing[0]}' (a stage needs name, script and config)")
    name = str(raw["name"])
    if not STAGE_NAME.match(name):
        raise ConfigError(f"{where}: stage name {name!r} must be lowercase letters, digits, '_' or '-' "
                          "(it names the stage's folder)")
    script = raw["script"]
    if script not in SCRIPTS:
        raise ConfigError(f"{where}: stage '{name}': script {script!r} is not one of {', '.join(SCRIPTS)}"
                          f"{did_you_mean(str(script), SCRIPTS)}")
    config = (folder / str(raw["config"])).resolve()
    if not config.is_file():
        raise ConfigError(f"{where}: stage '{name}': config file {config} not found (paths are relative to the recipe folder)")
    overrides = raw.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise ConfigError(f"{where}: stage '{name}': overrides must be a list of 'key=value' strings, got {overrides!r}")
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        if key in RUNNER_KEYS:
            raise ConfigError(f"{where}: stage '{name}': '{key}' is set by the runner (output_dir=OUT/<stage>, "
                              "data.root=--data-root, data.format=the recipe's data.format); remove it")
    return Stage(name, script, config, tuple(overrides))


def _check_placeholders(stages: Tuple[Stage, ...], where: str) -> None:
    earlier: List[str] = []
    names = [stage.name for stage in stages]
    for stage in stages:
        for text in stage.overrides:
            for match in PLACEHOLDER.finditer(text):
                ref = match.group(1)
                if ref in ("data_root", "out"):
                    continue
                if not ref.startswith("stages."):
                    raise ConfigError(f"{where}: stage '{stage.name}': unknown placeholder '{{{ref}}}'"
                                      f"{did_you_mean(ref, ['data_root', 'out'] + [f'stages.{n}' for n in earlier])}")
                target = ref.split(".", 1)[1]
                if target in earlier:
                    continue
                if target in names:
                    raise ConfigError(f"{where}: stage '{stage.name}' refers to '{{{ref}}}', a stage that runs "
                                      "at the same time or later; a stage may only use the folders of earlier stages")
                raise ConfigError(f"{where}: stage '{stage.name}' refers to an unknown stage '{{{ref}}}'"
                                  f"{did_you_mean(target, earlier)}")
        earlier.append(stage.name)


def _synthetic(raw: Any, data_format: str, where: str) -> SyntheticSpec:
    raw = _mapping(raw, f"{where}: synthetic")
    _check_keys(raw, SYNTHETIC_KEYS, f"{where}: synthetic")
    kind = raw.get("kind")
    if kind not in SYNTHETIC_KINDS:
        raise ConfigError(f"{where}: synthetic.kind must be one of {', '.join(SYNTHETIC_KINDS)}, got {kind!r}"
                          f"{did_you_mean(str(kind), SYNTHETIC_KINDS)}")
    if data_format not in SYNTHETIC_KINDS[kind]:
        raise ConfigError(f"{where}: synthetic.kind '{kind}' writes data that data.format {data_format} cannot "
                          f"read (it suits {', '.join(SYNTHETIC_KINDS[kind])})")
    counts = {}
    for key, default, lowest in (("individuals", None, 1), ("images_per_individual", None, 1), ("seed", 0, 0)):
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise ConfigError(f"{where}: synthetic.{key} must be an integer >= {lowest}, got {value!r}")
        counts[key] = value
    return SyntheticSpec(kind, **counts)


def _expected(folder: Path) -> Dict[str, Any]:
    path = folder / EXPECTED_FILE
    if not path.is_file():
        return {}
    try:
        expected = json.loads(path.read_text())
    except ValueError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from err
    _check_keys(_mapping(expected, str(path)), EXPECTED_KEYS, str(path))
    return dict(expected)


def load_recipe(folder: Path | str, *, synthetic: bool = False) -> Recipe:
    """The recipe of `folder` (its synthetic twin with `synthetic`), checked as a whole."""
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(f"recipe folder {folder} not found")
    file = folder / (TWIN_FILE if synthetic else RECIPE_FILE)
    if not file.is_file():
        what = "synthetic twin" if synthetic else "recipe"
        raise ConfigError(f"{folder} has no {file.name} (the {what} of a recipe folder)")
    raw = read_yaml(file)
    where = str(file)
    _check_keys(raw, TWIN_KEYS if synthetic else TOP_KEYS, where)
    for key in TOP_KEYS + (("synthetic",) if synthetic else ()):
        if key not in raw:
            raise ConfigError(f"{where}: '{key}' is missing")
    data = _mapping(raw["data"], f"{where}: data")
    _check_keys(data, DATA_KEYS, f"{where}: data")
    data_format = data.get("format")
    if data_format not in DATASETS:
        valid = DATASETS.names()
        raise ConfigError(f"{where}: data.format must be one of {', '.join(valid)}, got {data_format!r}"
                          f"{did_you_mean(str(data_format), valid)}")
    if not isinstance(raw["stages"], list) or not raw["stages"]:
        raise ConfigError(f"{where}: stages must be a non-empty list")
    stages = tuple(_stage(s, i, folder, where) for i, s in enumerate(raw["stages"]))
    names = [stage.name for stage in stages]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"{where}: stage name '{duplicated[0]}' is used twice (each stage has its own folder)")
    _check_placeholders(stages, where)
    spec = _synthetic(raw["synthetic"], data_format, where) if synthetic else None
    return Recipe(folder, file, str(raw["description"]), data_format, stages, spec, _expected(folder))


def check_twin(recipe: Recipe, twin: Recipe) -> None:
    """A twin runs the same stages, in the same order, so that it exercises the real recipe's chain."""
    real, mirrored = [s.name for s in recipe.stages], [s.name for s in twin.stages]
    if real != mirrored:
        raise ConfigError(f"{twin.file}: stages {mirrored} must be the stages of {recipe.file.name}, in its order: {real}")
    if twin.data_format != recipe.data_format:
        raise ConfigError(f"{twin.file}: data.format {twin.data_format} differs from {recipe.file.name}'s {recipe.data_format}")


def substitute(text: str, values: Mapping[str, str]) -> str:
    """Replace each placeholder of `text` by its value (placeholders were checked at load time)."""
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)

"""The local model zoo: published models by name, every file's sha256 checked before loading.

Layout under the zoo root (`--zoo`, else $REIDZOO_ZOO, else ~/.cache/reidzoo/zoo):
  zoo.json                          the index: name -> folder, files and their sha256, summary
  <name>@<first 12 hex of the weights' sha256>/
      model.safetensors, config.json  the export, as train.py wrote it
      README.md                       the model card (Hugging Face format)
      reidzoo.json                    name and every other file's sha256 (travels to the Hub too)
Publishing writes a new version folder first and then the index (one atomic rename: the commit
point), and only then removes the folder the name pointed to before. A publish interrupted at any
point leaves the index and the folders it names as they were; an unlisted folder is ignored.
Nothing is ever unpickled: weights are safetensors, metadata JSON.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from core.errors import ConfigError, DataError
from core.files import atomic_folder, atomic_write_text, file_sha256
from core.paths import cache_base
from core.suggest import did_you_mean
from zoo.base import ReIDModel
from zoo.checksum import model_checksum
from zoo.export import CONFIG_FILE, WEIGHTS_FILE, load_export
from zoo.registry import model_inputs

INDEX = "zoo.json"
MANIFEST = "reidzoo.json"
CARD = "README.md"
INDEX_VERSION = 1
DETECTOR_KIND = "detector"  # detectors.export.KIND, without importing the detectors (ultralytics)
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def zoo_root(root: Optional[str | Path] = None) -> Path:
    """`root`, else $REIDZOO_ZOO, else the cache base's zoo/ folder."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get("REIDZOO_ZOO")
    return Path(env).expanduser() if env else cache_base() / "zoo"


def read_index(root: Optional[str | Path] = None) -> Dict[str, Dict[str, Any]]:
    """name -> entry of the zoo at `root` ({} for a zoo nothing was published to)."""
    path = zoo_root(root) / INDEX
    if not path.is_file():
        return {}
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"the zoo index {path} is not valid JSON: {err}") from err
    if not isinstance(index, dict) or not isinstance(index.get("models"), dict):
        raise DataError(f"the zoo index {path} is not a reidzoo zoo index (no 'models' mapping)")
    return index["models"]


def list_models(root: Optional[str | Path] = None) -> List[Dict[str, Any]]:
    """Every published model's entry, by name."""
    index = read_index(root)
    return [index[name] for name in sorted(index)]


def check_name(name: str) -> str:
    if not NAME.fullmatch(name or ""):
        raise ConfigError(f"zoo name {name!r} must be 1-64 lowercase letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit")
    return name


def verify_files(folder: Path, files: Dict[str, str], what: str) -> None:
    """Every file of `files` (name -> sha256) is in `folder` with that hash; else one DataError naming it."""
    for filename, expected in sorted(files.items()):
        path = folder / filename
        if not path.is_file():
            raise DataError(f"{what}: {path} is missing; publish the model again")
        if file_sha256(path) != expected:
            raise DataError(f"{what}: {path} has changed since it was published (sha256 differs); "
                            "it is refused: publish the model again, or restore the file")


def load_published(name: str, root: Optional[str | Path] = None) -> Tuple[ReIDModel, Dict[str, Any]]:
    """(model in eval mode, meta) of zoo model `name`, after checking every file's hash."""
    index = read_index(root)
    if name not in index:
        raise DataError(f"no model '{name}' in the zoo at {zoo_root(root)}"
                        f"{did_you_mean(name, index) if index else ' (nothing is published there)'}")
    if index[name].get("kind") == DETECTOR_KIND:
        raise ConfigError(f"zoo model '{name}' is a crop detector, not a re-identification model: use it as "
                          f"data.crop.detector={name} (or scripts/crop.py --detector {name})")
    folder = published_folder(name, root)
    model, meta = load_export(folder)
    return model, {**meta, "zoo": {"name": name, "folder": str(folder)}}


def published_folder(name: str, root: Optional[str | Path] = None) -> Optional[Path]:
    """The folder of zoo entry `name` once every file's hash is checked; None when there is no such name."""
    entry = read_index(root).get(name)
    if entry is None:
        return None
    folder = zoo_root(root) / entry["folder"]
    verify_files(folder, entry["files"], f"zoo model '{name}'")
    return folder


def _card(name: str, pipeline_tag: str, summary: List[str], training: List[str], metrics: Dict[str, Any],
          usage: List[str], files: Dict[str, str], licence: str) -> str:
    """A model card in the Hugging Face format (YAML front matter, then markdown)."""
    lines = ["---", f"license: {licence}", "library_name: reidzoo", f"pipeline_tag: {pipeline_tag}",
             "tags:", "- animal-re-identification", "- reidzoo", "---", "", f"# {name}", "", *summary,
             "## Training", "", *training, "- recipe: the training config is in `config.json` (`train_config`)", "",
             "## Metrics (validation during training)", ""]
    lines += [f"- {key}: {value}" for key, value in sorted(metrics.items()) if isinstance(value, (int, float))] or ["- none recorded"]
    lines += ["", "## Licence", "", f"Weights: {licence}. Check the licence of the training data before using them.", "",
              *usage, "## Files", "", "| file | sha256 |", "|---|---|",
              *[f"| {filename} | {digest} |" for filename, digest in sorted(files.items())], ""]
    return "\n".join(lines)


def _model_card(name: str, meta: Dict[str, Any], files: Dict[str, str], licence: str) -> str:
    train = meta.get("train_config") or {}
    data = train.get("data") or {}
    losses = ", ".join(str(loss.get("name")) for loss in (train.get("losses") or []) if isinstance(loss, dict)) or "n/a"
    summary = [
        f"A reidzoo `{meta['architecture']}` model for individual animal re-identification: "
        f"{meta['embed_dim']}-d embeddings of {meta['input_size']} px images"
        + (f", {meta['num_classes']} training identities" if meta.get("num_classes") else "") + ".", "",
        "## Architecture", "", "```json", json.dumps(meta["model_args"], indent=2, sort_keys=True), "```", "",
        f"Input: {meta['input_size']} x {meta['input_size']} px, mean {meta['mean']}, std {meta['std']}.", ""]
    training = [f"- data: format `{data.get('format', 'n/a')}`, root `{data.get('root', 'n/a')}`", f"- losses: {losses}"]
    usage = ["## How to load", "", "```python", "import zoo", "", f'model = zoo.load("{name}")  # checks every file\'s sha256',
             "```", "", f"or in an evaluation: `python eval.py models=[{name}]`.", ""]
    if model_inputs(meta["architecture"]) == "images":  # ONNX: the image -> embedding graph (docs/onnx.md)
        usage += [f"ONNX: `python -m zoo export-onnx {name} --out model.onnx` (images -> L2-normalised embeddings).", ""]
    return _card(name, "image-feature-extraction", summary, training, meta.get("metrics") or {}, usage, files, licence)


def _detector_card(name: str, meta: Dict[str, Any], files: Dict[str, str], licence: str) -> str:
    data = (meta.get("train_config") or {}).get("data") or {}
    summary = [
        f"A reidzoo `{meta['architecture']}` crop detector: it finds the animal in each photo ({meta['imgsz']} px "
        "input) so that re-identification models see the animal, not the scene.", "",
        "## Architecture", "", "```json", json.dumps(meta.get("detector_args"), indent=2, sort_keys=True), "```", ""]
    usage = ["## How to use", "", f"Crop a dataset before training or evaluation: `data.crop.detector={name}`, or",
             f"`python scripts/crop.py --detector {name} ...`.", ""]
    return _card(name, "object-detection", summary, [f"- data: `{json.dumps(data, sort_keys=True)}`"],
                 meta.get("metrics") or {}, usage, files, licence)


def publish(export_dir: str | Path, name: str, *, root: Optional[str | Path] = None, force: bool = False,
            licence: str = "other") -> Dict[str, Any]:
    """Publish an export folder (a re-ID model, a fusion model or a detector) under `name`; returns its
    index entry. An existing name needs `force`.

    A fusion model's members that are export folders are published with it, as `<name>.member<i>`,
    and its config.json names them so: the published model does not depend on folders of this
    machine. Every version folder is written first and the index once, at the end (the commit point).
    """
    check_name(name)
    source = Path(export_dir).expanduser()
    zoo = zoo_root(root)
    index = read_index(zoo)
    staged: Dict[str, Dict[str, Any]] = {}
    zoo.mkdir(parents=True, exist_ok=True)
    _stage(source, name, zoo, index, staged, force=force, licence=licence)
    previous = {key: index.get(key) for key in staged}
    index.update(staged)
    atomic_write_text(zoo / INDEX, json.dumps({"format_version": INDEX_VERSION, "models": index}, indent=2) + "\n")
    for key, entry in previous.items():
        if entry is not None and entry["folder"] != staged[key]["folder"]:
            shutil.rmtree(zoo / entry["folder"], ignore_errors=True)
    return staged[name]


def _stage(source: Path, name: str, zoo: Path, index: Dict[str, Dict[str, Any]], staged: Dict[str, Dict[str, Any]],
           *, force: bool, licence: str) -> None:
    """Write `source`'s version folder (and its members' first) into the zoo; add their entries to `staged`."""
    if name in index and not force:
        raise ConfigError(f"'{name}' is already in the zoo at {zoo}: publish with --force to replace it")
    config = _read_config(source)
    if config.get("kind") == DETECTOR_KIND:
        summary, describe = _detector_summary(source)
    else:
        for i, member in enumerate((config.get("model_args") or {}).get("members") or []):
            spec = member.get("spec", "") if isinstance(member, dict) else ""
            if Path(spec).expanduser().is_dir():  # a local export: it travels with the fusion model
                member["spec"] = f"{name}.member{i}"
                _stage(Path(spec).expanduser(), member["spec"], zoo, index, staged, force=force, licence=licence)
        summary, describe = _model_summary(source, config)
    folder = f"{name}@{file_sha256(source / WEIGHTS_FILE)[:12]}"
    if name in index and index[name]["folder"] == folder:
        folder += "-" + datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")  # the same weights again
    listed = {e["folder"] for e in index.values()}
    with atomic_folder(zoo / folder, may_replace=lambda path: path.name not in listed) as staging:
        shutil.copyfile(source / WEIGHTS_FILE, staging / WEIGHTS_FILE)
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
        files = {filename: file_sha256(staging / filename) for filename in (WEIGHTS_FILE, CONFIG_FILE)}
        (staging / CARD).write_text(describe(name, files, licence))
        files[CARD] = file_sha256(staging / CARD)
        (staging / MANIFEST).write_text(json.dumps({"name": name, "files": files}, indent=2) + "\n")
    staged[name] = {"name": name, "folder": folder, "files": files, **summary, "licence": licence,
                    "source": str(source.absolute()), "published": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def _read_config(source: Path) -> Dict[str, Any]:
    path = source / CONFIG_FILE
    if not (source / WEIGHTS_FILE).is_file() or not path.is_file():
        raise DataError(f"{source} is not an export folder: it needs {WEIGHTS_FILE} and {CONFIG_FILE} "
                        "(train.py writes them into <output_dir>/export)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise DataError(f"{path} is not a reidzoo export config")
    return config


def _model_summary(source: Path, config: Dict[str, Any]):
    model, meta = load_export(source)  # refuses anything that would not load back
    meta = {**meta, "model_args": config.get("model_args", meta["model_args"])}  # members as published
    summary = {"kind": "model", "architecture": meta["architecture"], "embed_dim": meta["embed_dim"],
               "num_classes": meta["num_classes"], "input_size": meta["input_size"], "model_checksum": model_checksum(model)}
    return summary, lambda name, files, licence: _model_card(name, meta, files, licence)


def _detector_summary(source: Path):
    # Imported on use: the detectors need ultralytics, which re-ID models never do.
    from detectors import detector_checksum, load_detector

    detector, meta = load_detector(source)  # refuses anything that would not load back
    summary = {"kind": DETECTOR_KIND, "architecture": meta["architecture"], "embed_dim": None, "num_classes": None,
               "input_size": meta["imgsz"], "model_checksum": detector_checksum(detector)}
    return summary, lambda name, files, licence: _detector_card(name, meta, files, licence)

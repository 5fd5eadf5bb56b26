"""Export folders: `model.safetensors` + `config.json`, enough to rebuild a trained model with one call.

config.json holds the architecture and its arguments, embed_dim, num_classes, the label map
(identity -> class index), input size, mean/std, the training config and validation metrics.
"""
from __future__ import annotations

import importlib.metadata
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple, Union

import safetensors.torch
import torch
from torch import nn

from core.errors import ConfigError, DataError
from core.files import atomic_folder
from core.store import CONFIG_FILE, WEIGHTS_FILE
from zoo.backbone_args import check_recorded_backbone
from zoo.base import ReIDModel
from zoo.finite import nonfinite_weights
from zoo.registry import MODELS, block_args
from zoo.trunk_config import TRUNK

FORMAT_VERSION = 1
RUN_EXPORT = "export"  # the export folder train.py writes under its output_dir
ONNX_FILE = "model.onnx"  # written by zoo.onnx (`python -m zoo export-onnx EXPORT`), never read back


def inner_module(model: nn.Module) -> nn.Module:
    """The module inside DDP, torch.compile or EMA wrappers (which keep it in `.module` / `._orig_mod`)."""
    while not isinstance(model, ReIDModel):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner
    return model


def unwrap_model(model: nn.Module) -> ReIDModel:
    """The zoo model inside DDP, torch.compile or EMA wrappers."""
    inner = inner_module(model)
    if not isinstance(inner, ReIDModel):
        raise TypeError(f"{type(inner).__name__} is not a reidzoo model (build it with zoo.build_model)")
    return inner


def export_config(
    model: nn.Module,
    *,
    label_map: Mapping[str, int] | None = None,
    train_config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Dict[str, Any]:
    """The config.json content of `model`; `extra` keys are added last (they may override input_size, mean, std)."""
    model = unwrap_model(model)
    config = {
        "format_version": FORMAT_VERSION,
        "architecture": model.architecture,
        "model_args": model.model_args,
        "embed_dim": model.embed_dim,
        "num_classes": model.num_classes,
        "label_map": dict(label_map) if label_map is not None else None,
        "input_size": model.input_size,
        "mean": list(model.mean),
        "std": list(model.std),
        "train_config": train_config,
        "metrics": metrics,
        "versions": {"torch": torch.__version__, "timm": importlib.metadata.version("timm")},
    }
    config.update(extra or {})
    return config


def _to_json(config: Mapping[str, Any]) -> str:
    def plain(value: Any) -> Any:  # numpy / torch scalars from metrics, paths from configs
        if hasattr(value, "item"):
            return value.item()
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise TypeError(f"{type(value).__name__} is not JSON-serialisable")

    try:
        return json.dumps(_null_for_nonfinite(config), indent=2, default=plain)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"cannot write {CONFIG_FILE}: {err}") from err


def _null_for_nonfinite(value: Any) -> Any:
    """NaN and infinities (an undefined validation metric) as null: JSON has no such numbers, and
    readers other than Python's refuse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _null_for_nonfinite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_null_for_nonfinite(item) for item in value]
    return value


def save_export(
    model: nn.Module,
    out_dir: Union[str, Path],
    *,
    label_map: Mapping[str, int] | None = None,
    train_config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write `out_dir/model.safetensors` and `out_dir/config.json` atomically; returns `out_dir`.

    Both files are written into a staging folder that then takes the place of `out_dir`
    (core.files.atomic_folder), so a reader never sees a half-written export.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not _replaceable(out_dir):
        raise ConfigError(f"{out_dir} exists and is not a reidzoo export (it holds other files): "
                          "choose another folder; nothing was written")
    problem = nonfinite_weights(unwrap_model(model))
    if problem:
        raise DataError(f"refusing to export to {out_dir}: {problem}; the training diverged "
                        "(export an earlier checkpoint, or train again with a lower train.lr)")
    config_text = _to_json(export_config(model, label_map=label_map, train_config=train_config, metrics=metrics, extra=extra))
    with atomic_folder(out_dir, may_replace=_replaceable) as staging:
        # save_model drops duplicate names of shared (tied) tensors and makes channels-last tensors contiguous.
        safetensors.torch.save_model(unwrap_model(model), str(staging / WEIGHTS_FILE), force_contiguous=True)
        (staging / CONFIG_FILE).write_text(config_text)
    return out_dir


def _replaceable(folder: Path) -> bool:
    """An export may only replace an empty folder or an earlier export (never someone else's files);
    the earlier export's model.onnx goes with it (it would no longer match the weights)."""
    return folder.is_dir() and set(p.name for p in folder.iterdir()) <= {WEIGHTS_FILE, CONFIG_FILE, ONNX_FILE}


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


# The fields load_export reads, as save_export writes them, with what each must be: an export may
# come from someone else, so each is checked before it is used.
_FIELDS = {
    "format_version": (_integer, "an integer"), "architecture": (lambda v: isinstance(v, str), "a name"),
    "model_args": (lambda v: isinstance(v, dict), "a mapping"), "embed_dim": (_integer, "an integer"),
    "num_classes": (lambda v: v is None or _integer(v), "an integer or null"), "input_size": (_integer, "an integer"),
    "mean": (_numbers, "a list of numbers"), "std": (_numbers, "a list of numbers"),
}
REQUIRED_KEYS = tuple(_FIELDS)


def _export_files(path: Union[str, Path]) -> Tuple[Path, Path]:
    root = Path(path).expanduser()
    if root.is_file() and root.name in (CONFIG_FILE, WEIGHTS_FILE):
        root = root.parent
    if not root.is_dir():
        raise DataError(f"export folder not found: {root}")
    missing = [name for name in (WEIGHTS_FILE, CONFIG_FILE) if not (root / name).is_file()]
    if missing:
        raise DataError(
            f"{root} is not a complete reidzoo export: {' and '.join(missing)} missing "
            f"(an export holds {WEIGHTS_FILE} and {CONFIG_FILE}, written by train.py into <output_dir>/export)"
        )
    return root / WEIGHTS_FILE, root / CONFIG_FILE


def read_export_config(path: Union[str, Path]) -> Dict[str, Any]:
    _, config_path = _export_files(path)
    try:
        meta = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{config_path} is not valid JSON: {err}") from err
    absent = [key for key in REQUIRED_KEYS if key not in meta] if isinstance(meta, dict) else list(REQUIRED_KEYS)
    if absent:
        raise DataError(f"{config_path} lacks {', '.join(absent)}: not a reidzoo export config")
    wrong = [key for key, (fits, _) in _FIELDS.items() if not fits(meta[key])]
    if wrong:
        raise DataError(f"{config_path}: {wrong[0]} must be {_FIELDS[wrong[0]][1]}, got {meta[wrong[0]]!r}")
    if meta["format_version"] > FORMAT_VERSION:
        raise ConfigError(
            f"{config_path} has format_version {meta['format_version']}; this reidzoo reads up to {FORMAT_VERSION}: upgrade it"
        )
    return meta


def export_meta(path: Union[str, Path]) -> Dict[str, Any]:
    """An export folder's config.json, checked, as load_export returns it, without building the model.

    meta["model_args"] comes back in the block form ({"trunk": {...}, **own}) even from exports
    written before the trunk block existed.
    """
    meta = read_export_config(path)
    try:
        meta["model_args"] = block_args(meta["architecture"], meta["model_args"])
    except ConfigError as err:
        raise ConfigError(f"cannot rebuild the model of {_export_files(path)[1]}: {err}") from err
    return meta


def load_export(path: Union[str, Path]) -> Tuple[ReIDModel, Dict[str, Any]]:
    """Rebuild the model of an export folder (no download: weights come from the folder), in eval mode,
    with its meta (export_meta)."""
    weights_path, config_path = _export_files(path)
    meta = export_meta(path)
    try:
        args = meta["model_args"]
        if TRUNK in args:
            check_recorded_backbone(args[TRUNK].get("backbone"), "trunk.backbone")
        # The weights come from the folder: never download (or look for) the pretrained ones again.
        rebuild = {**args, TRUNK: {**args[TRUNK], "pretrained": False}} if TRUNK in args else args
        model = MODELS.build(meta["architecture"], rebuild, num_classes=meta["num_classes"])
    except ConfigError as err:
        raise ConfigError(f"cannot rebuild the model of {config_path}: {err}") from err
    try:
        safetensors.torch.load_model(model, str(weights_path), strict=True)
    except (RuntimeError, OSError, safetensors.SafetensorError) as err:
        raise DataError(f"{weights_path} does not fit the architecture in {config_path.name}: {err}") from err
    problem = nonfinite_weights(model)
    if problem:
        raise DataError(f"{weights_path} cannot be used: {problem}")
    model.input_size = int(meta["input_size"])
    model.mean = [float(v) for v in meta["mean"]]
    model.std = [float(v) for v in meta["std"]]
    return model.eval(), meta

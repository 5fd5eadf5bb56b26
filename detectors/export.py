"""Detector exports: `model.safetensors` + `config.json`, rebuilt offline from the folder alone.

config.json records `kind: detector`, the registered family and the arguments that rebuild its
module (for YOLO the resolved model YAML), the input size, the training config, the validation
metrics (mAP50, mAP50-95) and the library versions. Nothing is ever unpickled. An export may
come from someone else: its rebuild arguments are checked by the detector family
(`Detector.export_args`) before anything is built, and the weights are always its own
model.safetensors.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple, Union

import safetensors.torch
import torch

from core.errors import ConfigError, DataError
from core.files import atomic_folder, weights_checksum
from core.store import CONFIG_FILE, WEIGHTS_FILE, published_folder
from detectors.base import DETECTORS, Detector, build_detector

FORMAT_VERSION = 1
KIND = "detector"


def save_detector(detector: Detector, out_dir: Union[str, Path], *, train_config: Mapping[str, Any] | None = None,
                  metrics: Mapping[str, Any] | None = None) -> Path:
    """Write the export atomically (a reader never sees half of it); returns `out_dir`."""
    out_dir = Path(out_dir)
    replaceable = lambda folder: folder.is_dir() and {p.name for p in folder.iterdir()} <= {WEIGHTS_FILE, CONFIG_FILE}  # noqa: E731
    if out_dir.exists() and not replaceable(out_dir):
        raise ConfigError(f"{out_dir} exists and is not a detector export: choose another folder; nothing was written")
    config = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "architecture": detector.name,
        "detector_args": detector.rebuild_args(),
        "imgsz": detector.imgsz,
        "train_config": dict(train_config or {}),
        "metrics": dict(metrics or {}),
        "versions": {"torch": torch.__version__, **_library_versions()},
    }
    text = json.dumps(config, indent=1, default=lambda v: v.item() if hasattr(v, "item") else str(v))
    with atomic_folder(out_dir, may_replace=replaceable) as staging:
        safetensors.torch.save_model(detector.module, str(staging / WEIGHTS_FILE), force_contiguous=True)
        (staging / CONFIG_FILE).write_text(text)
    return out_dir


def _library_versions() -> Dict[str, str]:
    try:
        import ultralytics
    except ImportError:
        return {}
    return {"ultralytics": ultralytics.__version__}


def is_detector_export(path: Union[str, Path]) -> bool:
    config = Path(path).expanduser() / CONFIG_FILE
    try:
        return json.loads(config.read_text()).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def load_detector(path: Union[str, Path]) -> Tuple[Detector, Dict[str, Any]]:
    """The detector of an export folder or zoo name (files checked first), in eval mode, and its config.json."""
    root = Path(path).expanduser()
    if not root.is_dir():
        root = published_folder(str(path)) or root
    missing = [name for name in (WEIGHTS_FILE, CONFIG_FILE) if not (root / name).is_file()]
    if missing:
        raise DataError(f"{root} is not a detector export: {' and '.join(missing)} missing "
                        f"(train.py --config configs/train/detector_yolo.yaml writes one into <output_dir>/export)")
    try:
        meta = json.loads((root / CONFIG_FILE).read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{root / CONFIG_FILE} is not valid JSON: {err}") from err
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise DataError(f"{root} is not a detector export (its {CONFIG_FILE} has no kind: {KIND}); "
                        "is it a re-identification model?")
    version = meta.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise DataError(f"{root / CONFIG_FILE}: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ConfigError(f"{root / CONFIG_FILE} has format_version {version}; "
                          f"this reidzoo reads up to {FORMAT_VERSION}: upgrade it")
    detector = build_detector(meta["architecture"], _checked_args(meta, root / CONFIG_FILE))
    try:
        safetensors.torch.load_model(detector.module, str(root / WEIGHTS_FILE), strict=True)
    except (RuntimeError, OSError, safetensors.SafetensorError) as err:
        raise DataError(f"{root / WEIGHTS_FILE} does not fit the detector in {CONFIG_FILE}: {err}") from err
    detector.module.eval()
    return detector, meta


def _checked_args(meta: Mapping[str, Any], config: Path) -> Dict[str, Any]:
    """The export's rebuild arguments, checked by its detector family before anything is built."""
    architecture = meta.get("architecture")
    if not isinstance(architecture, str) or architecture not in DETECTORS:
        raise DataError(f"{config}: architecture {architecture!r} is not a detector family of this reidzoo "
                        f"({', '.join(DETECTORS.names())})")
    args = DETECTORS.get(architecture).export_args(meta.get("detector_args"), f"{config}: detector_args")
    imgsz = meta.get("imgsz")
    if isinstance(imgsz, bool) or not isinstance(imgsz, int) or imgsz != args.get("imgsz", imgsz):
        raise DataError(f"{config}: imgsz {imgsz!r} must be the input size its detector_args give")
    return args


def detector_checksum(detector: Detector) -> str:
    """sha256 of what decides the boxes: weights, rebuild arguments and input size."""
    identity = {"weights": weights_checksum(detector.module.state_dict()), "architecture": detector.name,
                "args": detector.rebuild_args(), "imgsz": detector.imgsz}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()

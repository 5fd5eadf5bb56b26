"""The YOLO model dict (`cfg`) a config or a detector export gives, checked before ultralytics sees it.

ultralytics builds a model from this dict by name lookups and, for `activation`, by `eval()`: a
layer named after any function of its `tasks` module is called with the dict's arguments, and an
activation string runs as Python. An export is a file from someone else, so every key, layer name,
argument and activation is checked here against what ultralytics' own detection YAMLs hold, and
the activation is built from a fixed table, never evaluated. Nothing here imports ultralytics.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Dict, List, Mapping

from torch import nn

from core.errors import ConfigError
from core.suggest import did_you_mean

# The layers of ultralytics' detection YAMLs (v3 to 26), with the plain building blocks beside them.
LAYERS = frozenset({
    "A2C2f", "AConv", "ADown", "Bottleneck", "BottleneckCSP", "C1", "C2", "C2PSA", "C2f", "C2fCIB", "C2fPSA", "C3",
    "C3Ghost", "C3TR", "C3k2", "C3x", "CBFuse", "CBLinear", "Concat", "Conv", "DWConv", "ELAN1", "Focus",
    "GhostBottleneck", "GhostConv", "PSA", "RepC3", "RepNCSPELAN4", "SCDown", "SPP", "SPPELAN", "SPPF",
    "nn.BatchNorm2d", "nn.ConvTranspose2d", "nn.Identity", "nn.MaxPool2d", "nn.Upsample", "nn.ZeroPad2d",
})
HEADS = frozenset({"Detect", "v10Detect"})  # the last layer: what the detector's postprocessing reads
# Strings a layer argument may hold: ultralytics reads them as a local name ("nc") or a literal.
ARGUMENT_WORDS = frozenset({"nc", "None", "nearest", "bilinear"})
_ACTIVATIONS: Dict[str, Callable[[], nn.Module]] = {
    "SiLU()": nn.SiLU, "ReLU()": nn.ReLU, "ReLU6()": nn.ReLU6, "LeakyReLU()": nn.LeakyReLU,
    "LeakyReLU(0.1)": lambda: nn.LeakyReLU(0.1), "Hardswish()": nn.Hardswish, "GELU()": nn.GELU, "Mish()": nn.Mish,
    "Identity()": nn.Identity,
}
# "nn.SiLU()" and "torch.nn.SiLU()", as YAMLs write them.
ACTIVATIONS: Dict[str, Callable[[], nn.Module]] = {
    f"{prefix}{call}": make for call, make in _ACTIVATIONS.items() for prefix in ("nn.", "torch.nn.")}
SCALES = ("n", "s", "m", "l", "x")
CFG_KEYS = ("nc", "scales", "scale", "yaml_file", "channels", "depth_multiple", "width_multiple", "activation",
            "end2end", "reg_max", "backbone", "head")
YAML_NAME = re.compile(r"[A-Za-z0-9._-]+\.ya?ml")
MAX_LAYERS = 512
MAX_INT = 1 << 16  # far above any channel count or repeat of a real model; stops a file asking for terabytes


def activation_module(spec: str) -> nn.Module:
    """The activation a checked `activation` string names, built from the table."""
    return ACTIVATIONS[spec]()


def check_cfg(cfg: Any, where: str) -> Dict[str, Any]:
    """A copy of the YOLO model dict `cfg`, every part checked; a ConfigError naming `where` otherwise."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{where} must be a YOLO model mapping, got {type(cfg).__name__}")
    for key in cfg:
        if key not in CFG_KEYS:
            raise ConfigError(f"{where} has an unknown key {key!r}{did_you_mean(str(key), CFG_KEYS)}")
    missing = [key for key in ("nc", "backbone", "head") if key not in cfg]
    if missing:
        raise ConfigError(f"{where} lacks {', '.join(missing)}")
    checked: Dict[str, Any] = {"nc": _int(cfg["nc"], f"{where}.nc", lowest=1)}
    if "scales" in cfg:
        checked["scales"] = _scales(cfg["scales"], f"{where}.scales")
    if "scale" in cfg:
        scale = cfg["scale"]
        if scale not in ("", *SCALES) or (scale and "scales" in cfg and scale not in checked["scales"]):
            raise ConfigError(f"{where}.scale must be one of the scales it lists ({', '.join(checked.get('scales', SCALES))}) "
                              f"or empty, got {scale!r}")
        checked["scale"] = scale
    if "yaml_file" in cfg:
        if not isinstance(cfg["yaml_file"], str) or not YAML_NAME.fullmatch(cfg["yaml_file"]):
            raise ConfigError(f"{where}.yaml_file must be a YAML file name (no folder), got {cfg['yaml_file']!r}")
        checked["yaml_file"] = cfg["yaml_file"]
    if "channels" in cfg:
        if cfg["channels"] != 3 or isinstance(cfg["channels"], bool):
            raise ConfigError(f"{where}.channels must be 3 (RGB photos), got {cfg['channels']!r}")
        checked["channels"] = 3
    for key in ("depth_multiple", "width_multiple"):
        if key in cfg:
            checked[key] = _number(cfg[key], f"{where}.{key}")
    if "activation" in cfg:
        if cfg["activation"] not in ACTIVATIONS:
            raise ConfigError(f"{where}.activation must be one of {', '.join(ACTIVATIONS)}, got {cfg['activation']!r} "
                              "(activations are looked up, never evaluated)")
        checked["activation"] = cfg["activation"]
    if "end2end" in cfg:
        if not isinstance(cfg["end2end"], bool):
            raise ConfigError(f"{where}.end2end must be true or false, got {cfg['end2end']!r}")
        checked["end2end"] = cfg["end2end"]
    if "reg_max" in cfg:
        checked["reg_max"] = _int(cfg["reg_max"], f"{where}.reg_max", lowest=1)
    checked.update(_layers(cfg["backbone"], cfg["head"], where))
    return checked


def _layers(backbone: Any, head: Any, where: str) -> Dict[str, List[list]]:
    parts = {"backbone": backbone, "head": head}
    for name, layers in parts.items():
        if not isinstance(layers, list) or not layers:
            raise ConfigError(f"{where}.{name} must be a non-empty list of [from, repeats, module, args] layers")
    total = len(backbone) + len(head)
    if total > MAX_LAYERS:
        raise ConfigError(f"{where} has {total} layers; at most {MAX_LAYERS} are read")
    checked: Dict[str, List[list]] = {"backbone": [], "head": []}
    index = 0
    for name, layers in parts.items():
        for position, layer in enumerate(layers):
            here = f"{where}.{name}[{position}]"
            last = name == "head" and position == len(layers) - 1
            checked[name].append(_layer(layer, index, last, here))
            index += 1
    return checked


def _layer(layer: Any, index: int, last: bool, where: str) -> list:
    if not isinstance(layer, list) or len(layer) != 4:
        raise ConfigError(f"{where} must be a [from, repeats, module, args] list, got {layer!r}")
    source, repeats, module, args = layer
    sources = source if isinstance(source, list) else [source]
    # ultralytics indexes the outputs of the layers before this one (the image for the first).
    lowest, highest = (-1, -1) if index == 0 else (-index, index - 1)
    if not sources or any(isinstance(s, bool) or not isinstance(s, int) or not lowest <= s <= highest for s in sources):
        raise ConfigError(f"{where}: 'from' must be a layer index from {lowest} to {highest} (or a list of them), "
                          f"got {source!r}")
    repeats = _int(repeats, f"{where}: repeats", lowest=1)
    allowed = HEADS if last else LAYERS
    if not isinstance(module, str) or module not in allowed:
        what = "the last layer must be a detection head" if last else "a layer must be one of ultralytics' layers"
        raise ConfigError(f"{where}: {what} ({', '.join(sorted(allowed))}), got {module!r}"
                          f"{did_you_mean(str(module), allowed)}")
    if not isinstance(args, list):
        raise ConfigError(f"{where}: args must be a list, got {args!r}")
    return [list(sources) if isinstance(source, list) else source, repeats, module,
            [_argument(arg, f"{where}: args[{i}]") for i, arg in enumerate(args)]]


def _argument(value: Any, where: str, nested: bool = False) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return _int(value, where, lowest=-MAX_INT)
    if isinstance(value, float):
        return _number(value, where, positive=False)
    if isinstance(value, str) and value in ARGUMENT_WORDS:
        return value
    if isinstance(value, list) and not nested:
        return [_argument(item, where, nested=True) for item in value]
    raise ConfigError(f"{where} must be a number, true/false, null, a list of numbers or one of "
                      f"{', '.join(sorted(ARGUMENT_WORDS))}, got {value!r}")


def _scales(scales: Any, where: str) -> Dict[str, List[float]]:
    if not isinstance(scales, Mapping) or not scales:
        raise ConfigError(f"{where} must map scale letters ({', '.join(SCALES)}) to [depth, width, max_channels]")
    checked = {}
    for letter, values in scales.items():
        if letter not in SCALES or not isinstance(values, list) or len(values) != 3:
            raise ConfigError(f"{where}: {letter!r}: {values!r} is not a scale letter ({', '.join(SCALES)}) with "
                              "[depth, width, max_channels]")
        depth, width, channels = values
        checked[letter] = [_number(depth, f"{where}.{letter}"), _number(width, f"{where}.{letter}"),
                           _int(channels, f"{where}.{letter}", lowest=1)]
    return checked


def _int(value: Any, where: str, *, lowest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= MAX_INT:
        raise ConfigError(f"{where} must be an integer from {lowest} to {MAX_INT}, got {value!r}")
    return value


def _number(value: Any, where: str, *, positive: bool = True) -> float:
    bounded = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and abs(value) <= MAX_INT
    if not bounded or (positive and value <= 0):
        raise ConfigError(f"{where} must be {'a positive' if positive else 'a'} number of at most {MAX_INT}, "
                          f"got {value!r}")
    return value


def check_export_args(args: Any, where: str) -> Dict[str, Any]:
    """The `detector_args` of a YOLO export: the model dict and the input size, nothing else (weights
    always come from the export's own safetensors)."""
    if not isinstance(args, Mapping):
        raise ConfigError(f"{where} must be a mapping of cfg and imgsz, got {type(args).__name__}")
    unknown = [key for key in args if key not in ("cfg", "imgsz")]
    if unknown:
        raise ConfigError(f"{where}: {unknown[0]!r} is not read from an export (only cfg, the model dict, and imgsz; "
                          "the weights are the export's model.safetensors)")
    missing = [key for key in ("cfg", "imgsz") if key not in args]
    if missing:
        raise ConfigError(f"{where} lacks {', '.join(missing)}")
    imgsz = args["imgsz"]
    if isinstance(imgsz, bool) or not isinstance(imgsz, int) or imgsz < 32 or imgsz % 32 or imgsz > MAX_INT:
        raise ConfigError(f"{where}.imgsz must be a multiple of 32 (>= 32), got {imgsz!r}")
    return {"cfg": check_cfg(args["cfg"], f"{where}.cfg"), "imgsz": imgsz}

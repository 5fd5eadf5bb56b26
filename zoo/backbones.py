"""timm backbones: creation by name, weights from timm, the Hugging Face hub or a local file, freezing.

Every failure a user can cause (a misspelt name, no network, a weights file for another model)
becomes a ConfigError that says what to do instead.
"""
from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

import timm
import timm.models
from torch import nn

from core.errors import ConfigError

log = logging.getLogger(__name__)

HUB_PREFIX = "hf-hub:"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".pth.tar")
Pretrained = Union[bool, str]


def check_backbone_name(name: str) -> None:
    """Fail with close timm names when `name` is not a timm architecture (tags like `.a1_in1k` allowed)."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"backbone must be a timm model name, got {name!r}")
    if ":" in name:  # hf-hub:org/repo or local-dir:path; timm resolves those itself
        return
    if "/" in name:
        raise ConfigError(f"backbone '{name}' looks like a Hugging Face repo: write 'hf-hub:{name}'")
    if timm.is_model(name):
        return
    base = name.split(".")[0]
    close = difflib.get_close_matches(base, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(f"unknown timm backbone '{name}'{hint} (timm.list_models() lists every name)")


def resolve_hub_name(name: str) -> Tuple[str, Dict[str, Any], Dict[str, Any] | None]:
    """'hf-hub:org/repo' -> (timm architecture, its model arguments, its pretrained_cfg).

    Recording the architecture instead of the hub name lets an export be rebuilt offline.
    Plain timm names come back unchanged with no arguments.
    """
    if not name.startswith(HUB_PREFIX):
        return name, {}, None
    try:
        pretrained_cfg, architecture, model_args = timm.models.load_model_config_from_hf(name[len(HUB_PREFIX):])
    except OSError as err:  # hub errors (offline, missing repo, gated) are all OSError subclasses
        raise ConfigError(
            f"could not download the config of '{name}' (no network?): {err}; "
            "offline, use its timm architecture name with pretrained=<local weights file>"
        ) from err
    return architecture, dict(model_args or {}), pretrained_cfg


def create_backbone(name: str, pretrained: Pretrained = False, **timm_kwargs: Any) -> nn.Module:
    """A timm model by name; `pretrained`: False, True (timm/hub download) or a local weights file."""
    check_backbone_name(name)
    weights_file = _weights_file(pretrained)
    download = pretrained is True
    try:
        model = timm.create_model(name, pretrained=download, **timm_kwargs)
    except (TypeError, AssertionError) as err:  # timm's way of rejecting an argument or value
        raise ConfigError(f"cannot build backbone '{name}' with {timm_kwargs}: {err}") from err
    except Exception as err:
        if not (download or name.startswith(HUB_PREFIX)):
            raise
        # Hub, HTTP and URL failures share no base class; none of them is the user's config.
        raise ConfigError(
            f"could not download pretrained weights for '{name}' (no network?); pass pretrained=false "
            f"or a local file: {type(err).__name__}: {err}"
        ) from err
    if weights_file is not None:
        model.weights_report = load_weights_file(model, weights_file)
    return model


def _weights_file(pretrained: Pretrained) -> Path | None:
    if isinstance(pretrained, bool):
        return None
    if not isinstance(pretrained, str) or not pretrained:
        raise ConfigError(f"pretrained must be true, false or a weights file path, got {pretrained!r}")
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise ConfigError(f"pretrained weights file not found: {path}")
    if not path.name.endswith(WEIGHT_SUFFIXES):
        raise ConfigError(f"pretrained weights file {path} must end with one of {', '.join(WEIGHT_SUFFIXES)}")
    return path


def load_weights_file(model: nn.Module, path: Path) -> Dict[str, int]:
    """Load matching tensors from a safetensors or torch file (never unpickling code) into `model`.

    Tensors are matched by name after dropping a wrapper prefix (`module.`, or `trunk.body.` of a
    reidzoo export); a classifier head of another size is skipped. Fails when nothing matches.
    """
    try:
        # timm's loader: safetensors, or torch.load(weights_only=True); unwraps 'state_dict'/'model'.
        state = timm.models.load_state_dict(str(path), weights_only=True)
    except Exception as err:
        raise ConfigError(f"cannot read weights file {path}: {type(err).__name__}: {err}") from err
    target = model.state_dict()
    state = _strip_wrapper_prefix(state, target)
    matched = {k: v for k, v in state.items() if k in target and tuple(v.shape) == tuple(target[k].shape)}
    if not matched:
        raise ConfigError(
            f"none of the {len(state)} tensors in {path} match this backbone "
            f"(file has e.g. {list(state)[:3]}, the model expects e.g. {list(target)[:3]})"
        )
    model.load_state_dict(matched, strict=False)
    report = {
        "loaded": len(matched),
        "missing": len([k for k in target if k not in matched]),
        "unexpected": len([k for k in state if k not in target]),
        "shape_mismatch": len([k for k in state if k in target and k not in matched]),
    }
    level = logging.WARNING if report["missing"] or report["shape_mismatch"] else logging.INFO
    log.log(level, "weights from %s: %s", path, report)
    return report


def _strip_wrapper_prefix(state: Dict[str, Any], target: Dict[str, Any]) -> Dict[str, Any]:
    if any(k in target for k in state):
        return state
    for key in state:  # find the prefix that turns a file key into a model key, then apply it to all
        parts = key.split(".")
        for cut in range(1, len(parts)):
            if ".".join(parts[cut:]) in target:
                prefix = ".".join(parts[:cut]) + "."
                return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def stage_groups(model: nn.Module) -> List[List[str]]:
    """Parameter names grouped stem first, then stage by stage, as timm's coarse group_matcher orders them."""
    if not hasattr(model, "group_matcher"):
        raise ConfigError(f"backbone {type(model).__name__} does not describe its stages; use freeze_stages=0")
    groups = timm.models.group_parameters(model, model.group_matcher(coarse=True))
    return [groups[i] for i in sorted(groups)]


def freeze_stages(model: nn.Module, n: int) -> List[str]:
    """Freeze the stem and the first `n` stages (n=0: nothing); returns the frozen parameter names."""
    if n <= 0:
        return []
    groups = stage_groups(model)
    if n >= len(groups):
        raise ConfigError(f"freeze_stages={n} but the backbone has a stem and {len(groups) - 1} stages")
    frozen = [name for group in groups[: n + 1] for name in group]
    params = dict(model.named_parameters())
    for name in frozen:
        params[name].requires_grad_(False)
    return frozen

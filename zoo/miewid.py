"""MiewID (Conservation X Labs / Wild Me): a timm backbone -> GeM -> BatchNorm1d, built here, not by remote code.

The Hub repo `conservationxlabs/miewid-msv3` ships its own modeling code (`trust_remote_code`),
which this module never runs: `from_folder` reads the repo's `config.json` (the timm backbone it
names) and `model.safetensors`, and builds the same network as `MiewIdNet.extract_feat` of
wbia-plugin-miew-id: `bn(GeM(backbone.forward_features(x)))`, the 2152-dim embedding of
efficientnetv2_rw_m. The classification head (`final.*`, the training loss's sub-centres) is not
part of the embedding and is dropped. Registered as `miewid`, the network also trains, fine-tunes
and exports like any reidzoo model. docs/evaluation.md says which files and keys are read.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple

import safetensors
import safetensors.torch
import torch
from torch import nn

from core.errors import ConfigError, DataError
from zoo.backbone_args import check_recorded_backbone
from zoo.base import ReIDModel
from zoo.registry import MODELS
from zoo.trunk import Trunk
from zoo.trunk_config import TrunkConfig

BACKBONE = "efficientnetv2_rw_m"  # MiewIdNet's default model_name, the backbone of miewid-msv2/msv3
INPUT_SIZE = 440  # MIEWID_SIZE of wbia-plugin-miew-id: images are resized to 440 x 440
MEAN = [0.485, 0.456, 0.406]  # ImageNet normalisation, as its transforms use
STD = [0.229, 0.224, 0.225]
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
ARCHITECTURE_NAME = "MiewIdNet"  # config.json "architectures" of the Hub repo
# config.json keys that would change the embedding; refused unless they hold MiewIdNet's inference defaults.
UNSUPPORTED = {"use_fc": False}


@MODELS.register("miewid")
class MiewID(ReIDModel):
    """timm backbone (its forward_features map) -> GeM (learnable p) -> BatchNorm1d: the embedding.

    The trunk's pool is always GeM; the default backbone is efficientnetv2_rw_m at 440 px with
    ImageNet mean/std. `num_classes` is unused, as in `embedder`: margin losses own their centres.
    """

    def __init__(self, num_classes: int = 0, trunk: TrunkConfig = TrunkConfig(backbone=BACKBONE)):
        super().__init__()
        if trunk.pool not in (None, "gem"):
            raise ConfigError(f"model 'miewid' pools with GeM, not '{trunk.pool}': leave pool unset or write pool=gem")
        trunk = dataclasses.replace(
            trunk, pool="gem",
            input_size=trunk.input_size or (INPUT_SIZE if trunk.backbone == BACKBONE else None),
            mean=trunk.mean if trunk.mean is not None else MEAN, std=trunk.std if trunk.std is not None else STD,
        )
        self.trunk = Trunk(trunk)
        self.neck = nn.BatchNorm1d(self.trunk.num_features)
        self._finish(self.trunk, num_classes=num_classes, embed_dim=self.trunk.num_features, own={})

    def forward(self, images: torch.Tensor) -> Dict[str, Any]:
        pooled, maps = self.trunk(images)
        return {"embedding": self.neck(pooled), "features": maps}


def read_config(folder: Path) -> Dict[str, Any]:
    """The Hub repo's config.json, checked to describe a MiewIdNet whose embedding this module builds."""
    path = folder / CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"MiewID {path} cannot be read: {err}") from err
    if not isinstance(config, dict):
        raise DataError(f"MiewID {path} is not a JSON object")
    names = config.get("architectures") or []
    if ARCHITECTURE_NAME not in names:
        raise DataError(f"{path} names architectures {names}, not {ARCHITECTURE_NAME}: not a MiewID model")
    for key, default in UNSUPPORTED.items():
        if config.get(key, default) != default:
            raise DataError(f"{path} sets {key}={config[key]!r}; only MiewIdNet with {key}={default} is supported")
    return config


def convert_state_dict(weights: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """MiewIdNet's keys -> this module's: backbone.* -> trunk.body.*, pooling.p (shape [1]) ->
    trunk.gem.p (a scalar), bn.* -> neck.*; the head `final.*` is dropped. Any other key is refused."""
    out: Dict[str, torch.Tensor] = {}
    for key, tensor in weights.items():
        if key.startswith("backbone."):
            out["trunk.body." + key[len("backbone."):]] = tensor
        elif key == "pooling.p":
            out["trunk.gem.p"] = tensor.reshape(())
        elif key.startswith("bn."):
            out["neck." + key[len("bn."):]] = tensor
        elif not key.startswith("final."):
            raise DataError(f"MiewID weights hold an unexpected key '{key}' (expected backbone.*, pooling.p, bn.*, final.*)")
    if "trunk.gem.p" not in out:
        raise DataError("MiewID weights have no pooling.p (the GeM exponent)")
    if float(out["trunk.gem.p"]) < 1.0:  # zoo.pooling.GeM clamps p at 1; MiewIdNet does not
        raise DataError(f"MiewID GeM exponent p={float(out['trunk.gem.p']):.3f} < 1: this loader would not reproduce it")
    return out


def from_folder(folder: Path, *, source: str = "") -> Tuple[MiewID, Dict[str, Any]]:
    """(MiewID in eval mode, its config.json) from a folder laid out as the Hub repo: config.json +
    model.safetensors. Only safetensors are read: a repo with pickled weights alone is refused."""
    folder = Path(folder)
    name = source or str(folder)
    config = read_config(folder)
    weights_path = folder / WEIGHTS
    if not weights_path.is_file():
        raise DataError(f"MiewID {name} has no {WEIGHTS}; pickled weights (.bin/.pth) are never loaded")
    backbone = check_recorded_backbone(config.get("model_name") or BACKBONE, f"MiewID {name}: config.json model_name")
    try:
        # 440 px and ImageNet mean/std are MiewID's preprocessing whatever backbone config.json names
        model = MiewID(0, TrunkConfig(backbone=backbone, pretrained=False, pool="gem", input_size=INPUT_SIZE))
    except ConfigError as err:
        raise DataError(f"MiewID {name}: config.json names backbone '{backbone}': {err}") from err
    try:
        weights = convert_state_dict(safetensors.torch.load_file(str(weights_path)))
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except (RuntimeError, OSError, safetensors.SafetensorError) as err:
        raise DataError(f"MiewID {weights_path} does not fit the backbone '{backbone}': {err}") from err
    if missing or unexpected:
        raise DataError(f"MiewID {weights_path} does not fit the backbone '{backbone}': "
                        f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    return model.eval(), config

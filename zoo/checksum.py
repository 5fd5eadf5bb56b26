"""`model_checksum`: one identity for a model, the same for an export folder, the model loaded from
it, and that model moved to another device or wrapped (DDP, torch.compile, EMA).

For a zoo model it hashes what decides its outputs: the weights (core.files.weights_checksum), the
architecture and its arguments (pooling has no weights: two poolings of one backbone share them)
and the input size and normalisation. `pretrained` is left out: once the weights are there, where
they first came from changes nothing. Any other module (a training step holding model and loss)
is identified by its weights alone.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Union

from torch import nn

from core.files import weights_checksum
from zoo.base import ReIDModel
from zoo.export import inner_module, load_export
from zoo.trunk_config import TRUNK

Source = Union[nn.Module, str, "os.PathLike[str]"]


def model_checksum(source: Source) -> str:
    """sha256 (64 hex digits) of a model, or of the model of an export folder."""
    module = load_export(Path(source))[0] if isinstance(source, (str, os.PathLike)) else inner_module(source)
    weights = weights_checksum(module.state_dict())
    if not isinstance(module, ReIDModel):
        return weights
    identity = {"weights": weights, **_outputs_identity(module)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _outputs_identity(model: ReIDModel) -> Dict[str, Any]:
    args = dict(model.model_args)
    if TRUNK in args:  # models over other models' embeddings (fusion) have no trunk
        args[TRUNK] = {key: value for key, value in args[TRUNK].items() if key != "pretrained"}
    if "members" in args:  # a fusion model's members count by their checksums, wherever they are found
        args["members"] = [{key: value for key, value in m.items() if key != "spec"} for m in args["members"]]
    # Numbers as the export reads them back (a config may say 0 where config.json says 0.0).
    return {
        "architecture": model.architecture,
        "model_args": args,
        "input_size": int(model.input_size),
        "mean": [float(v) for v in model.mean],
        "std": [float(v) for v in model.std],
    }

"""`load_model(spec)`: an export folder, a zoo name or any timm / `hf-hub:` backbone, as a ready model."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

from core.errors import ConfigError, DataError
from zoo.base import ReIDModel
from zoo.export import CONFIG_FILE, export_config, load_export
from zoo.registry import MODELS

# Off-the-shelf re-ID backbones known by a short name.
ZOO = {
    "megadescriptor-l-384": "hf-hub:BVRA/MegaDescriptor-L-384",
}


def load_model(spec: str) -> Tuple[ReIDModel, Dict[str, Any]]:
    """(model in eval mode, meta with input_size/mean/std and, for exports, label_map and metrics).

    A folder must be an export; anything else is a zoo name or a timm name whose pretrained
    weights are used as they are, pooled features being the embedding.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise DataError(f"{spec} is a folder but not a reidzoo export: it has no {CONFIG_FILE}")
        return load_export(path)
    name = ZOO.get(spec.lower(), spec)
    if ":" not in name and ("/" in name or "\\" in name):
        raise DataError(
            f"model '{spec}': no export folder there (for a Hugging Face model write 'hf-hub:{spec}')"
        )
    try:
        model = MODELS.build("features", {"backbone": name, "pretrained": True}, num_classes=0)
    except ConfigError as err:
        raise ConfigError(
            f"model '{spec}' is not an export folder, a zoo name ({', '.join(ZOO)}) or a usable timm model: {err}"
        ) from err
    meta = export_config(model, extra={"source": spec})
    return model.eval(), meta

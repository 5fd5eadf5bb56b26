"""Models named by a spec (an export folder, a zoo name or any timm / `hf-hub:` backbone), ready to run.

`load_model` gives the model and its meta; `load_for_eval` adds its checksum (the key of cached
outputs); `probe` runs it once to learn what it returns.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

import torch

from core.errors import ConfigError, DataError
from core.store import CONFIG_FILE, read_index
from zoo.base import ReIDModel
from zoo.checksum import model_checksum
from zoo.export import export_config, inner_module, load_export
from zoo.published import load_published
from zoo.registry import MODELS
from zoo.spec import looks_like_path

# Off-the-shelf re-ID backbones known by a short name.
ZOO = {
    "megadescriptor-l-384": "hf-hub:BVRA/MegaDescriptor-L-384",
    "miewid-msv3": "hf-hub:conservationxlabs/miewid-msv3",  # built by zoo.miewid, not by timm
}


def load_model(spec: str) -> Tuple[ReIDModel, Dict[str, Any]]:
    """(model in eval mode, meta with input_size/mean/std and, for exports, label_map and metrics).

    A folder must be an export. Otherwise, in this order: a model published to the local zoo
    (zoo.published, every file's hash checked), a reidzoo model on the Hugging Face Hub
    (`hf-hub:ORG/NAME` with a reidzoo.json), a MiewID release (`hf-hub:conservationxlabs/miewid-msv3`
    or `miewid-msv3`, built by zoo.miewid), a short name of ZOO, or a timm / `hf-hub:` backbone whose
    pretrained weights are used as they are, pooled features being the embedding.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise DataError(f"{spec} is a folder but not a reidzoo export: it has no {CONFIG_FILE}")
        return load_export(path)
    if spec in read_index():
        return load_published(spec)
    name = ZOO.get(spec.lower(), spec)
    if name.startswith("hf-hub:"):
        from zoo.huggingface import is_miewid_repo, load_from_hub, load_miewid

        repo = name[len("hf-hub:"):]
        if is_miewid_repo(repo):  # not a timm model: zoo.miewid builds it from config.json + safetensors
            return load_miewid(repo)
        found = load_from_hub(repo)
        if found is not None:
            return found
    if looks_like_path(name):
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


def load(spec: str) -> ReIDModel:
    """The model of a zoo name, export folder, `hf-hub:` name or timm name, in eval mode, ready for
    inference (published files are checked against their sha256 first)."""
    return load_model(spec)[0]


def load_for_eval(spec: str) -> Tuple[ReIDModel, Dict[str, Any], str]:
    """(model in eval mode, meta, checksum) of an export folder, zoo name or timm name."""
    model, meta = load_model(spec)
    return model, meta, model_checksum(model)


def probe(model: torch.nn.Module, spec: str, size: int, device: torch.device) -> Dict[str, Any]:
    """One forward pass on blank images: whether the model takes `size` x `size` input, and what it returns.

    {"embed_dim": D, "classes": number of logits or None, "pair_head": whether `pair_scores` can re-score pairs}.
    """
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, 3, size, size, device=device))
    except (RuntimeError, ValueError, AssertionError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"model {spec} does not accept {size}x{size} images: {first_line}") from err
    if not isinstance(out, dict) or "embedding" not in out:
        raise DataError(f"model {spec} is not a reidzoo model: its forward returns no 'embedding'")
    logits = out.get("logits")
    return {
        "embed_dim": int(out["embedding"].shape[1]),
        "classes": None if logits is None else int(logits.shape[1]),
        "pair_head": bool(getattr(inner_module(model), "has_pair_head", False)),
    }

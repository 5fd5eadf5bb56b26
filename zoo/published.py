"""Re-identification models in the model store (core/store.py): the `model` kind, and loading by name.

`core.store.publish` copies an export folder into the store under a name; this kind writes its
model card and publishes a fusion model's members that are export folders with it, as
`<name>.member<i>`, naming them so in its config.json: the published model does not depend on
folders of this machine. `load_published` loads a name after checking every file's sha256. Crop
detectors are the store's other kind (detectors/publishing.py).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from core.errors import ConfigError
from core.store import PUBLISHED_KINDS, PublishedKind, StageMember, entry_of, model_card, published_folder
from zoo.base import ReIDModel
from zoo.checksum import model_checksum
from zoo.export import load_export
from zoo.registry import model_inputs
from zoo.spec import recorded_member


def load_published(name: str, root: Optional[str | Path] = None) -> Tuple[ReIDModel, Dict[str, Any]]:
    """(model in eval mode, meta) of zoo model `name`, after checking every file's hash."""
    kind = entry_of(name, root).get("kind", "model")
    if kind == "detector":
        raise ConfigError(f"zoo model '{name}' is a crop detector, not a re-identification model: use it as "
                          f"data.crop.detector={name} (or scripts/crop.py --detector {name})")
    if kind != "model":
        raise ConfigError(f"zoo model '{name}' is a '{kind}' export, not a re-identification model")
    folder = published_folder(name, root)
    model, meta = load_export(folder)
    return model, {**meta, "zoo": {"name": name, "folder": str(folder)}}


def _card(name: str, meta: Dict[str, Any], files: Dict[str, str], licence: str) -> str:
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
    return model_card(name, "image-feature-extraction", summary, training, meta.get("metrics") or {}, usage, files, licence)


@PUBLISHED_KINDS.register("model")
class PublishedModel(PublishedKind):
    """A re-identification model (embedder, classifier, Siamese, fusion)."""

    def prepare(self, source: Path, config: Dict[str, Any], name: str, stage_member: StageMember, licence: str):
        for i, member in enumerate((config.get("model_args") or {}).get("members") or []):
            spec = member.get("spec", "") if isinstance(member, dict) else ""
            folder = Path(recorded_member(spec, source)).expanduser() if isinstance(spec, str) and spec else None
            if folder is not None and folder.is_dir():  # a local export: it travels with the fusion model
                member["spec"] = f"{name}.member{i}"
                stage_member(folder, member["spec"])
        model, meta = load_export(source)  # refuses anything that would not load back
        meta = {**meta, "model_args": config.get("model_args", meta["model_args"])}  # members as published
        summary = {"kind": "model", "architecture": meta["architecture"], "embed_dim": meta["embed_dim"],
                   "num_classes": meta["num_classes"], "input_size": meta["input_size"],
                   "model_checksum": model_checksum(model)}
        return summary, lambda card_name, files: _card(card_name, meta, files, licence)

"""Crop detectors in the model store (core/store.py): their index entry and model card."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

from core.store import PUBLISHED_KINDS, PublishedKind, StageMember, model_card
from detectors.export import KIND, detector_checksum, load_detector


@PUBLISHED_KINDS.register(KIND)
class PublishedDetector(PublishedKind):
    def prepare(self, source: Path, config: Dict[str, Any], name: str, stage_member: StageMember, licence: str):
        detector, meta = load_detector(source)  # refuses anything that would not load back
        summary = {"kind": KIND, "architecture": meta["architecture"], "embed_dim": None, "num_classes": None,
                   "input_size": meta["imgsz"], "model_checksum": detector_checksum(detector)}
        return summary, lambda card_name, files: _card(card_name, meta, files, licence)


def _card(name: str, meta: Dict[str, Any], files: Dict[str, str], licence: str) -> str:
    data = (meta.get("train_config") or {}).get("data") or {}
    summary = [
        f"A reidzoo `{meta['architecture']}` crop detector: it finds the animal in each photo ({meta['imgsz']} px "
        "input) so that re-identification models see the animal, not the scene.", "",
        "## Architecture", "", "```json", json.dumps(meta.get("detector_args"), indent=2, sort_keys=True), "```", ""]
    usage = ["## How to use", "", f"Crop a dataset before training or evaluation: `data.crop.detector={name}`, or",
             f"`python scripts/crop.py --detector {name} ...`.", ""]
    return model_card(name, "object-detection", summary, [f"- data: `{json.dumps(data, sort_keys=True)}`"],
                      meta.get("metrics") or {}, usage, files, licence)

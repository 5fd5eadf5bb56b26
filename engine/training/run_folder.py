"""A training run's folder (output_dir): train.py deletes or replaces only what it created there.

A run marks its folder with reidzoo-run.json (core/ownership.py: the tool and the run). A fresh run
refuses a folder holding an earlier run's checkpoints, best weights or loss log unless told
`--overwrite` (then they are removed) or `--resume` (then they are continued); a folder holding
those names without the marker is someone else's and refused either way. While a run lasts it
holds the folder's lock (core/folder_lock.py), so two runs never prune each other's checkpoints.
The folder is probed before anything is built, and a disk that refuses a write later (full,
read-only, no permission) ends the run with one error line; checkpoints are written under a
temporary name and renamed, so the last complete one is kept.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Optional

from core.errors import ConfigError
from core.files import atomic_write_text
from core.folder_lock import folder_lock
from core.ownership import MARKER_FILES, TRAIN, check_output_folder, marker_tool, run_marker
from core.schema import ComponentConfig, DataConfig
from core.writable import disk_errors, probe_folder
from engine.training.checkpoint import BEST_DIR

RUN_MARKER = MARKER_FILES[TRAIN]
LOCK_FILE = "reidzoo-run.lock"
# Everything a run writes into output_dir; without the marker, any of these is someone else's.
RUN_OUTPUTS = ("checkpoints", "export", BEST_DIR, "tensorboard", "config.yaml", "loss.jsonl", "rank_digests.json")
# A new run in an old run's folder removes these (with --overwrite), which would otherwise mix with its own.
PREVIOUS_RUN_STATE = ("checkpoints", BEST_DIR, "loss.jsonl")


def training_reads(data: DataConfig, model: ComponentConfig) -> Dict[str, str]:
    """What a training run reads, which its folder must not contain: {what: path}."""
    reads = {"data.root": data.root, "data.query_root": data.query_root, "data.crop.detector": data.crop.detector}
    members = model.args.get("members")
    for spec in members if isinstance(members, list) else []:
        if isinstance(spec, str):
            reads[f"fusion member {spec}"] = spec
    if isinstance(model.args.get("pretrained"), str):
        reads["model.args.pretrained"] = model.args["pretrained"]
    return reads


def _is_run_folder(output_dir: Path) -> bool:
    return marker_tool(output_dir, RUN_MARKER) == TRAIN


def check_run_dir(output_dir: Path, *, fresh: bool = False, overwrite: bool = False,
                  reads: Optional[Mapping[str, str]] = None) -> None:
    """A run writes into a new or empty folder, a folder train.py created (it holds RUN_MARKER), or
    one holding none of the names a run writes; a fresh run (`fresh`: not resumed) into a run
    folder holding an earlier run's state needs `overwrite`. Anything else is refused before a file
    is touched, as is an output folder that core/ownership.py refuses (`reads`: what the run reads)."""
    check_output_folder(output_dir, reads)
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"output_dir {output_dir} is a file, not a folder")
    if not output_dir.is_dir():
        return
    if not _is_run_folder(output_dir):
        foreign = [name for name in RUN_OUTPUTS if (output_dir / name).exists()]
        if foreign:
            raise ConfigError(
                f"output_dir {output_dir} holds {', '.join(foreign)} but is not a train.py run folder (no {RUN_MARKER}): "
                "choose a new or empty folder, or delete these yourself if they are an old run's"
            )
        return
    earlier = [name for name in PREVIOUS_RUN_STATE if (output_dir / name).exists()]
    if fresh and earlier and not overwrite:
        raise ConfigError(f"output_dir {output_dir} holds an earlier run's {', '.join(earlier)}: continue it with "
                          "--resume, start afresh there with --overwrite (which deletes them), or choose another output_dir")


def claim_run_dir(output_dir: Path, *, fresh: bool, overwrite: bool = False, say: Callable[[str], None] = print) -> None:
    """Mark `output_dir` as this run's (a resumed run keeps the marker of the run it continues);
    with `overwrite`, a fresh start removes an earlier run's checkpoints, best weights and loss log
    (main process only)."""
    check_run_dir(output_dir, fresh=fresh, overwrite=overwrite)
    output_dir.mkdir(parents=True, exist_ok=True)
    marker = output_dir / RUN_MARKER
    if fresh or not marker.is_file():
        atomic_write_text(marker, json.dumps(run_marker(TRAIN), indent=1) + "\n")
    stale = [output_dir / name for name in PREVIOUS_RUN_STATE if (output_dir / name).exists()] if fresh else []
    if stale:
        say(f"starting a new run in {output_dir} (--overwrite): the previous run's "
            f"{', '.join(p.name for p in stale)} are removed")
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


@contextlib.contextmanager
def holding_run_dir(output_dir: str, data: DataConfig, model: ComponentConfig, *, resume: Optional[str],
                    overwrite: bool, say: Callable[[str], None] = print) -> Iterator[None]:
    """train.py's hold on its folder for a whole run: checked and probed before anything is built,
    locked by the main process, and a disk refusal while the run writes becomes one error line."""
    if resume is not None and overwrite:
        raise ConfigError("--resume continues the run in output_dir and --overwrite deletes it: give one of them")
    folder = Path(output_dir)
    check_run_dir(folder, fresh=resume is None, overwrite=overwrite, reads=training_reads(data, model))
    probe_folder(folder, f"output_dir {folder}")
    # The global rank `accelerate launch` and torchrun set; before the Accelerator exists, the only sign of it.
    is_main = os.environ.get("RANK", "0") == "0"
    lock: Any = folder_lock(folder, LOCK_FILE, what="train.py run", say=say) if is_main else contextlib.nullcontext()
    after = "; checkpoints already written are kept (continue from the last one with --resume once this is fixed)"
    with disk_errors(f"writing the run in {folder}", after, within=folder), lock:
        yield

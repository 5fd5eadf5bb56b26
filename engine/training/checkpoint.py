"""Full training state on disk: a checkpoint appears only when complete, the last K are kept.

A checkpoint folder `checkpoints/step-000120/` holds
  model.safetensors      model + loss parameters (e.g. ArcFace class centres)
  ema.safetensors        EMA weights, when EMA is on
  optimizer.pt           optimizer (and grad-scaler) state, loaded with weights_only=True
  scheduler.pt           learning-rate schedule position
  rng-rank{R}.pt         each process's torch RNG state (dropout, stochastic depth)
  best.safetensors       the best validation weights so far (val.export=best), so that a resume
                         rolls `best/` back with the rest of the state
  trainer_state.json     epoch, position in the epoch, step, best metric, time budget spent,
                         label map, config, and the size and sha256 of every other file
The main process writes all of them (the other processes' RNG states are gathered to it) into a
staging folder that core.files.atomic_folder renames into place; older checkpoints are pruned only
after that rename. A folder whose trainer_state.json is missing or does not match its files is never
resumed from, whatever killed the run that wrote it.

Also here `best/`, written atomically and restored from the checkpoint a run resumes from. The
run folder itself (its marker, lock and refusals) is engine/training/run_folder.py.
"""
from __future__ import annotations

import json
import pickle
import re
import shutil
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch
from accelerate.utils import gather_object
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from core.errors import ConfigError, UserError
from core.files import atomic_folder, file_sha256
from engine.training.divergence import check_weights

STATE_FILE = "trainer_state.json"
BEST_FILE = "best.safetensors"
STEP_DIR = re.compile(r"^step-(\d+)$")
# Staging and set-aside folders of atomic_folder (and of older versions) left by a killed run.
LEFTOVER = re.compile(r"^\.(step-\d+\.(tmp|old)-.+|tmp-step-\d+)$")
# Model arguments that only choose the initial weights, which a resume overwrites.
INITIALISATION_ONLY = {"model.args.pretrained"}


def checkpoint_dirs(root: Path) -> List[Path]:
    """Every `step-N` folder under `root`, complete or not, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def read_state(path: Path) -> Dict[str, Any]:
    state = json.loads((path / STATE_FILE).read_text())
    if not isinstance(state, dict):
        raise ValueError("not a JSON object")
    return state


def checkpoint_problem(path: Path) -> Optional[str]:
    """Why `path` cannot be resumed from; None when it is a complete checkpoint."""
    if not path.is_dir():
        return "no such folder"
    if not (path / STATE_FILE).is_file():
        return f"no {STATE_FILE}"
    try:
        files = read_state(path)["files"]
        expected = {name: (int(entry["bytes"]), str(entry["sha256"])) for name, entry in files.items()}
    except (ValueError, OSError) as err:
        return f"{STATE_FILE} is unreadable ({err})"
    except (KeyError, TypeError, AttributeError):
        return f"{STATE_FILE} does not list the checkpoint's files (written by an older train.py?)"
    for name, (size, sha256) in expected.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size or file_sha256(file) != sha256:
            return f"{name} does not match the size and checksum in {STATE_FILE}"
    return None


def last_complete(root: Path) -> Optional[Path]:
    """The newest complete checkpoint under `root` (a run's checkpoints/), None when there is none."""
    return next((path for path in reversed(checkpoint_dirs(root)) if checkpoint_problem(path) is None), None)


def find_checkpoint(output_dir: Path, which: str, warn: Callable[[str], None] = print) -> Path:
    """'latest' -> the newest complete checkpoint of the run; anything else is a checkpoint folder path."""
    if which == "latest":
        root = output_dir / "checkpoints"
        for path in reversed(checkpoint_dirs(root)):
            problem = checkpoint_problem(path)
            if problem is None:
                return path
            warn(f"warning: skipping incomplete checkpoint {path}: {problem}")
        raise UserError(f"--resume: no complete checkpoint under {root}")
    path = Path(which).expanduser()
    problem = checkpoint_problem(path)
    if problem is not None:
        raise UserError(f"--resume: {path} is not a complete checkpoint: {problem}")
    return path


class _KeepsWriteError:
    """The file torch.save writes through: torch reports a failed write as a RuntimeError without
    the OSError behind it, which would hide a full or read-only disk; this keeps that OSError."""

    def __init__(self, handle):
        self.handle, self.error = handle, None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.handle.flush()


def _torch_save(obj: Any, path: Path) -> None:
    with open(path, "wb") as handle:
        target = _KeepsWriteError(handle)
        try:
            torch.save(obj, target)
        except RuntimeError as err:
            if target.error is None:
                raise
            raise target.error from err


def _write_file(path: Path, write: Callable[[Path], None]) -> Dict[str, Any]:
    """Write one checkpoint file; returns the identity trainer_state.json records for it."""
    write(path)
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def _prune(root: Path, step: int, keep_last: int) -> None:
    """Drop checkpoints of a timeline this run abandoned (a later step than the one just written,
    left by a resume from an earlier checkpoint), then all but the last `keep_last` (0 = keep all)."""
    ours = checkpoint_dirs(root)
    stale = [p for p in ours if int(STEP_DIR.match(p.name).group(1)) > step]
    kept = [p for p in ours if p not in stale]
    for old in stale + (kept[:-keep_last] if keep_last > 0 else []):
        shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(root: Path) -> None:
    if root.is_dir():
        for path in root.iterdir():
            if LEFTOVER.match(path.name):
                shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(
    accelerator,
    root: Path,
    *,
    step: int,
    module: torch.nn.Module,
    optimizer,
    scheduler,
    ema: Optional[torch.nn.Module],
    state: Dict[str, Any],
    keep_last: int,
    best_weights: Optional[Path] = None,
) -> Path:
    """Write the checkpoint of `step`; every process calls it. `best_weights` is copied in as
    best.safetensors."""
    # The weights are the same on every process: all of them stop here, before writing anything.
    check_weights({"model weights": module, "EMA weights": ema}, step=step, last_checkpoint=partial(last_complete, root))
    final = root / f"step-{step:06d}"
    rng_states = gather_object([_rng_state()])  # rank order
    if accelerator.is_main_process:
        _remove_leftovers(root)
        with atomic_folder(final) as staging:
            files: Dict[str, Any] = {}

            def add(name: str, write: Callable[[Path], None]) -> None:
                files[name] = _write_file(staging / name, write)

            for rank, rng in enumerate(rng_states):
                add(f"rng-rank{rank}.pt", lambda p, rng=rng: _torch_save(rng, p))
            add("model.safetensors", lambda p: save_model(module, str(p)))
            if ema is not None:
                add("ema.safetensors", lambda p: save_model(ema, str(p)))
            scaler = getattr(accelerator, "scaler", None)
            add("optimizer.pt", lambda p: _torch_save(
                {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None}, p))
            add("scheduler.pt", lambda p: _torch_save(scheduler.state_dict(), p))
            if best_weights is not None:
                add(BEST_FILE, lambda p: shutil.copyfile(best_weights, p))
            # Written last: it is what makes the folder a checkpoint.
            _write_file(staging / STATE_FILE, lambda p: p.write_text(json.dumps(dict(state, files=files), indent=1)))
        _prune(root, step, keep_last)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(
    accelerator, path: Path, *, module, optimizer, scheduler, ema, config: Mapping[str, Any]
) -> Dict[str, Any]:
    """Restore weights, optimizer, schedule, EMA and this process's RNG; return the trainer state.

    `config` is the current run's config as a dict: a checkpoint of another model is refused with
    what differs, before anything is loaded.
    """
    state = read_state(path)
    saved_config = state.get("config") or {}
    changed = config_differences(saved_config.get("model"), config["model"], "model")
    if changed:
        raise ConfigError(
            f"checkpoint {path} was written by a different model ({'; '.join(changed)}): resume with the "
            "checkpoint's model settings, or start a new run without --resume"
        )
    if ema is not None and not (path / "ema.safetensors").is_file():
        raise UserError(f"{path} has no EMA weights but train.ema is on; resume with train.ema=false")
    device = str(accelerator.device)
    try:
        load_model(module, str(path / "model.safetensors"), device=device)
        if ema is not None:
            load_model(ema, str(path / "ema.safetensors"), device=device)
        saved = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    except (RuntimeError, ValueError, KeyError, SafetensorError, pickle.UnpicklingError) as err:
        changed = config_differences(saved_config.get("losses"), config.get("losses"), "losses")
        reason = f"the losses differ ({'; '.join(changed)})" if changed else _one_line(err)
        raise ConfigError(f"checkpoint {path} does not fit the current model and losses: {reason}") from err
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    rng_file = path / f"rng-rank{accelerator.process_index}.pt"
    if rng_file.is_file():
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return state


def _one_line(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + "..."


def config_differences(saved: Any, current: Any, prefix: str) -> List[str]:
    """'key: A in the checkpoint, B now' for every leaf of two config blocks that differs."""
    old, new = _leaves(saved, prefix), _leaves(current, prefix)
    keys = sorted((set(old) | set(new)) - INITIALISATION_ONLY)
    missing = "unset"
    return [f"{key}: {old.get(key, missing)!r} in the checkpoint, {new.get(key, missing)!r} now"
            for key in keys if old.get(key, missing) != new.get(key, missing)]


def _leaves(block: Any, prefix: str) -> Dict[str, Any]:
    if isinstance(block, Mapping):
        items = block.items()
    elif isinstance(block, (list, tuple)):
        items = enumerate(block)
    else:
        return {prefix: block}
    out: Dict[str, Any] = {}
    for key, value in items:
        out.update(_leaves(value, f"{prefix}.{key}"))
    return out


def _rng_state() -> Dict[str, Optional[torch.Tensor]]:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


# -- best/: the best validation weights, kept in step with the checkpoints ---------------------------
BEST_DIR = "best"
BEST_WEIGHTS = "model.safetensors"
BEST_RECORD = "best.json"


def write_best(output_dir: Path, model: torch.nn.Module, *, step: int, metrics: Mapping[str, float]) -> None:
    _write_best(output_dir, lambda path: save_model(model, str(path)), step=step, metrics=metrics)


def restore_best(output_dir: Path, checkpoint: Path, state: Mapping[str, Any]) -> bool:
    """Make `best/` the best weights of `checkpoint`'s timeline; a best/ written after it, by steps
    the resume discards, must not be exported. False (and no best/) when the checkpoint has none."""
    source = checkpoint / BEST_FILE
    if not source.is_file():
        shutil.rmtree(output_dir / BEST_DIR, ignore_errors=True)
        return False
    _write_best(output_dir, lambda path: shutil.copyfile(source, path), step=state["best_step"], metrics=state["best"])
    return True


def _write_best(output_dir: Path, put_weights: Callable[[Path], Any], *, step: int, metrics: Mapping[str, float]) -> None:
    with atomic_folder(output_dir / BEST_DIR) as staging:
        put_weights(staging / BEST_WEIGHTS)
        (staging / BEST_RECORD).write_text(json.dumps({"step": step, "metrics": dict(metrics)}, indent=1))

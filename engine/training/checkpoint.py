"""Full training state on disk: written atomically, the last K kept, loaded without unpickling.

A checkpoint folder `checkpoints/step-000120/` holds
  model.safetensors      model + loss parameters (e.g. ArcFace class centres)
  ema.safetensors        EMA weights, when EMA is on
  optimizer.pt           optimizer (and grad-scaler) state, loaded with weights_only=True
  rng-rank{R}.pt         each process's torch RNG state (dropout, stochastic depth)
  trainer_state.json     epoch, position in the epoch, step, best metric, label map
Every process writes into `.tmp-step-000120/`; once all have finished the main process renames it,
so a run killed mid-write never leaves a checkpoint that looks complete.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from safetensors.torch import load_model, save_model

from core.errors import UserError

STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dirs(root: Path) -> list:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def find_checkpoint(output_dir: Path, which: str) -> Path:
    """'latest' -> the newest checkpoint of the run; anything else is a checkpoint folder path."""
    if which == "latest":
        found = checkpoint_dirs(output_dir / "checkpoints")
        if not found:
            raise UserError(f"--resume: no checkpoint found under {output_dir / 'checkpoints'}")
        return found[-1]
    path = Path(which)
    if not (path / "trainer_state.json").is_file():
        raise UserError(f"--resume: {path} is not a checkpoint folder (no trainer_state.json)")
    return path


def save_checkpoint(
    accelerator,
    root: Path,
    *,
    step: int,
    module: torch.nn.Module,
    optimizer,
    ema: Optional[torch.nn.Module],
    state: Dict[str, Any],
    keep_last: int,
) -> Path:
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save({"torch": torch.get_rng_state(), "cuda": _cuda_rng()}, tmp / f"rng-rank{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        save_model(module, str(tmp / "model.safetensors"))
        if ema is not None:
            save_model(ema, str(tmp / "ema.safetensors"))
        scaler = getattr(accelerator, "scaler", None)
        torch.save(
            {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None},
            tmp / "optimizer.pt",
        )
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in checkpoint_dirs(root)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path, *, module, optimizer, ema) -> Dict[str, Any]:
    """Restore weights, optimizer, EMA and this process's RNG; return the trainer state."""
    state = json.loads((path / "trainer_state.json").read_text())
    load_model(module, str(path / "model.safetensors"), device=str(accelerator.device))
    if ema is not None:
        if not (path / "ema.safetensors").is_file():
            raise UserError(f"{path} has no EMA weights but train.ema is on; resume with train.ema=false")
        load_model(ema, str(path / "ema.safetensors"), device=str(accelerator.device))
    saved = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
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


def _cuda_rng() -> Optional[torch.Tensor]:
    return torch.cuda.get_rng_state() if torch.cuda.is_available() else None

"""Plumbing every benchmark script shares: the CPU line each table names, commands run once and
reused while their record holds the same spec, and the figures read back from train.py's output
and eval.py's metrics.json."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

from core.errors import ConfigError, UserError

REPO = Path(__file__).resolve().parents[2]  # the checkout: train.py, eval.py and configs/ the benchmarks run
ENSEMBLE = "ensemble (identity ranking)"


def parse_set(text: str) -> Dict[str, str]:
    """--set NAME=MODEL:ROOT of the re-ranking benchmarks: a model export and the data part it is scored on."""
    name, sep, rest = text.partition("=")
    model, colon, root = rest.rpartition(":")
    if not sep or not colon or not name or not model or not root:
        raise ConfigError(f"--set must be NAME=MODEL:ROOT, got {text!r}")
    return {"name": name, "model": model, "root": root}


def cpu_info(path: str = "/proc/cpuinfo") -> Dict[str, object]:
    """The CPU model and whether it has the bf16 instructions train.mixed_precision=auto uses."""
    model, flags = "unknown", set()
    try:
        for line in Path(path).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "avx512_bf16": "avx512_bf16" in flags,
            "amx": bool({"amx_bf16", "amx_tile"} & flags)}


def cpu_line() -> str:
    """'AMD EPYC, 2 cores, AVX512-BF16 yes, AMX no': what every benchmark table names."""
    cpu = cpu_info()
    return (f"{cpu['model']}, {cpu['cores']} cores, AVX512-BF16 {'yes' if cpu['avx512_bf16'] else 'no'}, "
            f"AMX {'yes' if cpu['amx'] else 'no'}")


def matcher_of(chosen: Optional[str]) -> str:
    """The keypoint matcher of a benchmark's eval.py runs: its --matcher, or eval.py's own default
    (what a user gets)."""
    from core.schema import RerankConfig

    return chosen or RerankConfig().matcher


def scored_by(chosen: Optional[str]) -> str:
    """The name runs and results take from their matcher: `global` for the embeddings alone."""
    matcher = matcher_of(chosen)
    return "global" if matcher == "none" else matcher


def comma_list(text: str) -> List[str]:
    """'a, b,,c' -> ['a', 'b', 'c']: a comma-separated command-line value."""
    return [part.strip() for part in text.split(",") if part.strip()]


def cell(value: Optional[float], digits: int = 3) -> str:
    """A table cell: the value with `digits` decimals, '-' where it is missing."""
    return "-" if value is None else f"{value:.{digits}f}"


def hardware_line() -> str:
    """The CPU line, and the GPU where the runs use one (train.py and eval.py take it when present)."""
    import torch  # the scripts that only read results need no torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} GPU, {cpu_line()}"
    return cpu_line()


def execute(command: List[str], log: Path, what: str) -> tuple:
    """(stdout+stderr text, wall seconds); a failure is one line naming the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log, "w") as handle:
        handle.write(shlex.join(command) + "\n")
        handle.flush()
        status = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT).returncode
    text = log.read_text()
    if status != 0:
        lines = [line for line in text.splitlines() if line.strip()]
        raise UserError(f"{what} failed (exit {status}): {lines[-1] if lines else 'no output'} (log: {log})")
    return text, time.monotonic() - start


def parse_steps(text: str) -> Optional[int]:
    """Optimizer steps from train.py's 'done: N steps' or reference_loop.py's 'N steps (...' line."""
    found = re.findall(r"^(?:done: )?(\d+) steps\b", text, flags=re.MULTILINE)
    return int(found[-1]) if found else None


def read_metrics(path: Path) -> Dict[str, Optional[float]]:
    """Open-set score, BAKS, BAUS; rank-1 and rank-5 of the identity ranking the submission uses (after
    any re-ranking); mAP of the model's own image retrieval."""
    metrics = json.loads(path.read_text())
    retrieval = metrics.get("retrieval", {})
    model = next((v for k, v in retrieval.items() if k != ENSEMBLE), {})
    ranking = retrieval.get(ENSEMBLE, model)
    hindsight = metrics.get("hindsight", {}).get("score")
    return {"score": metrics["tuned"]["score"], "BAKS": metrics["tuned"]["BAKS"], "BAUS": metrics["tuned"]["BAUS"],
            "rank1": ranking.get("rank1"), "rank5": ranking.get("rank5"), "mAP": model.get("mAP"),
            "hindsight_score": hindsight, "queries": metrics.get("queries")}


def reused(path: Path, spec: Dict) -> Optional[Dict]:
    if path.is_file():
        record = json.loads(path.read_text())
        if record.get("spec") == spec:
            return record
    return None

"""Run a recipe's stages in order, each as `python train.py|eval.py --config C key=value...`.

Before any stage runs, every stage's config is loaded with its overrides (so a misspelt key stops
the run at once) and the data is checked. A stage whose fingerprint (fingerprint.py) equals the
one stored in OUT/<stage>/reproduce_stage.json by its last successful run is skipped, as long as
its outputs (its export's files, its submission) are still those the record lists by sha256: a
deleted or edited export runs its stage again. The record is written only after the stage
succeeded, so an interrupted or failed stage runs again. Each
stage's output goes to OUT/<stage>/reproduce.log (and to the console unless `echo` is off).
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

from core.config import load_config, parse_override, read_yaml
from core.errors import ConfigError, DataError, UserError
from core.files import atomic_write_text
from engine.reproduce.fingerprint import (
    REPO,
    changed_parts,
    code_version,
    stage_fingerprint,
    stage_parts,
)
from engine.reproduce.manifest import SUBMISSION, changed_outputs, stage_outputs
from engine.reproduce.recipe import Recipe, Stage, substitute

SCRIPT_FILES = {"train": REPO / "train.py", "eval": REPO / "eval.py"}
STAGE_RECORD = "reproduce_stage.json"
STAGE_LOG = "reproduce.log"
LOG_STAGING = "_logs"  # under OUT: a stage's log is moved into its folder once the script has exited
# What --deterministic adds to train stages: deterministic kernels, and images decoded in the main
# process (worker processes are seeded per sample already, but one process leaves nothing to chance).
DETERMINISTIC_TRAIN = ("train.deterministic=true", "data.num_workers=0")
DATA_HINTS = {
    "animalclef2025": "a folder holding metadata.csv and images/",
    "wildlifereid10k": "a folder holding metadata.csv and images/",
    "humpback": "a folder holding train.csv, train/ and test/ (bboxes.csv optional)",
    "folders": "a folder of <identity>/<image> folders",
    "csv": "a CSV file (or a folder holding metadata.csv) with path and identity columns",
}


class StageFailed(UserError):
    """A stage's script exited with an error: its log says why."""

    exit_code = 1


@dataclass
class StagePlan:
    stage: Stage
    folder: Path
    arguments: List[str]  # key=value overrides given to the script, the runner's first
    config: Dict[str, Any]  # the config file as read (base recipes merged)
    references: List[str]


@dataclass
class StageResult:
    name: str
    fingerprint: str
    ran: bool
    reason: str
    seconds: float
    record: Dict[str, Any] = field(default_factory=dict)


def _stage_config_class(stage: Stage, arguments: List[str]):
    from core.schema import EvalConfig, TrainConfig

    if stage.script == "eval":
        return EvalConfig
    task = read_yaml(stage.config).get("task", "reid")
    for text in arguments:
        key, value = parse_override(text)
        task = value if key == "task" else task
    if task == "detector":
        from core.detector_schema import DetectorTrainConfig

        return DetectorTrainConfig
    return TrainConfig


def load_stage_config(stage: Stage, arguments: List[str]):
    """The typed config the stage's script will run with; a ConfigError names the stage."""
    try:
        return load_config(_stage_config_class(stage, arguments), stage.config, arguments)
    except ConfigError as err:
        raise ConfigError(f"stage '{stage.name}' ({stage.config}): {err}") from err


def plan_stages(recipe: Recipe, out: Path, data_root: Path, *, deterministic: bool = False) -> List[StagePlan]:
    """Each stage's folder and arguments, placeholders substituted, every config loaded and checked."""
    values = {"data_root": str(data_root), "out": str(out)}
    values.update({f"stages.{stage.name}": str(out / stage.name) for stage in recipe.stages})
    plans = []
    for stage in recipe.stages:
        folder = out / stage.name
        arguments = [f"output_dir={folder}", f"data.root={data_root}", f"data.format={recipe.data_format}"]
        arguments += [substitute(text, values) for text in stage.overrides]
        if deterministic and stage.script == "train":
            arguments += list(DETERMINISTIC_TRAIN)
        cfg = load_stage_config(stage, arguments)
        if deterministic and stage.script == "train" and cfg.train.max_minutes > 0:
            raise ConfigError(f"stage '{stage.name}' stops on a wall-clock budget (train.max_minutes="
                              f"{cfg.train.max_minutes:g}), so its number of steps depends on the machine: "
                              "--deterministic needs train.max_minutes=0 (training by epochs or train.max_steps)")
        plans.append(StagePlan(stage, folder, arguments, read_yaml(stage.config), stage.references()))
    return plans


def check_data(recipe: Recipe, data_root: Optional[str]) -> Path:
    """The dataset folder, read by the format's loader once: one DataError if it is missing or wrong."""
    hint = DATA_HINTS.get(recipe.data_format, f"a {recipe.data_format} dataset")
    if not data_root:
        raise DataError(f"recipe {recipe.name} needs --data-root: {hint} ({recipe.data_format} format); "
                        "or run its synthetic twin with --synthetic")
    root = Path(data_root).expanduser().absolute()
    if not root.exists():
        raise DataError(f"--data-root {root} does not exist; recipe {recipe.name} needs {hint} "
                        f"({recipe.data_format} format)")
    from data.formats import DATASETS

    try:
        table = DATASETS.get(recipe.data_format)(root, {})
    except UserError as err:
        raise DataError(f"--data-root {root} is not a {recipe.data_format} dataset ({hint}): {err}") from err
    if not len(table):
        raise DataError(f"--data-root {root} holds no images of a {recipe.data_format} dataset ({hint})")
    return root


def _read_record(folder: Path) -> Optional[Dict[str, Any]]:
    try:
        record = json.loads((folder / STAGE_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _outputs_changed(record: Dict[str, Any], outputs: Dict[str, str]) -> List[str]:
    """How a stage's outputs differ from those its record lists (a record without them predates the check)."""
    recorded = record.get("outputs")
    if not isinstance(recorded, dict):
        return ["its record lists none"]
    return changed_outputs(recorded, outputs)


def _as_reference(fingerprint: str, outputs: Dict[str, str]) -> str:
    """What a later stage that reads this one's folder depends on: how it was made and what it holds
    (a stage run again after its export was edited may not give the same export)."""
    return stage_fingerprint({"fingerprint": fingerprint, "outputs": outputs})


def _clear_own_files(folder: Path) -> None:
    """Remove the runner's own files from a stage folder before its script runs again: eval.py
    replaces its folder as a whole and refuses one holding only foreign files."""
    for name in (STAGE_RECORD, STAGE_LOG):
        (folder / name).unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _last_lines(path: Path, count: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").replace("\r", "\n")
    except OSError:
        return ""
    return "\n".join([line for line in text.splitlines() if line.strip()][-count:])


def stage_env(deterministic: bool) -> Dict[str, str]:
    env = dict(os.environ)
    if deterministic:
        env.setdefault("PYTHONHASHSEED", "0")  # set and dict orders of strings, the same every run
        env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS needs on GPUs
    return env


def _run_script(command: List[str], log_path: Path, env: Mapping[str, str], echo: bool) -> int:
    """Run `command` from the repository root, its output (stdout and stderr) into `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        log.write(f"$ {shlex.join(command)}\n\n".encode())
        log.flush()
        process = subprocess.Popen(command, cwd=REPO, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert process.stdout is not None
        for chunk in iter(lambda: process.stdout.read1(1 << 16), b""):
            log.write(chunk)
            if echo:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
        return process.wait()


def run_stages(recipe: Recipe, plans: List[StagePlan], out: Path, *, data_sha: str, code: Optional[str] = None,
               force: bool = False, deterministic: bool = False, echo: bool = True,
               scripts: Mapping[str, Path] = SCRIPT_FILES, say: Callable[[str], None] = print) -> List[StageResult]:
    """Run (or skip) every stage in order; a failing stage raises StageFailed naming its log."""
    code = code or code_version()
    env = stage_env(deterministic)
    fingerprints: Dict[str, str] = {}
    results = []
    for index, plan in enumerate(plans, start=1):
        stage, folder = plan.stage, plan.folder
        parts = stage_parts(script=stage.script, config=plan.config, args=plan.arguments, code=code, data=data_sha,
                            references={name: fingerprints[name] for name in plan.references})
        fingerprint = stage_fingerprint(parts)
        head = f"[{index}/{len(plans)}] {stage.name}"
        record = _read_record(folder)
        outputs = stage_outputs(folder) if record else {}
        outputs_changed = _outputs_changed(record, outputs) if record else []
        if record and record.get("fingerprint") == fingerprint and not outputs_changed and not force:
            fingerprints[stage.name] = _as_reference(fingerprint, outputs)
            say(f"{head}: skipped, unchanged since its last run ({fingerprint[:12]})")
            results.append(StageResult(stage.name, fingerprint, False, "unchanged", 0.0, record))
            continue
        if force:
            reason = "--force"
        elif record is None:
            reason = "no earlier run"
        elif record.get("fingerprint") == fingerprint:
            reason = "its outputs changed since its last run: " + ", ".join(outputs_changed)
        else:
            reason = "changed: " + (", ".join(changed_parts(record.get("parts") or {}, parts)) or "fingerprint")
        say(f"{head}: running {stage.script}.py --config {stage.config.name} ({reason})")
        _clear_own_files(folder)
        staged_log = out / LOG_STAGING / f"{stage.name}.log"
        # A stage runs from its start: the train run an earlier reproduce left in the stage's folder is replaced.
        fresh = ["--overwrite"] if stage.script == "train" else []
        command = [sys.executable, str(scripts[stage.script]), "--config", str(stage.config), *fresh, *plan.arguments]
        start = time.perf_counter()
        status = _run_script(command, staged_log, env, echo)
        seconds = time.perf_counter() - start
        folder.mkdir(parents=True, exist_ok=True)
        log = folder / STAGE_LOG
        os.replace(staged_log, log)
        if status != 0:
            tail = _last_lines(log)
            say(f"{head}: FAILED after {seconds:.1f} s (exit status {status}); last lines of {log}:\n{tail}")
            raise StageFailed(f"stage '{stage.name}' failed ({stage.script}.py exited with status {status}); "
                              f"its log: {log}")
        outputs = stage_outputs(folder)
        fingerprints[stage.name] = _as_reference(fingerprint, outputs)
        record = {"stage": stage.name, "fingerprint": fingerprint, "parts": parts, "script": stage.script,
                  "config": str(stage.config), "arguments": plan.arguments, "seconds": round(seconds, 3),
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "outputs": outputs}
        atomic_write_text(folder / STAGE_RECORD, json.dumps(record, indent=1) + "\n")
        say(f"{head}: done in {seconds:.1f} s")
        results.append(StageResult(stage.name, fingerprint, True, reason, seconds, record))
    with contextlib.suppress(OSError):  # empty once every log has moved into its stage's folder
        (out / LOG_STAGING).rmdir()
    return results


def submission_path(plans: List[StagePlan]) -> Optional[Path]:
    """The submission of the last eval stage, if there is one."""
    evals = [plan for plan in plans if plan.stage.script == "eval"]
    return evals[-1].folder / SUBMISSION if evals else None

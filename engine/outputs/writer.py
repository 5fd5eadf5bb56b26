"""One writer for every eval.py task: the submission, the task's table (predictions.csv or
clusters.csv), metrics.json, manifest.json, config.yaml, review.npz (what `reidzoo-review` reads)
and report.html, staged in a temporary folder that replaces the output folder only once all of
them are written."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import pandas as pd

from core.config import save_config
from core.schema import EvalConfig
from engine.outputs.artifacts import MANIFEST, staged_directory, write_json
from engine.outputs.review_file import REVIEW_FILE, ReviewData, save_review
from engine.outputs.submission import write_submission

SUBMISSION = "submission.csv"
METRICS = "metrics.json"
REPORT = "report.html"


@dataclass
class RunOutputs:
    """What a task decided, ready to be written."""

    kind: str  # the submission kind (engine.outputs.submission)
    predictions: Any  # what write_submission takes for that kind
    table_name: str  # the task's own table: predictions.csv or clusters.csv
    write_table: Callable[[Path], None]
    metrics: Optional[Dict[str, Any]]  # against the query labels, when there are any
    manifest: Dict[str, Any]
    write_report: Callable[[Path], None]
    decisions: Dict[str, Any]  # the thresholds (and weights) the run decided with, as the manifest records them
    review: Optional[ReviewData] = None  # the pairs and thresholds a person may review (engine/review)
    more_tables: Dict[str, Callable[[Path], None]] = field(default_factory=dict)  # file name -> its writer (population.csv)


@dataclass
class RunResult:
    """Where a run's files are, and what it measured and decided."""

    output_dir: Path
    submission: Path
    table: Path  # predictions.csv or clusters.csv
    metrics: Optional[Dict[str, Any]]
    report: Optional[Path]
    decisions: Dict[str, Any]


def write_run(cfg: EvalConfig, table: pd.DataFrame, out: RunOutputs) -> RunResult:
    """Write `out` into cfg.output_dir; on any error the folder is left as it was."""
    final = Path(cfg.output_dir)
    with staged_directory(final) as staging:
        write_submission(staging / SUBMISSION, out.kind, table, out.predictions)
        out.write_table(staging / out.table_name)
        for name, write in out.more_tables.items():
            write(staging / name)
        if out.metrics is not None:
            write_json(staging / METRICS, out.metrics)
        write_json(staging / MANIFEST, out.manifest)
        save_config(cfg, staging / "config.yaml")
        if out.review is not None:
            save_review(staging / REVIEW_FILE, out.review)
        if cfg.report:
            out.write_report(staging / REPORT)
    final = final.expanduser().absolute()
    return RunResult(final, final / SUBMISSION, final / out.table_name, out.metrics,
                     final / REPORT if cfg.report else None, out.decisions)

"""The run's files again, with a person's answers applied: submission.csv, the task's table with a
`decided_by` column (person / model), review-summary.json (the answers, what they changed, the
thresholds re-fitted) and review.html (the decisions a person made, for a person to read).

`write_reviewed` fills a folder the review program owns (`reviewed.json` marks it, so only such a
folder is ever replaced); `write_into_run` writes into an eval.py output folder that eval.py has
just written (`eval.py review=ANSWERS`), each file atomically.
"""
from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import pandas as pd

from core.csv_cells import plain_cells, safe_cells
from core.errors import DataError
from core.files import atomic_folder, atomic_write_text
from core.ownership import MARKER_FILES, REVIEW, check_output_folder, may_replace, run_marker
from engine.outputs.html import CSS, table
from engine.outputs.submission import write_submission
from engine.review.run import ReviewRun
from engine.review.session import ReviewSession
from engine.review.tasks import Decisions, frame_with_decisions

SUMMARY = "review-summary.json"
PAGE = "review.html"
TABLES = {"identify": ("predictions.csv", "prediction"), "cluster": ("clusters.csv", "cluster")}


def submission_table(run: ReviewRun) -> pd.DataFrame:
    """The table write_submission checks a submission against, from the run's images."""
    images = run.images
    return pd.DataFrame({"image_id": images["image_id"], "dataset": images["dataset"],
                         "split": ["query" if q else "database" for q in images["is_query"]],
                         "identity": [i or None for i in images["identity"]]})


def task_table(run: ReviewRun, decisions: Decisions) -> pd.DataFrame:
    name, column = TABLES[run.task]
    queries = run.images[run.images["is_query"]].reset_index(drop=True)
    if run.task == "cluster":
        frame = pd.DataFrame({"image_id": queries["image_id"], "dataset": queries["dataset"], "cluster": "",
                              "joined_identity": decisions.joined})
        return frame_with_decisions(frame, decisions, column)
    path = run.folder / name
    try:
        frame = plain_cells(pd.read_csv(path, dtype=str, keep_default_na=False))
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"cannot read {path}, which the review rewrites: {err}") from err
    if len(frame) != len(queries) or "known" not in frame.columns:
        raise DataError(f"{path} does not list the run's {len(queries)} queries: run eval.py again")
    out = frame_with_decisions(frame, decisions, column)
    out["known"] = ["false" if v == "new_individual" else "true" for v in decisions.values]
    return out


def _page(run: ReviewRun, decisions: Decisions, summary: Dict[str, Any]) -> str:
    queries = run.images[run.images["is_query"]].reset_index(drop=True)
    person = [[queries["image_id"][q], queries["dataset"][q], decisions.values[q]]
              for q in range(len(queries)) if decisions.by_person[q]]
    changes = [[k, v] for k, v in summary["changes"].items()]
    refits = [[d, f"{r['from']:.3f}", f"{r['to']:.3f}", r["answers"]] for d, r in summary["refits"].items()]
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>reidzoo review</title>",
             f"<style>{CSS}</style></head><body><h1>Decisions a person made</h1>",
             f"<p>{summary['answers']} answers applied to {html.escape(str(run.folder))} from "
             f"{html.escape(summary['answers_file'])}; {len(person)} of {len(queries)} decisions follow them "
             "(<code>decided_by = person</code> in the table).</p>",
             "<h2>What the answers changed</h2>", table(["", ""], changes)]
    if refits:
        parts += ["<h2>Thresholds re-fitted from the answers</h2>", table(["dataset", "run", "now", "answers"], refits)]
    parts += ["<h2>Decided by a person</h2>", table(["image", "dataset", "decision"], person), "</body></html>"]
    return "".join(parts)


def _write(folder: Path, run: ReviewRun, decisions: Decisions, summary: Dict[str, Any]) -> None:
    name, _ = TABLES[run.task]
    queries = run.images.loc[run.images["is_query"], "image_id"].tolist()
    write_submission(folder / "submission.csv", run.data.settings.kind, submission_table(run),
                     dict(zip(queries, decisions.values, strict=True)))
    atomic_write_text(folder / name, safe_cells(task_table(run, decisions)).to_csv(index=False))
    summary = {**summary, "decided_by_person": int(decisions.by_person.sum())}
    atomic_write_text(folder / SUMMARY, json.dumps(summary, indent=2) + "\n")
    atomic_write_text(folder / PAGE, _page(run, decisions, summary))


def review_summary(session: ReviewSession) -> Dict[str, Any]:
    """review-summary.json's content for the session's current state."""
    progress = session.progress()
    return {"answers": progress["answers"], "by_verdict": progress["by_verdict"], "changes": progress["changes"],
            "refits": progress["refits"], "thresholds": progress["thresholds"],
            "answers_file": str(session.store.path), "selector": session.options.selector,
            "answers_about_other_images": progress["ignored"]}


def write_reviewed(folder, run: ReviewRun, decisions: Decisions, summary: Dict[str, Any],
                   extra: Optional[Dict[str, Path]] = None) -> Path:
    """Write the reviewed outputs into `folder`, a new or empty folder or one this program wrote;
    `extra`: files copied in beside them ({name: source})."""
    folder = Path(folder).expanduser().absolute()
    check_output_folder(folder, {"the run folder": str(run.folder)} if folder != run.folder / "reviewed" else {})
    if folder.exists() and not may_replace(folder, REVIEW):
        raise DataError(f"{folder} exists and is not a folder reidzoo-review wrote: choose a new or empty folder")
    with atomic_folder(folder, may_replace=lambda f: may_replace(f, REVIEW)) as staging:
        (staging / MARKER_FILES[REVIEW]).write_text(json.dumps(run_marker(REVIEW), indent=2) + "\n")
        _write(staging, run, decisions, summary)
        for name, source in (extra or {}).items():
            shutil.copyfile(source, staging / name)
    return folder


def write_into_run(run: ReviewRun, decisions: Decisions, summary: Dict[str, Any]) -> Path:
    """eval.py review=: the reviewed files replace the ones eval.py has just written in its own folder."""
    _write(run.folder, run, decisions, summary)
    return run.folder


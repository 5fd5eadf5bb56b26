"""eval.py's pipeline (task=identify; task=cluster is engine/clustering/pipeline.py): models -> outputs (cached) -> scorers (+ a keypoint matcher re-ranking the
shortlist, with rerank.matcher) -> calibration -> soft vote -> threshold -> submission.csv,
predictions.csv, metrics.json, manifest.json, report.html.

Each step has its module in engine/evaluation/: model_outputs (load, probe, extract), scorers and
voting (the ensemble), decision (threshold tuning and the open-set decision), query_metrics,
submission, predictions (top-5 identities per query, for people), artifacts (output folder,
manifest) and report. Outputs go to a temporary folder next
to `output_dir`, renamed into place at the end; on any error `output_dir` is left as it was.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict

import pandas as pd

from core.config import from_dict, save_config, to_dict
from core.errors import DataError
from core.schema import EvalConfig
from data.splits import gallery_and_query
from data.validate import require_query
from engine.accel import say
from engine.evaluation.artifacts import (
    MANIFEST,
    check_output_dir,
    eval_reads,
    manifest,
    staged_directory,
    write_json,
)
from engine.evaluation.choice import describe_choice
from engine.evaluation.decision import evaluate_outputs
from engine.evaluation.model_outputs import all_model_outputs
from engine.evaluation.predictions import PREDICTIONS, write_predictions
from engine.evaluation.query_metrics import has_query_labels, query_metrics
from engine.evaluation.submission import submission_kind, write_submission
from engine.tables import dataset_table
from zoo.loading import looks_like_path


def check_eval_config(cfg: EvalConfig) -> None:
    """Fail fast, before any data is read or model loaded. Values are checked by the schema's rules
    (again here, for configs built in code rather than read by load_config)."""
    from_dict(EvalConfig, to_dict(cfg))
    submission_kind(cfg.data.format, cfg.submission, cfg.task)
    check_output_dir(Path(cfg.output_dir), eval_reads(cfg))
    for spec in cfg.models:
        if looks_like_path(spec) and not Path(spec).expanduser().exists():
            raise DataError(f"no model at {spec}: run `python train.py` first or pass models=[...]")


@dataclass
class EvaluationData:
    table: pd.DataFrame  # the whole dataset
    gallery: pd.DataFrame  # labelled database rows
    query: pd.DataFrame  # query rows, in table order
    rows: pd.DataFrame  # gallery then query: the rows models embed
    kind: str  # submission kind


def load_evaluation_data(cfg: EvalConfig) -> EvaluationData:
    """The dataset split into gallery and queries; an empty query set or gallery is a DataError."""
    table = dataset_table(cfg.data)
    require_query(table, filters=", ".join(f"{k}={v}" for k, v in (("data.datasets", cfg.data.datasets),
                                                                   ("data.species", cfg.data.species)) if v))
    gallery, query = gallery_and_query(table)
    if gallery.empty:
        raise DataError("the database has no labelled images: there is nothing to match the queries against")
    rows = pd.concat([gallery, query], ignore_index=True)
    return EvaluationData(table, gallery, query, rows, submission_kind(cfg.data.format, cfg.submission, cfg.task))


def run_evaluation(cfg: EvalConfig, accelerator=None) -> Dict[str, Any]:
    """Evaluate cfg.models on cfg.data and write the outputs into cfg.output_dir.

    Returns {"output_dir", "submission", "predictions", "metrics" (or None), "report" (or None),
    "threshold"} on the main process; other processes help with extraction and return {}.
    """
    if cfg.task == "cluster":
        from engine.clustering.pipeline import run_clustering

        return run_clustering(cfg, accelerator)
    check_eval_config(cfg)
    data = load_evaluation_data(cfg)
    table, gallery, query, rows, kind = data.table, data.gallery, data.query, data.rows, data.kind
    outputs = all_model_outputs(cfg, rows, set(gallery["identity"]), accelerator)
    matcher = None
    if cfg.rerank.matcher != "none":
        from engine.matching.scorer import build_matcher_scorer

        matcher = build_matcher_scorer(cfg, rows, accelerator)
    elif accelerator is not None and not accelerator.is_main_process:
        return {}
    say(accelerator, f"matching {len(query)} queries against {len(gallery)} database images"
                     + (f", re-ranking {cfg.rerank.shortlist} per query with {cfg.rerank.matcher}" if matcher else ""))
    # With a matcher every process runs the (deterministic) decision, so that they can share the
    # pairs to match; only the main process writes.
    ev = evaluate_outputs(cfg, gallery, query, outputs, kind, [matcher] if matcher else [])
    if accelerator is not None and not accelerator.is_main_process:
        return {}
    if ev.tuning is not None:
        say(accelerator, f"threshold tuned on {ev.tuning['queries']} validation queries from {ev.tuning['splits']} "
                         f"held-out split(s) of the database (threshold.min_queries={cfg.threshold.min_queries})")
    # Each weight tuned on the held-out split, in the order it was tuned (engine/evaluation/decision.py).
    tuned_weights = [("pair_head_weight", "pair head weight x"), ("matcher_weight", f"{cfg.rerank.matcher} weight "),
                     *((f"{kind}_weight", f"{kind} weight ") for kind in cfg.rerank.neighbours)]
    for key, what in tuned_weights:
        if key in ev.threshold:
            tried = ev.threshold[key]["validation_score"]
            say(accelerator, f"{what}{ev.threshold[key]['chosen']} chosen on the same split (validation score per "
                             "value: " + ", ".join(f"{w}: {v:.3f}" for w, v in tried.items()) + ")")
    if "scoring_choice" in ev.threshold:
        say(accelerator, describe_choice(ev.threshold["scoring_choice"]))
    if "adaptive" in ev.threshold:
        chosen = ev.threshold["adaptive"]
        say(accelerator, f"rerank.adaptive: margin {chosen['margin']} chosen on the same split (validation score "
                         f"{chosen['full_score']:.3f} matching every query; per margin: "
                         + ", ".join(f"{m}: {v:.3f}" for m, v in chosen["validation_score"].items()) + "); "
                         f"{ev.skipped} of {len(ev.decided)} queries certain without matching, "
                         f"{0 if ev.shortlist is None else int((ev.shortlist >= 0).sum())} query pairs re-scored")
    if matcher is not None:
        pairs = matcher.pairs
        say(accelerator, f"{cfg.rerank.matcher}: matched {pairs.matched} pairs here (the rest read from the cache): "
                         f"{ev.tuning_pairs} to calibrate it and tune its weight and the threshold on the database, "
                         f"{pairs.matched - ev.tuning_pairs} for the queries' shortlists; RANSAC on {pairs.verified}, "
                         f"{pairs.rejected} with fewer than {pairs.min_matches} tentative matches recorded without "
                         "inliers (rerank.min_matches)")
    metrics = query_metrics(cfg, gallery, query, ev) if has_query_labels(query) else None
    final = Path(cfg.output_dir)
    with staged_directory(final) as staging:
        write_submission(staging / "submission.csv", kind, table, ev.predictions)
        write_predictions(staging / PREDICTIONS, cfg, query, ev)
        if metrics is not None:
            write_json(staging / "metrics.json", metrics)
        write_json(staging / MANIFEST, manifest(cfg, table, outputs, ev, kind, matcher))
        save_config(cfg, staging / "config.yaml")
        if cfg.report:
            from engine.evaluation.report import write_report

            write_report(staging / "report.html", cfg=cfg, gallery=gallery, query=query, evaluation=ev,
                         metrics=metrics, rows=rows, matcher=matcher)
    final = final.expanduser().absolute()
    return {"output_dir": str(final), "submission": str(final / "submission.csv"),
            "predictions": str(final / PREDICTIONS), "metrics": metrics, "report": str(final / "report.html") if cfg.report else None,
            "threshold": ev.threshold}


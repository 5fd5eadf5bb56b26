"""eval.py task=identify: models -> outputs (cached) -> scorers (+ a keypoint matcher re-ranking the
shortlist, with rerank.matcher) -> calibration -> soft vote -> threshold -> submission.csv,
predictions.csv, metrics.json, manifest.json, report.html.

engine/prepare.py checks the config and gives the data, the models' outputs and the matcher; the
decision is decision.py (threshold and weights tuned on heldout.py's split of the database);
predictions.py, query_metrics.py, manifest.py and report.py make the files that engine/outputs
writes, staged so that on any error `output_dir` is left as it was.
"""
from __future__ import annotations

from core.errors import DataError
from core.schema import EvalConfig
from engine.accel import say
from engine.identify.decision import Evaluation, evaluate_outputs
from engine.identify.manifest import identify_manifest
from engine.identify.predictions import PREDICTIONS, write_predictions
from engine.identify.query_metrics import has_query_labels, query_metrics
from engine.identify.review_pairs import identify_review
from engine.outputs.writer import RunOutputs, RunResult, write_run
from engine.prepare import RunData, RunInputs, check_run_config, load_run_data, prepare_run
from engine.scoring.choice import describe_choice


def load_identify_data(cfg: EvalConfig) -> RunData:
    """The dataset as load_run_data splits it; identifying needs a labelled database."""
    data = load_run_data(cfg)
    if data.gallery.empty:
        raise DataError("the database has no labelled images: there is nothing to match the queries against")
    return data


def run_identification(cfg: EvalConfig, accelerator=None) -> RunResult | None:
    """Evaluate cfg.models on cfg.data and write the outputs into cfg.output_dir; the main process
    returns where they are, the other processes (they help with extraction and matching) None."""
    check_run_config(cfg)
    data = load_identify_data(cfg)
    inputs = prepare_run(cfg, data, accelerator)
    matcher = inputs.matcher
    if matcher is None and accelerator is not None and not accelerator.is_main_process:
        return None
    say(accelerator, f"matching {len(data.query)} queries against {len(data.gallery)} database images"
                     + (f", re-ranking {cfg.rerank.shortlist} per query with {cfg.rerank.matcher}" if matcher else ""))
    # With a matcher every process runs the (deterministic) decision, so that they can share the
    # pairs to match; only the main process writes.
    ev = evaluate_outputs(cfg, data.gallery, data.query, inputs.outputs, data.kind, [matcher] if matcher else [])
    if accelerator is not None and not accelerator.is_main_process:
        return None
    for line in _decision_lines(cfg, ev, inputs):
        say(accelerator, line)
    metrics = query_metrics(cfg.threshold, data.gallery, data.query, ev) if has_query_labels(data.query) else None

    def write_report(path):
        from engine.identify.report import write_report

        write_report(path, cfg=cfg, gallery=data.gallery, query=data.query, evaluation=ev, metrics=metrics,
                     rows=data.rows, matcher=matcher)

    return write_run(cfg, data.table, RunOutputs(
        data.kind, ev.predictions, PREDICTIONS, lambda path: write_predictions(path, cfg.data, data.query, ev), metrics,
        identify_manifest(cfg, data, inputs, ev), write_report, ev.threshold.to_dict(),
        identify_review(cfg, data.rows, data.gallery, data.query, ev, data.kind)))


def _decision_lines(cfg: EvalConfig, ev: Evaluation, inputs: RunInputs) -> list:
    """What the held-out split decided, and what the matcher matched, for the console."""
    lines = []
    if ev.tuning is not None:
        lines.append(f"threshold tuned on {ev.tuning.queries} validation queries from {ev.tuning.splits} "
                     f"held-out split(s) of the database (threshold.min_queries={cfg.threshold.min_queries})")
        lines.extend(ev.threshold.threshold.warnings())
    # Each weight tuned on the held-out split, in the order it was tuned (engine/identify/heldout.py).
    what = {"pair_head": "pair head weight x", "matcher": f"{cfg.rerank.matcher} weight "}
    for kind, choice in ev.threshold.weights.items():
        lines.append(f"{what.get(kind, f'{kind} weight ')}{choice.chosen} chosen on the same split (validation score "
                     "per value: " + ", ".join(f"{w}: {v:.3f}" for w, v in choice.validation_score.items()) + ")")
    for name, choice in ev.threshold.options.items():  # a keypoint weighting on or off, a geometry
        shown = {True: "on", False: "off"}.get(choice.chosen, choice.chosen)
        lines.append(f"{name}: {shown} chosen on the same split (validation score per value: "
                     + ", ".join(f"{v}: {s:.3f}" for v, s in choice.validation_score.items()) + ")")
    if ev.threshold.scoring_choice is not None:
        lines.append(describe_choice(ev.threshold.scoring_choice))
    if ev.threshold.adaptive is not None:
        chosen = ev.threshold.adaptive
        lines.append(f"rerank.adaptive: margin {chosen.margin} chosen on the same split (validation score "
                     f"{chosen.full_score:.3f} matching every query; per margin: "
                     + ", ".join(f"{m}: {v:.3f}" for m, v in chosen.validation_score.items()) + "); "
                     f"{ev.skipped} of {len(ev.decided)} queries certain without matching, "
                     f"{0 if ev.shortlist is None else int((ev.shortlist >= 0).sum())} query pairs re-scored")
    matcher = inputs.matcher
    if matcher is not None:
        pairs = matcher.pairs
        lines.append(f"{cfg.rerank.matcher}: matched {pairs.matched} pairs here (the rest read from the cache): "
                     f"{ev.tuning_pairs} to calibrate it and tune its weight and the threshold on the database, "
                     f"{pairs.matched - ev.tuning_pairs} for the queries' shortlists; RANSAC on {pairs.verified}, "
                     f"{pairs.rejected} with fewer than {pairs.min_matches} tentative matches recorded without "
                     "inliers (rerank.min_matches)")
    return lines

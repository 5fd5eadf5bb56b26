"""Evaluate re-identification models: a submission, metrics and a report.

    python eval.py                                        # the model `python train.py` exported, on the synthetic set
    python eval.py models=[runs/a/export,runs/b/export] weights=[0.6,0.4]
    python eval.py --config configs/eval/animalclef2025.yaml data.root=/data/animalclef
    python eval.py --config configs/eval/rerank.yaml      # + ALIKED/LightGlue re-ranking of the shortlist
    python eval.py models=[runs/a/export] data.format=folders data.root=GALLERY data.query_root=NEW_PHOTOS
                                                          # identify new photos against ROOT/<identity>/ folders
    python eval.py task=cluster data.format=animalclef2026 data.root=DATA models=[...]
                                                          # cluster the test images by individual (AnimalCLEF 2026)
    python eval.py task=cluster data.format=folders data.query_root=PHOTOS models=[...] cluster.threshold=0.8
                                                          # group a folder of unlabelled photos by individual
    python eval.py ... review=OLD_RUN/review-answers.sqlite  # apply a person's answers (reidzoo-review) to this run
    accelerate launch eval.py --config configs/eval/default.yaml    # extraction (and matching) split across processes

Any config key can be overridden as key=value (dotted, typed); `--print-config` shows them all.
Outputs in output_dir: submission.csv, predictions.csv (each query's decision and top-5 identities
with calibrated scores), metrics.json (when query labels are known), manifest.json, report.html,
config.yaml, review.npz (what `reidzoo-review RUN_DIR` shows a person).
"""
from __future__ import annotations

import gc
import sys
from pathlib import Path

from core.cli import config_parser, parse_config
from core.errors import ConfigError, cli_entry
from core.schema import EvalConfig

DEFAULT_RECIPE = "configs/eval/default.yaml"  # relative to this file, so it is found from any folder


def _files(result, table: str) -> list:
    """The output files' lines: the submission, the task's table, metrics, manifest, report."""
    lines = [f"submission: {result.submission}", f"{table}: {result.table}"]
    if result.metrics:
        lines.append(f"metrics: {result.output_dir / 'metrics.json'}")
    lines.append(f"manifest: {result.output_dir / 'manifest.json'}")
    if result.report:
        lines.append(f"report: {result.report}")
    return lines


def cluster_summary(result) -> str:
    """task=cluster: the population estimate per dataset, and the mean ARI where the test images carry labels."""
    from engine.cluster.population import read_population

    lines = []
    metrics = result.metrics
    if metrics:
        lines.append(f"mean ARI {metrics['ARI']:.4f}  AMI {metrics['AMI']:.4f}  B-cubed F1 {metrics['bcubed_F1']:.4f}  "
                     f"({metrics['images']} labelled test images)")
        for name, part in metrics["per_dataset"].items():
            lines.append(f"  {name}: ARI {part['ARI']:.4f}, {part['clusters']} clusters for {part['individuals']} individuals")
    for row in read_population(result.output_dir):
        interval = "" if row["low_90"] is None else f" (90 % interval {row['low_90']}-{row['high_90']})"
        lines.append(f"population {row['dataset']}: {_individuals(row['individuals'])}{interval} counted at threshold "
                     f"{row['count_threshold']:.4g}; {row['clusters']} clusters written at {row['threshold']:.4g} "
                     f"(set by {row['strategy']})")
    return "\n".join(lines + _files(result, "clusters"))


def _individuals(count: int) -> str:
    return f"{count} individual{'' if count == 1 else 's'}"


def identify_summary(result) -> str:
    lines = []
    metrics = result.metrics
    if metrics:
        tuned = metrics["tuned"]
        lines.append(f"score {tuned['score']:.4f}  BAKS {tuned['BAKS']:.4f}  BAUS {tuned['BAUS']:.4f}  "
                     f"(tuned threshold, {metrics['queries']} queries)")
        hindsight = metrics.get("hindsight", {})
        if "score" in hindsight:
            lines.append(f"best threshold in hindsight: score {hindsight['score']:.4f}  BAKS {hindsight['BAKS']:.4f}  "
                         f"BAUS {hindsight['BAUS']:.4f}")
    return "\n".join(lines + _files(result, "predictions"))


@cli_entry
def main(argv=None):
    """The run's RunResult (engine.outputs.writer) on the main process, None on the others and with --print-config."""
    import engine.components  # noqa: F401  (the built-in names a config may use, registered)

    args, cfg = parse_config(EvalConfig, config_parser(__doc__, DEFAULT_RECIPE, "models=[runs/x/export]"), argv, Path(__file__).resolve().parent / DEFAULT_RECIPE)
    if args.print_config:
        return None
    if cfg.review and not Path(cfg.review).expanduser().is_file():
        raise ConfigError(f"review={cfg.review}: no such answers file (reidzoo-review keeps them in RUN_DIR/review-answers.sqlite)")
    # Heavy imports only once the config is known to be valid.
    from engine.accel import eval_precision, make_accelerator

    if cfg.task == "cluster":
        from engine.cluster.pipeline import run_clustering as run

        summary = cluster_summary
    else:
        from engine.identify.pipeline import run_identification as run

        summary = identify_summary
    accelerator = make_accelerator(eval_precision())
    result = run(cfg, accelerator)
    if result is not None:
        print(summary(result))
        if cfg.review:
            from engine.review.commands import apply_to_eval_run

            print(apply_to_eval_run(result.output_dir, cfg.review))
    return result


def console() -> None:
    """The `reidzoo-eval` command (setup.cfg's console_scripts): main's result is for callers in Python."""
    main(sys.argv[1:])
    # Python's last garbage collection at exit walks every object torch, pandas and the run made, a
    # large part of a run whose outputs are cached (docs/results.md). The process ends now, and its
    # files are written and closed, so nothing needs that collection's finalisers.
    gc.freeze()


if __name__ == "__main__":
    console()

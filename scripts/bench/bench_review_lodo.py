"""bench_review.py lodo: the threshold re-fit where it acts, on a dataset without train rows; not
run on its own.

It reviews the runs `bench_cluster.py lodo --out LODO_OUT` made (each dataset of each part in turn
with its train rows removed, eval.py's default method), with each --refits value, through
bench_review.py's oracle sweep, and prints the ARI of the dataset treated as unlabelled (the only one
`--refit auto` re-fits) after each number of answers per dataset. The validation runs are those of
--val-criterion (the default `cluster.criterion`), the test runs the defaults'. Results are kept in
LODO_OUT/review-lodo-<matcher>.json, and a sweep already there is not run again.

    python scripts/bench/bench_review.py lodo --lodo-out LODO_OUT --parts val,test
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
from bench_cluster_lodo import datasets
from benchmarking import cell, comma_list, cpu_line, scored_by

from core.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("--lodo-out", required=True, help="the --out of a bench_cluster.py lodo run")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--parts", default="val,test")
    parser.add_argument("--selectors", default="default")
    parser.add_argument("--refits", default="auto,never")
    parser.add_argument("--answers", default="0,25,50,100,200")
    parser.add_argument("--val-criterion", default="ari", help="the cluster.criterion of the validation runs to review")
    parser.add_argument("--matcher", default=None, help="the --matcher of the lodo runs")


def lodo_main(args, sweep: Callable) -> None:
    """Every sweep (bench_review.sweep) the arguments name, then a table per part."""
    print(f"CPU: {cpu_line()}", flush=True)
    root = Path(args.lodo_out)
    steps = [int(s) for s in comma_list(args.answers)]
    saved = root / f"review-lodo-{scored_by(args.matcher)}.json"
    results = json.loads(saved.read_text()) if saved.is_file() else {}
    names = {"val": args.val_criterion, "test": "default"}
    seeds = comma_list(args.seeds)
    for seed in seeds:
        for part in comma_list(args.parts):
            for dataset in datasets():
                run = root / f"lodo-{scored_by(args.matcher)}" / f"s{seed}" / f"{part}-no-{dataset}-{names[part]}"
                truth = root / "protocol-lodo" / f"{part}-no-{dataset}" / "solution.csv"
                if not (run / "review.npz").is_file():
                    raise UserError(f"no run {run}: run bench_cluster.py lodo --out {root} --parts {part} first")
                for selector in comma_list(args.selectors):
                    for refit in comma_list(args.refits):
                        key = f"{part}|s{seed}|{dataset}|{selector}|{refit}"
                        if key not in results:
                            found = sweep(run, truth, selector, 0.0, int(seed), steps, refit=refit)
                            results[key] = {str(n): round(r[f"ARI {dataset}"], 4) for n, r in found.items()}
                            saved.write_text(json.dumps(results, indent=1) + "\n")
                        print(key, json.dumps(results[key]), flush=True)
    for part in comma_list(args.parts):
        _table(results, part, seeds, comma_list(args.selectors), comma_list(args.refits), steps)


def _table(results: Dict[str, dict], part: str, seeds: List[str], selectors: List[str], refits: List[str],
           steps: List[int]) -> None:
    """Per selector and re-fit: each dataset's ARI after N answers, and their mean, per seed."""
    print(f"\n{part} parts: ARI of the dataset treated as unlabelled after N answers per dataset "
          f"(seed {' / seed '.join(seeds)})\n")
    print("| selector | refit | dataset | " + " | ".join(f"N={n}" for n in steps) + " |")
    print("|---|---|---|" + "---|" * len(steps))
    for selector in selectors:
        for refit in refits:
            rows = {d: [results.get(f"{part}|s{seed}|{d}|{selector}|{refit}") for seed in seeds] for d in datasets()}
            for d, by_seed in rows.items():
                print(f"| {selector} | {refit} | {d} | " + " | ".join(
                    _cells([r and r[str(n)] for r in by_seed]) for n in steps) + " |")
            print(f"| {selector} | {refit} | mean | " + " | ".join(
                _cells([_mean([runs[k] and runs[k][str(n)] for runs in rows.values()]) for k in range(len(seeds))])
                for n in steps) + " |")


def _mean(values: List[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _cells(values: List[Optional[float]]) -> str:
    return " / ".join(cell(v) for v in values)

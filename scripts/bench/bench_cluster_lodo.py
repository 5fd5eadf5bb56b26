"""bench_cluster.py lodo: thresholds for datasets without train rows, chosen and checked by leaving
each labelled dataset out in turn (AnimalCLEF 2026 layout; docs/clustering.md, issue 37).

Protocol (OUT/protocol-lodo): the identity splits of `real` (bench_cluster_real.py: DogFaceNet-dev,
LionData, ZebraStripes, the synthetic set; the pooled training part and its model are `real`'s,
trained once per seed under the same OUT), but every dataset keeps its train rows in the
validation and test parts. Each part comes in variants: `all` (every dataset labelled) and
`no-<d>` per dataset d, whose train rows are removed as if it had none (its test rows and answers
unchanged, so it is clustered without anchors and its threshold comes from `cluster.unlabelled`).

Per seed, part and variant, eval.py task=cluster (its default method and, unless --matcher says
otherwise, its default keypoint matcher; `--matcher none`: global scores only) runs once
per criterion of --criteria; each run records what every registered unlabelled strategy chose for
the dataset without train rows, its ARI and its count (metrics.json other_strategies). Beside it:
  today   on the test part, the same with the code before issue 37 (--today: a plain export of that commit)
  DBSCAN  the organisers' baseline on the same embeddings (eps tuned per dataset by ARI on its train
          rows; the dataset without train rows takes the eps best on average over the others)

The default is chosen on the validation part only. Among the (strategy, criterion) pairs whose mean
ARI over the datasets treated as unlabelled (one per `no-<d>` variant) is at least that of
transfer / ari (what eval.py did before), `cluster.unlabelled`, `cluster.criterion` and
`cluster.count_criterion` (`count`, or the criterion itself: the count is then the clusters') are
the ones whose counts have the lowest mean |log(estimate / truth)| over every dataset, labelled
(variant `all`) and treated as unlabelled. The test part, run with the defaults in the code (--test-overrides
to try others), is reported against the targets: every count within 25 % of the truth, the truth
inside the 90 % interval, ARI of each dataset treated as unlabelled at least DBSCAN's, mean ARI not
below today's.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pandas as pd
from bench_cluster_real import SOURCES, build_protocol, dbscan_on, train
from benchmarking import REPO, comma_list, cpu_line, execute, matcher_of, scored_by

ALL = "all"
WITHIN = 0.25  # the count target: within 25 % of the truth


def add_arguments(parser) -> None:
    parser.add_argument("--data-root", required=True, help="folder holding DogFaceNet-dev, LionData, ZebraStripes")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget of the pooled model")
    parser.add_argument("--steps", type=int, default=0,
                        help="train by this many steps instead of --minutes (a budget in steps does not shrink on "
                             "cores shared with other jobs)")
    parser.add_argument("--criteria", default="ari,ami", help="cluster.criterion values tried on the validation part")
    parser.add_argument("--parts", default="val,test")
    parser.add_argument("--matcher", default=None,
                        help="rerank.matcher of every eval.py run (default: eval.py's own; none: the embeddings alone)")
    parser.add_argument("--today", default="", help="a plain export of the code before issue 37, run as `today` on the "
                                                    "test part")
    parser.add_argument("--test-overrides", default="", help="eval.py key=value for the test part's runs")


def datasets() -> List[str]:
    return [*SOURCES, "synthetic"]


def variant_root(protocol: Path, part: str, variant: str) -> Path:
    """The part's folder for `variant`: `all` is the part itself; `no-<d>` is made beside it."""
    if variant == ALL:
        return protocol / part
    out = protocol / f"{part}-{variant}"
    if (out / "metadata.csv").is_file():
        return out
    left_out = variant[len("no-"):]
    source = protocol / part
    staging = protocol / f".{part}-{variant}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    metadata = pd.read_csv(source / "metadata.csv", dtype=str, keep_default_na=False)
    metadata[~((metadata["dataset"] == left_out) & (metadata["split"] == "train"))].to_csv(staging / "metadata.csv",
                                                                                            index=False)
    shutil.copy(source / "solution.csv", staging / "solution.csv")
    for link in source.glob("images_*"):
        os.symlink(os.readlink(link), staging / link.name, target_is_directory=True)
    staging.rename(out)
    return out


def eval_run(args, root: Path, export: Path, name: str, seed: int, overrides: List[str], code: Path) -> dict:
    """metrics.json of one eval.py task=cluster run (reused when it exists)."""
    out = Path(args.out) / f"lodo-{scored_by(args.matcher)}" / f"s{seed}" / name
    if not (out / "metrics.json").is_file():
        command = [sys.executable, str(code / "eval.py"), "task=cluster", "data.format=animalclef2026",
                   f"data.root={root}", f"models=[{export}]", f"output_dir={out}", f"seed={seed}",
                   f"embed_cache={Path(args.out) / 'embeddings'}", f"rerank.matcher={matcher_of(args.matcher)}",
                   "report=false", *overrides]
        start = time.perf_counter()
        execute(command, out.parent / f"{name}.log", f"{name} seed {seed}")
        (out / "wall.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["wall_s"] = float((out / "wall.txt").read_text())
    return metrics


def _row(metrics: dict, dataset: str) -> dict:
    """What the tables need of one dataset in one run."""
    part = metrics["per_dataset"][dataset]
    population = metrics.get("population", {}).get(dataset, {})
    return {"ARI": part["ARI"], "clusters": part["clusters"], "truth": part["individuals"],
            "estimate": population.get("individuals", part["clusters"]), "low": population.get("low"),
            "high": population.get("high"), "strategy": population.get("strategy"),
            "other": metrics.get("other_strategies", {}).get(dataset, {})}


def run_part(args, protocol: Path, part: str, export: Path, seed: int, runs: Dict[str, List[str]],
             today: Optional[Path] = None) -> dict:
    """Per variant and run name: the rows of every dataset; `today`'s and DBSCAN's beside them."""
    found: Dict[str, dict] = {}
    for variant in [ALL, *[f"no-{d}" for d in datasets()]]:
        root = variant_root(protocol, part, variant)
        found[variant] = {}
        for name, overrides in runs.items():
            metrics = eval_run(args, root, export, f"{part}-{variant}-{name}", seed, overrides, REPO)
            found[variant][name] = {d: _row(metrics, d) for d in metrics["per_dataset"]}
        if today is not None:
            metrics = eval_run(args, root, export, f"{part}-{variant}-today", seed, [], today)
            found[variant]["today"] = {d: _row(metrics, d) for d in metrics["per_dataset"]}
        dbscan = dbscan_on(root, export, args)
        found[variant]["DBSCAN"] = {d: {"ARI": v, "clusters": dbscan["clusters"][d]}
                                    for d, v in dbscan["per_dataset"].items()}
        print(f"seed {seed} {part} {variant}: " + json.dumps(
            {name: {d: round(r["ARI"], 4) for d, r in rows.items()} for name, rows in found[variant].items()}), flush=True)
    return found


def _error(estimate: float, truth: float) -> float:
    return abs(float(np.log(max(estimate, 1) / truth)))


COUNT_SOURCES = ("count threshold", "the clusters")  # cluster.count_criterion = count, or = cluster.criterion


def choose_default(val: dict, criteria: List[str]) -> dict:
    """The selection rule of the module doc, on the validation part's rows."""
    options = {}
    for criterion in criteria:
        strategies = set()
        for d in datasets():
            row = val[f"no-{d}"][criterion][d]
            strategies |= {row["strategy"], *row["other"]}
        labelled = [val[ALL][criterion][d] for d in datasets()]
        for strategy in sorted(strategies):
            aris, errors = [], {source: [] for source in COUNT_SOURCES}
            for d in datasets():
                row = val[f"no-{d}"][criterion][d]
                picked = row if row["strategy"] == strategy else {**row["other"][strategy],
                                                                  "estimate": row["other"][strategy]["individuals"]}
                aris.append(picked["ARI"])
                errors["count threshold"].append(_error(picked["estimate"], row["truth"]))
                errors["the clusters"].append(_error(picked["clusters"], row["truth"]))
            option = {"mean ARI (unlabelled)": float(np.mean(aris))}
            for source, key in zip(COUNT_SOURCES, ("estimate", "clusters"), strict=True):
                option[f"count error (unlabelled), {source}"] = float(np.mean(errors[source]))
                option[f"count error (labelled), {source}"] = float(np.mean([_error(r[key], r["truth"]) for r in labelled]))
                option[f"count error (all), {source}"] = float(np.mean(errors[source] + [_error(r[key], r["truth"])
                                                                                        for r in labelled]))
            options[(strategy, criterion)] = option
    floor = options.get(("transfer", "ari"), {}).get("mean ARI (unlabelled)", -np.inf)
    allowed = [(k, source) for k, v in options.items() if v["mean ARI (unlabelled)"] >= floor - 1e-12
               for source in COUNT_SOURCES]
    (strategy, criterion), source = min(allowed, key=lambda ks: options[ks[0]][f"count error (all), {ks[1]}"])
    return {"unlabelled": strategy, "criterion": criterion,
            "count_criterion": "count" if source == "count threshold" else criterion,
            "options": {f"{s} / {c}": v for (s, c), v in options.items()}}


def lodo_main(args) -> None:
    print(f"CPU: {cpu_line()}", flush=True)
    if args.steps:
        args.minutes = 0
    protocol = build_protocol(args, folder="protocol-lodo", no_train="")
    train_protocol = build_protocol(args)  # the model is `real`'s: trained on the same pooled part
    print(f"protocol: {(protocol / 'protocol.json').read_text()}", flush=True)
    saved = Path(args.out) / f"lodo-results-{scored_by(args.matcher)}.json"
    results = json.loads(saved.read_text()) if saved.is_file() else {}  # earlier parts and seeds are kept
    for seed in [int(s) for s in comma_list(args.seeds)]:
        export = train(args, train_protocol, seed, steps=args.steps)
        result = results.setdefault(str(seed), {})
        if "val" in comma_list(args.parts):
            # the count's own threshold pinned, so that its counts and the clusters' can both be compared
            result["val"] = run_part(args, protocol, "val", export, seed,
                                     {c: [f"cluster.criterion={c}", "cluster.count_criterion=count"]
                                      for c in comma_list(args.criteria)})
            result["default"] = choose_default(result["val"], comma_list(args.criteria))
            print(f"seed {seed} chosen on the validation part: {json.dumps(result['default'], indent=1)}", flush=True)
        if "test" in comma_list(args.parts):
            result["test"] = run_part(args, protocol, "test", export, seed,
                                      {"default": shlex.split(args.test_overrides)},
                                      Path(args.today) if args.today else None)
        saved.write_text(json.dumps(results, indent=1) + "\n")
    for seed, result in results.items():
        if "val" in result:
            _options_table(seed, result["default"])
        if "test" in result:
            _test_table(seed, result["test"])


def _options_table(seed, default: dict) -> None:
    print(f"\nseed {seed}, validation part: each (strategy / criterion)")
    keys = list(next(iter(default["options"].values())))
    print("| strategy / criterion | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for name, values in default["options"].items():
        print(f"| {name} | " + " | ".join(f"{values[k]:.4f}" for k in keys) + " |")


def _count_cell(row: dict) -> str:
    interval = "" if row["low"] is None else f" [{row['low']}-{row['high']}]"
    return f"{row['estimate']}{interval} / {row['truth']}"


def _test_table(seed, test: dict) -> None:
    print(f"\nseed {seed}, test part: ARI, and the count estimate [90 % interval] / true individuals")
    print("| dataset | labelled: ARI | labelled: count | no train rows: ARI | today | DBSCAN | no train rows: count "
          "(strategy) |\n|---|---|---|---|---|---|---|")
    within = inside = total = 0
    for d in datasets():
        labelled, alone = test[ALL]["default"][d], test[f"no-{d}"]["default"][d]
        today = test[f"no-{d}"].get("today", {}).get(d, {}).get("ARI")
        for row in (labelled, alone):
            total += 1
            within += abs(row["estimate"] / row["truth"] - 1) <= WITHIN
            inside += row["low"] is not None and row["low"] <= row["truth"] <= row["high"]
        print(f"| {d} | {labelled['ARI']:.4f} | {_count_cell(labelled)} | {alone['ARI']:.4f} | "
              f"{'' if today is None else f'{today:.4f}'} | {test[f'no-{d}']['DBSCAN'][d]['ARI']:.4f} | "
              f"{_count_cell(alone)} ({alone['strategy']}) |")
    print(f"counts within {WITHIN:.0%} of the truth: {within} of {total}; truth inside the 90 % interval: {inside} of {total}")
    for name in ("default", "today", "DBSCAN"):
        alone = [test[f"no-{d}"][name][d]["ARI"] for d in datasets() if name in test[f"no-{d}"]]
        labelled = [test[ALL][name][d]["ARI"] for d in datasets() if name in test[ALL]]
        if alone:
            print(f"{name}: mean ARI of the datasets treated as unlabelled {np.mean(alone):.4f}; "
                  f"mean ARI with every dataset labelled {np.mean(labelled):.4f}")

"""bench_cluster.py real: clustering ARI on the development sets laid out as AnimalCLEF 2026.

Protocol (built once under OUT/protocol): every dataset (DogFaceNet-dev, LionData, ZebraStripes,
the synthetic set) is split by identity as scripts/bench/bench_recipes.py does (make_openset_protocol:
half the identities for the test part, 20 % of the rest for the validation part, the others for
training). The training parts are pooled into one training set (one model for every dataset, as
the competition's MegaDescriptor / MiewID are); the validation and test parts are each laid out
as one AnimalCLEF 2026 set with four datasets: database images become train rows (anchors), query
images test rows (20 % of the identities new, the others' images about 80/20), answers in
solution.csv. ZebraStripes has **no train rows** (all its images are test rows), as
TexasHornedLizards in the competition: its threshold is transferred.

Per seed: the default recipe trains on the pooled training part for --minutes (train.py, seed S),
then on the validation part every method is run (eval.py task=cluster, global scores only) and the
best by mean ARI is chosen; on the test part, never looked at before, are reported:
  baseline      the organisers' baseline: DBSCAN (min_samples 2, noise points alone) on the cosine
                distance of the same model's embeddings, eps tuned per dataset by ARI on its train
                images (a dataset without train images takes the eps best on average over the others)
  global        eval.py task=cluster with the chosen method, global scores only
  sift          the same with SIFT re-scoring every edge
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import pandas as pd
from benchmarking import comma_list, cpu_line, execute

SOURCES = {"dogfacenet": "DogFaceNet-dev", "lion": "LionData", "zebra": "ZebraStripes"}
NO_TRAIN = "zebra"
METHODS = ("agglomerative", "components", "leiden")
EPS_GRID = [round(0.02 * i, 2) for i in range(1, 40)]


def add_arguments(parser) -> None:
    parser.add_argument("--data-root", required=True, help="folder holding DogFaceNet-dev, LionData, ZebraStripes")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--minutes", type=float, default=4.0, help="training budget of the pooled model")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--eval-overrides", default="", help="extra eval.py key=value for every clustering run")


# ----------------------------------------------------------------------------- protocol


def _tables(data_root: Path) -> Dict[str, tuple]:
    from core.config import load_config
    from core.schema import DataConfig
    from data.formats import load_table
    from data.synthetic import ensure_synthetic

    out = {}
    for name, folder in SOURCES.items():
        root = data_root / folder
        out[name] = (load_table(load_config(DataConfig, None, ["format=folders", f"root={root}"])), root)
    root = ensure_synthetic(seed=1, individuals=120, images_per_individual=12)
    table = load_table(load_config(DataConfig, None, ["format=animalclef2025", f"root={root}"]))
    out["synthetic"] = (table.assign(split="database"), root)
    return out


def _rows(part: pd.DataFrame, name: str, root: Path, out: Path, split_map: Dict[str, str]) -> pd.DataFrame:
    link = out / f"images_{name}"
    if not link.exists():
        os.symlink(root.resolve(), link, target_is_directory=True)
    return pd.DataFrame({
        "image_id": [f"{name}/{i}" for i in range(len(part))],
        "identity": [f"{name}:{v}" for v in part["identity"]],
        "path": [f"images_{name}/{Path(p).resolve().relative_to(root.resolve())}" for p in part["path"]],
        "split": [split_map[s] for s in part["split"]], "dataset": name})


def build_protocol(args, folder: str = "protocol", no_train: str = NO_TRAIN) -> Path:
    """OUT/<folder>: the pooled train part and the val / test parts; `no_train` ("" for none) has no
    train rows in them."""
    from data.protocol import split_protocol

    out = Path(args.out) / folder
    if (out / "protocol.json").is_file():
        return out
    record = {}
    parts = {"train": [], "val": [], "test": []}
    for name, (table, root) in _tables(Path(args.data_root)).items():
        split = split_protocol(table, train_fraction=0.5, val_fraction=0.2, unknown_fraction=0.2, query_fraction=0.2,
                               seed=0)
        for part in parts:
            folder = out / part
            folder.mkdir(parents=True, exist_ok=True)
            if part == "train":
                frame = _rows(split[part].assign(split="database"), name, root, folder, {"database": "database"})
            elif name == no_train:  # no train rows at all: every image to cluster
                frame = _rows(split[part].assign(split="query"), name, root, folder, {"query": "test"})
            else:
                frame = _rows(split[part], name, root, folder, {"database": "train", "query": "test"})
            parts[part].append(frame)
            record[f"{name}/{part}"] = {"identities": int(frame["identity"].nunique()), "images": len(frame),
                                        "test_images": int((frame["split"] == "test").sum())}
    for part, frames in parts.items():
        frame = pd.concat(frames, ignore_index=True)
        if part == "train":
            frame.to_csv(out / part / "metadata.csv", index=False)
            continue
        test = frame["split"] == "test"
        frame.loc[test, ["image_id", "identity"]].to_csv(out / part / "solution.csv", index=False)
        frame.loc[test, "identity"] = ""
        frame.to_csv(out / part / "metadata.csv", index=False)
    (out / "protocol.json").write_text(json.dumps(record, indent=1) + "\n")
    return out


# ----------------------------------------------------------------------------- runs


def train(args, protocol: Path, seed: int, steps: int = 0) -> Path:
    """The default recipe on the pooled training part: args.minutes of wall clock, or `steps` steps."""
    run = Path(args.out) / f"model-s{seed}"
    if (run / "export" / "model.safetensors").is_file():
        return run / "export"
    budget = [f"train.max_minutes={args.minutes}"] if not steps else ["train.max_minutes=0", f"train.max_steps={steps}"]
    command = [sys.executable, "train.py", "data.format=animalclef2025", f"data.root={protocol / 'train'}",
               *budget, "train.epochs=100000", f"output_dir={run}", f"seed={seed}"]
    execute(command, Path(args.out) / f"train-s{seed}.log", f"training seed {seed}")
    return run / "export"


def cluster_run(args, protocol: Path, part: str, export: Path, name: str, seed: int, overrides: List[str]) -> dict:
    out = Path(args.out) / f"{part}-s{seed}-{name}"
    if not (out / "metrics.json").is_file():
        command = [sys.executable, "eval.py", "task=cluster", "data.format=animalclef2026",
                   f"data.root={protocol / part}", f"models=[{export}]", f"output_dir={out}", f"seed={seed}",
                   f"embed_cache={Path(args.out) / 'embeddings'}", *overrides, *shlex.split(args.eval_overrides)]
        start = time.perf_counter()
        execute(command, Path(args.out) / f"{part}-s{seed}-{name}.log", f"{part} {name} seed {seed}")
        (out / "wall.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"ARI": metrics["ARI"], "per_dataset": {d: m["ARI"] for d, m in metrics["per_dataset"].items()},
            "population": {d: [m["clusters"], m["individuals"]] for d, m in metrics["per_dataset"].items()},
            "wall_s": float((out / "wall.txt").read_text())}


def dbscan_baseline(protocol: Path, part: str, export: Path, args, seed: int) -> dict:
    """The organisers' baseline on the same model's embeddings (see the module doc)."""
    return dbscan_on(protocol / part, export, args)


def dbscan_on(root: Path, export: Path, args) -> dict:
    """dbscan_baseline on the 2026-layout set at `root`; also each dataset's number of clusters."""
    from sklearn.cluster import DBSCAN
    from sklearn.metrics import adjusted_rand_score

    from core.config import load_config
    from core.schema import EvalConfig
    from data.splits import gallery_and_query
    from engine.scoring.model_outputs import all_model_outputs
    from engine.tables import dataset_table

    cfg = load_config(EvalConfig, None, ["task=cluster", "data.format=animalclef2026", f"data.root={root}",
                                         f"models=[{export}]", f"embed_cache={Path(args.out) / 'embeddings'}"])
    table = dataset_table(cfg.data)
    gallery, query = gallery_and_query(table)
    rows = pd.concat([gallery, query], ignore_index=True)
    x = all_model_outputs(cfg, rows, set(gallery["identity"]))[0].embeddings
    n_gallery = len(gallery)

    def dbscan(points: np.ndarray, eps: float) -> np.ndarray:
        labels = DBSCAN(eps=eps, min_samples=2, metric="cosine").fit_predict(points)
        alone = labels < 0
        labels[alone] = labels.max() + 1 + np.arange(alone.sum())
        return labels

    curves = {}
    for dataset in sorted(set(gallery["dataset"])):
        at = np.flatnonzero(gallery["dataset"].to_numpy() == dataset)
        truth = gallery["identity"].to_numpy()[at].astype(str)
        curves[dataset] = [adjusted_rand_score(truth, dbscan(x[at], eps)) for eps in EPS_GRID]
    best = {d: EPS_GRID[int(np.argmax(c))] for d, c in curves.items()}
    overall = EPS_GRID[int(np.argmax(np.mean(list(curves.values()), axis=0)))]
    per_dataset, clusters = {}, {}
    for dataset in sorted(set(query["dataset"])):
        at = n_gallery + np.flatnonzero(query["dataset"].to_numpy() == dataset)
        truth = rows["identity"].to_numpy()[at].astype(str)
        labels = dbscan(x[at], best.get(dataset, overall))
        per_dataset[dataset] = float(adjusted_rand_score(truth, labels))
        clusters[dataset] = int(len(set(labels.tolist())))
    return {"ARI": float(np.mean(list(per_dataset.values()))), "per_dataset": per_dataset,
            "eps": {d: best.get(d, overall) for d in per_dataset}, "clusters": clusters}


def real_main(args) -> None:
    print(f"CPU: {cpu_line()}", flush=True)
    protocol = build_protocol(args)
    print(f"protocol: {(protocol / 'protocol.json').read_text()}", flush=True)
    results = {}
    for seed in [int(s) for s in comma_list(args.seeds)]:
        export = train(args, protocol, seed)
        chosen = {}
        for method in comma_list(args.methods):
            chosen[method] = cluster_run(args, protocol, "val", export, method, seed,
                                         [f"cluster.method={method}", "rerank.matcher=none", "report=false"])
            print(f"seed {seed} val {method}: ARI {chosen[method]['ARI']:.4f} {chosen[method]['per_dataset']}", flush=True)
        method = max(chosen, key=lambda m: chosen[m]["ARI"])
        base_val = dbscan_baseline(protocol, "val", export, args, seed)
        test = {"chosen_method": method, "val": {m: v["ARI"] for m, v in chosen.items()}, "val_baseline": base_val["ARI"],
                "baseline": dbscan_baseline(protocol, "test", export, args, seed),
                "global": cluster_run(args, protocol, "test", export, f"{method}-global", seed,
                                      [f"cluster.method={method}", "rerank.matcher=none"]),
                "sift": cluster_run(args, protocol, "test", export, f"{method}-sift", seed,
                                    [f"cluster.method={method}", "rerank.matcher=sift", "rerank.side=384",
                                     "rerank.max_keypoints=256", "rerank.calibration_queries=100",
                                     f"rerank.cache={Path(args.out) / 'keypoints'}"])}
        results[seed] = test
        print(f"seed {seed} test: " + json.dumps({k: v if isinstance(v, (str, float)) else v.get("ARI", v)
                                                   for k, v in test.items()}), flush=True)
        (Path(args.out) / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    _table(results)


def _table(results: dict) -> None:
    datasets = sorted(next(iter(results.values()))["baseline"]["per_dataset"])
    print("\n| seed | run | mean ARI | " + " | ".join(datasets) + " | x baseline |")
    print("|---|---|---|" + "---|" * len(datasets) + "---|")
    for seed, test in results.items():
        base = test["baseline"]["ARI"]
        for run in ("baseline", "global", "sift"):
            r = test[run]
            ratio = r["ARI"] / base if base > 0 else float("nan")
            print(f"| {seed} | {run}{' (' + test['chosen_method'] + ')' if run != 'baseline' else ''} | {r['ARI']:.4f} | "
                  + " | ".join(f"{r['per_dataset'][d]:.4f}" for d in datasets) + f" | {ratio:.2f} |")

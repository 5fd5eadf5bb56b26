"""bench_review.py ceiling: how much of the review's gain the runs' models leave reachable; not run on
its own.

It reads the runs `bench_review.py real --out OUT` made (the clustering and identification runs of
each seed and part) and prints, per run:

* **What the graph holds** (clustering): per dataset, the pairs of its test images that show one
  individual, how many of them are edges of the run's graph (the only pairs a person is asked about),
  and the clusters that every edge answered right would give: the components of the true edges, with
  the train images of one identity joined as their labels join them; their ARI, and their number
  against the individuals' (a clusterer joins images only along edges, so a clustering that never
  joins two individuals has at least that many clusters).
* **What the candidates hold** (identification): per dataset, the queries of known individuals, and
  how many have their own identity among their candidates.
* **A better-ranking model, emulated**: every pair's logit moved by --strengths S toward its truth
  (+S for one individual, -S for two; S = 0 is the run as it is), the run's decisions (and
  clusters) made again at those probabilities and the run's thresholds, and the oracle's sweep
  (bench_review.py `sweep`) through them: the pairs' AUC, the score before any answer and the gain
  at --answers answers, per selector. The candidates are the run's own, so a model that would also
  find the pairs its run missed is not emulated: the gains are what better probabilities alone
  give.

    python scripts/bench/bench_review.py ceiling --out OUT --seeds 0,1 --parts val,test
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
from benchmarking import comma_list, cpu_line, scored_by

from core.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="the --out of a bench_review.py real run")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--parts", default="val,test")
    parser.add_argument("--tasks", default="cluster,identify")
    parser.add_argument("--strengths", default="0,0.25,0.5,1,2", help="logit moves toward the truth to emulate")
    parser.add_argument("--selectors", default="default,random")
    parser.add_argument("--refit", default="auto", help="the session's threshold re-fit (reidzoo-review --refit)")
    parser.add_argument("--answers", type=int, default=100)
    parser.add_argument("--matcher", default=None, help="the --matcher of the runs")


def _runs(args, seed: str) -> Dict[str, Dict[str, tuple]]:
    """task -> part -> (run folder, truth csv), as bench_review.py real named them."""
    out, suffix = Path(args.out), scored_by(args.matcher)
    found: Dict[str, Dict[str, tuple]] = {}
    tested = sorted(out.glob(f"test-s{seed}-*-{suffix}"))  # the test part ran the method validation chose
    if "cluster" in comma_list(args.tasks) and tested:
        method = tested[0].name[len(f"test-s{seed}-"):-len(f"-{suffix}")]
        found["cluster"] = {part: (out / f"{part}-s{seed}-{method}-{suffix}", out / "protocol" / part / "solution.csv")
                            for part in comma_list(args.parts)}
    if "identify" in comma_list(args.tasks):
        found["identify"] = {part: (out / f"identify-{part}-s{seed}-{suffix}", out / "identify-data" / part / "truth.csv")
                             for part in comma_list(args.parts)}
    for parts in found.values():
        for run, truth in parts.values():
            if not (run / "review.npz").is_file() or not truth.is_file():
                raise UserError(f"no run {run} or truth {truth}: run bench_review.py real --out {args.out} first")
    return found


def graph_holds(run, truth: np.ndarray) -> List[str]:
    """Per dataset: true test pairs, those that are edges, and the ARI and number of the clusters that
    every edge answered right would give."""
    from sklearn.metrics import adjusted_rand_score

    from engine.cluster.graph import Graph
    from engine.cluster.methods import CLUSTERERS

    data = run.data
    datasets = run.images["dataset"].to_numpy(dtype=object)
    is_query = run.images["is_query"].to_numpy(bool)
    same = truth[data.pair_a] == truth[data.pair_b]
    # the components clusterer on the true edges alone, its anchors joining each identity's train images
    true_edges = Graph(len(truth), data.pair_a, data.pair_b, same.astype(np.float64))
    component = CLUSTERERS.build("components").labels(true_edges, run.anchors(), [0.5])[0]
    lines = []
    for dataset in sorted(set(datasets[is_query])):
        rows = np.flatnonzero((datasets == dataset) & is_query)
        _, sizes = np.unique(truth[rows], return_counts=True)
        among = same & (datasets[data.pair_a] == dataset) & is_query[data.pair_a] & is_query[data.pair_b]
        lines.append(f"{dataset}: {int((sizes * (sizes - 1) // 2).sum())} true test pairs, {int(among.sum())} of them "
                     f"edges; every edge answered right: ARI {adjusted_rand_score(truth[rows], component[rows]):.3f}, "
                     f"{len(np.unique(component[rows]))} clusters of {len(sizes)} individuals")
    return lines


def candidates_hold(run, truth: np.ndarray) -> List[str]:
    """Per dataset (identification): the queries of known individuals, and how many of them have their
    own identity among their candidates (the only identities a person is asked about)."""
    data = run.data
    datasets = run.images["dataset"].to_numpy(dtype=object)
    is_query = run.images["is_query"].to_numpy(bool)
    lines = []
    for dataset in sorted(set(datasets[is_query])):
        gallery = set(truth[(datasets == dataset) & ~is_query].tolist())
        known = np.flatnonzero((datasets == dataset) & is_query & np.isin(truth, list(gallery)))
        own = set(data.pair_a[truth[data.pair_a] == truth[data.pair_b]].tolist())
        lines.append(f"{dataset}: {len(known)} queries of known individuals, {len(own & set(known.tolist()))} of them "
                     "with their own identity among their candidates")
    return lines


def emulated(run, truth: np.ndarray, strength: float):
    """(the run with every pair's logit moved by `strength` toward its truth, the pairs' AUC)."""
    from sklearn.metrics import roc_auc_score

    from engine.cluster.constraints import canonical
    from engine.cluster.graph import Graph
    from engine.cluster.methods import CLUSTERERS

    data = run.data
    known = (truth[data.pair_a] != "") & (truth[data.pair_b] != "")
    same = known & (truth[data.pair_a] == truth[data.pair_b])
    p = np.clip(data.pair_p, 1e-6, 1 - 1e-6)
    logit = np.log(p / (1 - p)) + strength * np.where(known, np.where(same, 1.0, -1.0), 0.0)
    moved = 1 / (1 + np.exp(-logit))
    # one scorer's worth: the scorers' own disagreement is not emulated
    changed = dataclasses.replace(data, pair_p=moved, pair_scores=np.repeat(moved[:, None], data.pair_scores.shape[1], 1))
    if run.task == "cluster" and strength:
        settings = data.settings
        clusterer = CLUSTERERS.build(settings.method, settings.method_args)
        graph, anchors = Graph(len(truth), data.pair_a, data.pair_b, moved), run.anchors()
        datasets = run.images["dataset"].to_numpy(dtype=object)
        labels = np.full(len(truth), -1, np.int64)
        for dataset in sorted(set(datasets)):
            rows = np.flatnonzero(datasets == dataset)
            found = clusterer.labels(graph.subgraph(rows), anchors[rows], [settings.thresholds[dataset]])[0]
            labels[rows] = canonical(found) + labels.max() + 1
        changed.cluster = labels
    return dataclasses.replace(run, data=changed), float(roc_auc_score(same[known], moved[known]))


def ceiling_main(args, sweep_run: Callable) -> None:
    """Every run the arguments name: what its graph holds, then the emulated sweeps."""
    from engine.review.run import open_run
    from engine.review.simulate import read_truth

    print(f"CPU: {cpu_line()}", flush=True)
    strengths = [float(s) for s in comma_list(args.strengths)]
    print(f"\n| task | part | seed | S | pair AUC | selector | N=0 | N={args.answers} | gain |\n|---|---|---|---|---|---|---|---|---|")
    notes = []
    for seed in comma_list(args.seeds):
        for task, parts in _runs(args, seed).items():
            for part, (folder, truth_csv) in parts.items():
                run = open_run(folder)
                truth = read_truth(truth_csv, run)
                held = graph_holds(run, truth) if task == "cluster" else candidates_hold(run, truth)
                notes += [f"{task}, {part}, seed {seed}, {line}" for line in held]
                for strength in strengths:
                    changed, auc = emulated(run, truth, strength)
                    for selector in comma_list(args.selectors):
                        found = sweep_run(changed, truth_csv, selector, 0.0, int(seed), [0, args.answers], refit=args.refit)
                        start, end = found[0]["score"], found[args.answers]["score"]
                        print(f"| {task} | {part} | {seed} | {strength:g} | {auc:.3f} | {selector} | {start:.4f} | "
                              f"{end:.4f} | {end - start:+.4f} |", flush=True)
    print("\nWhat the runs' pairs hold:\n" + "\n".join(f"- {n}" for n in notes))

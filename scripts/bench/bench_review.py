"""Benchmark the review loop: an oracle answers from the true identities (`reidzoo-review simulate`'s
code path), and the runs' scores are read after 0, 25, 50, 100 and 200 answers per dataset.

    python scripts/bench/bench_review.py real --data-root /work/shared/data --out OUT --seeds 0,1 --minutes 5
    python scripts/bench/bench_review.py real ... --train-steps 436   # a fixed number of steps instead
    python scripts/bench/bench_review.py speed --images 10000
    python scripts/bench/bench_review.py real ... --matcher none  # the embeddings' scores alone
    python scripts/bench/bench_review.py table --out OUT        # the tables again, from OUT/review-results-sift.json
    python scripts/bench/bench_review.py lodo --lodo-out LODO_OUT --parts val,test
    python scripts/bench/bench_review.py ceiling --out OUT --seeds 0,1 --parts val,test

**real**: the development sets in the AnimalCLEF 2026 layout of scripts/bench/bench_cluster_real.py
(DogFaceNet-dev, LionData, ZebraStripes, the synthetic set: identity-disjoint train, validation and
test parts; ZebraStripes without train rows), one default-recipe model per seed trained on the
pooled train parts for --minutes (or --train-steps, where the cores are shared and minutes buy
fewer steps). Clustering: eval.py task=cluster on the validation and test
parts, the method chosen by validation ARI (--methods); identification: DogFaceNet-dev's parts of
the same protocol as an AnimalCLEF 2025 open-set set (database = the part's train rows, queries
= its test rows, 20 % of their dogs new), eval.py task=identify. Every eval.py run scores its pairs
with eval.py's default keypoint matcher unless --matcher says otherwise (`none`: the embeddings
alone), and its name ends in the matcher's. Every run is then reviewed by the
oracle with each selector (--selectors), without and with wrong answers (--error-rates), and
scored after each number of answers (--answers): mean ARI and B-cubed F1 over datasets for
clustering, the open-set score (sqrt(BAKS x BAUS)) for identification. The answers of one count
are the first answers of the next (one session taken further), exactly as separate
`simulate --answers N` runs with the same seed give them. Choose on the validation rows; report
the test rows, which no choice looked at. It also prints each run's calibrated P(same) against the
truth (`reliability`, with how well P(same) and a pair's rank find the true pairs below 0.3), and
how far the probability the page showed for the pairs asked, once the answers re-calibrated it,
was from the truth (Brier, against the run's own probability).

**lodo**: the threshold re-fit on each dataset treated as unlabelled (bench_review_lodo.py).

**ceiling**: what the real runs' models leave reachable: the true pairs their clustering graphs
hold, and the gain with each pair's probability moved toward its truth (bench_review_ceiling.py).

**speed**: the server side of one answer at scale: a generated clustering run of --images test
images (k-NN graph of clustered embeddings, agglomerative clusters), then --answers oracle answers
through the session, timing each answer and the choice of the next pair (what the page waits for).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from benchmarking import comma_list, cpu_line, execute, matcher_of, scored_by

import engine.components  # noqa: F401  (the built-in names a config may use, registered)
from core.errors import cli_entry
from engine.review.refit import REFITS

TASKS = ("cluster", "identify")


# ----------------------------------------------------------------------------- runs to review


def _results_path(args) -> Path:
    return Path(args.out) / f"review-results-{scored_by(args.matcher)}.json"


def _cluster_runs(args, protocol: Path, seed: int, export: Path) -> Dict[str, Path]:
    from bench_cluster_real import cluster_run

    out, suffix = Path(args.out), scored_by(args.matcher)
    settings = [f"rerank.matcher={matcher_of(args.matcher)}", "report=false"]
    val = {m: cluster_run(args, protocol, "val", export, f"{m}-{suffix}", seed, [f"cluster.method={m}", *settings])["ARI"]
           for m in comma_list(args.methods)}
    method = max(val, key=val.get)
    print(f"seed {seed}: clustering method {method} (validation ARI " + ", ".join(f"{m} {v:.4f}" for m, v in val.items())
          + ")", flush=True)
    cluster_run(args, protocol, "test", export, f"{method}-{suffix}", seed, [f"cluster.method={method}", *settings])
    return {part: out / f"{part}-s{seed}-{method}-{suffix}" for part in ("val", "test")}


def _identify_part(protocol: Path, part: str, out: Path) -> Path:
    """DogFaceNet-dev's rows of a protocol part as an AnimalCLEF 2025 open-set set (labels of the
    queries kept for scoring; the review never sees them)."""
    import pandas as pd

    folder = out / "identify-data" / part
    if (folder / "metadata.csv").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.read_csv(protocol / part / "metadata.csv", dtype=str, keep_default_na=False)
    solution = pd.read_csv(protocol / part / "solution.csv", dtype=str).set_index("image_id")["identity"]
    frame = frame[frame["dataset"] == "dogfacenet"].copy()
    test = frame["split"] == "test"
    frame.loc[test, "identity"] = solution[frame.loc[test, "image_id"]].to_numpy()
    frame["split"] = ["query" if t else "database" for t in test]
    link = folder / "images_dogfacenet"
    if not link.exists():
        os.symlink(os.path.realpath(protocol / part / "images_dogfacenet"), link, target_is_directory=True)
    frame.loc[test, ["image_id", "identity"]].to_csv(folder / "truth.csv", index=False)
    frame.to_csv(folder / "metadata.csv", index=False)
    return folder


def _identify_runs(args, protocol: Path, seed: int, export: Path) -> Dict[str, Path]:
    out = Path(args.out)
    runs = {}
    for part in ("val", "test"):
        root = _identify_part(protocol, part, out)
        run = out / f"identify-{part}-s{seed}-{scored_by(args.matcher)}"
        if not (run / "review.npz").is_file():
            execute([sys.executable, "eval.py", "data.format=animalclef2025", f"data.root={root}", f"models=[{export}]",
                     f"output_dir={run}", f"seed={seed}", f"embed_cache={out / 'embeddings'}",
                     f"rerank.matcher={matcher_of(args.matcher)}",
                     "report=false"], run.with_suffix(".log"), f"identify {part} seed {seed}")
        runs[part] = run
    return runs


# ----------------------------------------------------------------------------- the oracle's sweep


def _scorer(run, truth_csv: Path):
    """decisions -> {"score": ..., ...} for a run, from its truth."""
    import numpy as np
    import pandas as pd

    from engine.cluster.metrics import clustering_report
    from engine.metrics import animalclef_score

    truth = pd.read_csv(truth_csv, dtype=str).set_index("image_id")["identity"]
    queries = run.images[run.images["is_query"]]
    y_true = truth.reindex(queries["image_id"]).tolist()
    datasets = queries["dataset"].tolist()
    known = set(run.images.loc[~run.images["is_query"], "identity"])

    def score(decisions) -> Dict[str, float]:
        if run.task == "cluster":
            found = clustering_report(y_true, decisions.values, datasets)
            return {"score": found["ARI"], "bcubed_F1": found["bcubed_F1"],
                    **{f"ARI {d}": v["ARI"] for d, v in found["per_dataset"].items()}}
        truth_labels = [t if t in known else None for t in y_true]
        found = animalclef_score(truth_labels, decisions.values, datasets, known)
        return {"score": found["score"], "BAKS": found["BAKS"], "BAUS": found["BAUS"]}

    assert np.all([t is not None for t in y_true]), f"{truth_csv} does not name every query"
    return score


def sweep(run_dir: Path, truth_csv: Path, selector: str, error_rate: float, seed: int, steps: List[int],
          refit: str = "auto", prior: Optional[float] = None) -> Dict[int, Dict[str, float]]:
    """Scores after each number of answers per dataset (see the module doc)."""
    from engine.review.run import open_run

    return sweep_run(open_run(run_dir), truth_csv, selector, error_rate, seed, steps, refit, prior)


def sweep_run(run, truth_csv: Path, selector: str, error_rate: float, seed: int, steps: List[int],
              refit: str = "auto", prior: Optional[float] = None) -> Dict[int, Dict[str, float]]:
    """`sweep` of a run already open (engine.review.run.ReviewRun)."""
    import numpy as np

    from engine.review.session import ReviewOptions, ReviewSession
    from engine.review.simulate import ShownPairs, read_truth, simulate
    from engine.review.store import AnswerStore

    score = _scorer(run, truth_csv)
    truth = read_truth(truth_csv, run)
    shown = ShownPairs()
    out = {}
    with tempfile.TemporaryDirectory(prefix="review-bench-") as scratch:
        session = ReviewSession(run, AnswerStore(Path(scratch) / "answers.sqlite"),
                                ReviewOptions(selector=selector, refit=refit, seed=seed,
                                              **({} if prior is None else {"error_prior": prior})))
        rng = np.random.default_rng(seed)
        for n in sorted(steps):
            start = time.perf_counter()
            done = simulate(session, truth, n, error_rate, rng)
            shown.extend(done.shown)
            out[n] = {**score(session.decide()), "answers": sum(done.asked.values()),
                      "seconds": round(time.perf_counter() - start, 2),
                      # the probability the page showed, against the truth, on the pairs asked so far
                      **{f"page {k}": v for k, v in shown.brier().items()}}
        session.store.close()
    return out


LOW_PROBABILITY = 0.3
RELIABILITY_BINS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


def reliability(run_dir: Path, truth_csv: Path) -> str:
    """A run's calibrated P(same) against the truth, over its pairs in bins of that probability, and
    how well the pairs below LOW_PROBABILITY are told apart (_low_separation)."""

    from engine.review.run import open_run
    from engine.review.simulate import read_truth

    run = open_run(run_dir)
    truth = read_truth(truth_csv, run)
    data = run.data
    known = (truth[data.pair_a] != "") & (truth[data.pair_b] != "")
    p, same = data.pair_p[known], (truth[data.pair_a] == truth[data.pair_b])[known]
    cells = []
    for low, high in zip(RELIABILITY_BINS[:-1], RELIABILITY_BINS[1:], strict=True):
        at = (p >= low) & ((p < high) if high < 1 else (p <= high))
        if at.any():
            cells.append(f"{low:.1f}-{high:.1f}: {at.sum()} pairs, mean p {p[at].mean():.2f}, same {same[at].mean():.2f}")
    return "; ".join(cells + _low_separation(data.pair_a[known], p, same))


def _low_separation(first, p, same) -> List[str]:
    """Among the pairs below LOW_PROBABILITY, where a selector must find the true pairs a run missed:
    how many are the same individual, and the AUC with which P(same), and the pair's rank among the
    pairs of its first image (for identification: the candidate's rank in its query's shortlist),
    tell them from the others."""
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    low = p < LOW_PROBABILITY
    if not (same[low].any() and (~same[low]).any()):
        return []
    rank = pd.Series(p).groupby(first).rank(ascending=False).to_numpy()
    return [f"below {LOW_PROBABILITY}: {same[low].sum()} same of {low.sum()} pairs, AUC of p "
            f"{roc_auc_score(same[low], p[low]):.2f}, of the rank among its first image's pairs "
            f"{roc_auc_score(same[low], -rank[low]):.2f}"]


def _truths(args, protocol: Path, runs: Dict[str, Dict[str, Path]]) -> Dict[str, Dict[str, Path]]:
    out = Path(args.out)
    return {"cluster": {part: protocol / part / "solution.csv" for part in ("val", "test")},
            "identify": {part: out / "identify-data" / part / "truth.csv" for part in ("val", "test")}}


def real_main(args) -> None:
    from bench_cluster_real import build_protocol, train

    print(f"CPU: {cpu_line()}", flush=True)
    protocol = build_protocol(args)
    steps = [int(s) for s in comma_list(args.answers)]
    results_path = _results_path(args)
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for seed in [int(s) for s in comma_list(args.seeds)]:
        export = train(args, protocol, seed, steps=args.train_steps)
        runs = {}
        if "cluster" in comma_list(args.tasks):
            runs["cluster"] = _cluster_runs(args, protocol, seed, export)
        if "identify" in comma_list(args.tasks):
            runs["identify"] = _identify_runs(args, protocol, seed, export)
        truths = _truths(args, protocol, runs)
        for task, parts in runs.items():
            for part in comma_list(args.parts):
                print(f"reliability, {task} {part} s{seed}: {reliability(parts[part], truths[task][part])}", flush=True)
                for error in [float(e) for e in comma_list(args.error_rates)]:
                    for selector in comma_list(args.selectors):
                        named = (selector + ("" if args.error_prior is None else f"@{args.error_prior}")
                                 + ("" if args.refit == "auto" else f" refit {args.refit}"))
                        key = f"{task}|{part}|s{seed}|{named}|e{error}"
                        if key in results:
                            continue
                        results[key] = sweep(parts[part], truths[task][part], selector, error, seed, steps,
                                             refit=args.refit, prior=args.error_prior)
                        print(key, json.dumps({n: round(r["score"], 4) for n, r in results[key].items()}), flush=True)
                        results_path.write_text(json.dumps(results, indent=1) + "\n")
    print_tables(results, steps)


def print_tables(results: Dict[str, dict], steps: List[int]) -> None:
    """One markdown table per task and part: the score after each number of answers, and the gain at 100."""
    import numpy as np

    groups: Dict[tuple, Dict[tuple, dict]] = {}
    for key, by_step in results.items():
        task, part, seed, selector, error = key.split("|")
        # steps are ints in a fresh sweep and strings once read back from review-results-*.json
        groups.setdefault((task, part), {})[(selector, error, seed)] = {int(n): r for n, r in by_step.items()}
    for (task, part), rows in sorted(groups.items()):
        measure = "mean ARI" if task == "cluster" else "open-set score"
        print(f"\n{task}, {part} part ({measure} after N answers per dataset)\n")
        extra = "bcubed_F1" if task == "cluster" else "BAUS"
        print("| selector | wrong answers | seed | " + " | ".join(f"N={n}" for n in steps)
              + f" | gain at 100 | {extra} at 0 / {steps[-1]} |")
        print("|---|---|---|" + "---|" * len(steps) + "---|---|")
        for (selector, error, seed), by_step in sorted(rows.items()):
            values = [by_step[n]["score"] for n in steps]
            gain = (by_step[100]["score"] - values[0]) if 100 in steps else float("nan")
            first, last = (by_step[n][extra] for n in (steps[0], steps[-1]))
            print(f"| {selector} | {float(error[1:]):.0%} | {seed[1:]} | " + " | ".join(f"{v:.4f}" for v in values)
                  + f" | {gain:+.4f} | {first:.4f} / {last:.4f} |")
        means = {}
        for (selector, error, _), by_step in rows.items():
            if 100 in steps:
                means.setdefault((selector, error), []).append(by_step[100]["score"] - by_step[0]["score"])
        print("\nmean gain at 100 answers: " + ", ".join(f"{s} ({float(e[1:]):.0%} wrong) {np.mean(v):+.4f}"
                                                          for (s, e), v in sorted(means.items())))
        last = steps[-1]
        calibrated = [(selector, error, seed, by_step[last]) for (selector, error, seed), by_step in sorted(rows.items())
                      if by_step[last].get("page pairs")]
        if calibrated:
            print(f"\nP(same) on the page, on the pairs asked once the answers re-calibrated it (first {last} answers): "
                  "Brier of the run's probability -> the shown one")
            for selector, error, seed, r in calibrated:
                print(f"  {selector}, {float(error[1:]):.0%} wrong, seed {seed[1:]}: {r['page pairs']} pairs, "
                      f"{r['page brier_run']:.4f} -> {r['page brier_shown']:.4f}")


# ----------------------------------------------------------------------------- speed


def _speed_graph(x, labels, k: int) -> tuple:
    """The k-NN edges of generated embeddings, their cosine mapped to P(same) by an isotonic fit on
    the edges' own labels (the calibration eval.py fits on labelled images)."""
    import numpy as np

    from core.schema import RetrievalConfig
    from engine.cluster.graph import knn_pairs, unique_pairs
    from engine.scoring.calibration import fit_calibrator

    i, j = unique_pairs(*knn_pairs(x, np.arange(len(x)), k, RetrievalConfig(index="flat", use_gpu=False)))
    cosine = np.einsum("ij,ij->i", x[i], x[j])
    return i, j, fit_calibrator(cosine, labels[i] == labels[j], "isotonic")(cosine)


def speed_main(args) -> None:
    import numpy as np
    import pandas as pd
    from bench_cluster import generated

    from core.ownership import EVAL, run_marker
    from engine.cluster.graph import Graph
    from engine.cluster.methods import CLUSTERERS
    from engine.outputs.review_file import REVIEW_FILE, ReviewData, ReviewSettings, image_frame, save_review
    from engine.review.run import open_run
    from engine.review.session import ReviewOptions, ReviewSession
    from engine.review.simulate import ORACLE
    from engine.review.store import AnswerStore

    print(f"CPU: {cpu_line()}", flush=True)
    n = args.images
    x, labels = generated(n, seed=0)
    with tempfile.TemporaryDirectory(prefix="review-speed-") as scratch:
        folder = Path(scratch)
        photo = folder / "photo.jpg"
        from PIL import Image

        Image.new("RGB", (8, 8)).save(photo)
        a, b, p = _speed_graph(x, labels, args.neighbours)
        graph = Graph(n, a, b, p)
        start = time.perf_counter()
        clusters = CLUSTERERS.build("agglomerative").labels(graph, np.full(n, -1), [0.5])[0]
        cluster_s = time.perf_counter() - start
        rows = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "identity": None, "path": str(photo),
                             "split": "query", "dataset": "speed", "species": None, "orientation": None, "date": None,
                             "bbox": None})
        settings = ReviewSettings("cluster", "animalclef2026", {"speed": 0.5}, {"speed": False}, ["embedding"], ["global"],
                                  "agglomerative", {}, True, [str(folder)])
        (folder / "run").mkdir()
        (folder / "run" / "manifest.json").write_text(json.dumps(run_marker(EVAL)))
        save_review(folder / "run" / REVIEW_FILE, ReviewData(settings, image_frame(rows, 0), a, b, p, p[:, None], clusters))
        run = open_run(folder / "run")
        # as the server runs it: a re-fit's re-clustering in the background
        session = ReviewSession(run, AnswerStore(folder / "answers.sqlite"),
                                ReviewOptions(selector=args.selector, background=True))
        answer_ms, next_ms = [], []
        pair = session.next_pair(ORACLE)
        for _ in range(args.answers):
            verdict = "same" if labels[a[pair]] == labels[b[pair]] else "different"
            start = time.perf_counter()
            session.answer(ORACLE, "bench", pair, verdict)
            middle = time.perf_counter()
            pair = session.next_pair(ORACLE)
            end = time.perf_counter()
            answer_ms.append(1000 * (middle - start))
            next_ms.append(1000 * (end - middle))
        total = np.array(answer_ms) + np.array(next_ms)
        print(f"{n} test images, {len(a)} edges (k={args.neighbours}); agglomerative {cluster_s:.1f} s; "
              f"{args.answers} answers with selector {args.selector}")
        print("| step | median ms | 95th percentile ms | max ms |\n|---|---|---|---|")
        for name, values in (("store + apply the answer", answer_ms), ("choose the next pair", next_ms),
                             ("answer to next pair", total)):
            print(f"| {name} | {np.median(values):.1f} | {np.percentile(values, 95):.1f} | {np.max(values):.1f} |")
        session.close()


@cli_entry
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_subparsers(dest="mode", required=True)
    real = modes.add_parser("real")
    real.add_argument("--data-root", required=True, help="folder holding DogFaceNet-dev, LionData, ZebraStripes")
    real.add_argument("--out", required=True)
    real.add_argument("--seeds", default="0,1")
    real.add_argument("--minutes", type=float, default=5.0, help="training budget of the pooled model")
    real.add_argument("--train-steps", type=int, default=0,
                      help="train the pooled model this many optimizer steps instead of --minutes (0: minutes)")
    real.add_argument("--methods", default="agglomerative,leiden", help="clusterers chosen among on the validation part")
    real.add_argument("--tasks", default="cluster,identify")
    real.add_argument("--parts", default="val,test")
    real.add_argument("--selectors", default="default,uncertainty,random")
    real.add_argument("--error-rates", default="0,0.05")
    real.add_argument("--error-prior", type=float, default=None,
                      help="the session's error prior (verification questions; default: the session's own); "
                           "rows with one given are named SELECTOR@PRIOR")
    real.add_argument("--answers", default="0,25,50,100,200", help="the answer counts each run is scored after")
    real.add_argument("--refit", default="auto", choices=REFITS,
                      help="the session's threshold re-fit (reidzoo-review --refit); rows with another than auto "
                           "are named SELECTOR refit VALUE")
    real.add_argument("--matcher", default=None,
                      help="rerank.matcher of every eval.py run (default: eval.py's own; none: the embeddings alone)")
    real.add_argument("--eval-overrides", default="", help="extra eval.py key=value for every clustering run")
    table = modes.add_parser("table")
    table.add_argument("--out", required=True)
    table.add_argument("--answers", default="0,25,50,100,200")
    table.add_argument("--matcher", default=None, help="the --matcher of the runs to tabulate")
    lodo = modes.add_parser("lodo")
    from bench_review_lodo import add_arguments as lodo_arguments
    from bench_review_lodo import lodo_main

    lodo_arguments(lodo)
    ceiling = modes.add_parser("ceiling")
    from bench_review_ceiling import add_arguments as ceiling_arguments
    from bench_review_ceiling import ceiling_main

    ceiling_arguments(ceiling)
    speed = modes.add_parser("speed")
    speed.add_argument("--images", type=int, default=10000)
    speed.add_argument("--neighbours", type=int, default=10)
    speed.add_argument("--answers", type=int, default=200)
    speed.add_argument("--selector", default="default")
    args = parser.parse_args(argv)
    if args.mode == "table":
        print_tables(json.loads(_results_path(args).read_text()),
                     [int(s) for s in comma_list(args.answers)])
        return
    if args.mode == "lodo":
        lodo_main(args, sweep)
        return
    if args.mode == "ceiling":
        ceiling_main(args, sweep_run)
        return
    (real_main if args.mode == "real" else speed_main)(args)


if __name__ == "__main__":
    main()

"""Benchmark clustering: scale on generated embeddings, and ARI on real development sets.

    python scripts/bench/bench_cluster.py scale --sizes 10000,100000,1000000 [--methods agglomerative,components]
    python scripts/bench/bench_cluster.py real --data-root /work/shared/data --out /tmp/bench-cluster --seeds 0,1
    python scripts/bench/bench_cluster.py lodo --data-root /work/shared/data --out /tmp/bench-cluster --seeds 0 --today OLD

**scale**: clustered embeddings are generated (identities of 1 to 9 images, 64 dimensions, a
centre per identity plus noise), then what eval.py task=cluster does once the embeddings are
given: the faiss k-NN graph (exact up to 200,000 images, IVF beyond), an isotonic calibration of
the cosine fitted on a sample of labelled edges, and each method at P >= 0.5. Each size runs in a
fresh process, so the peak resident memory it reports (ru_maxrss) is its own; time per stage.

**real**: see `real_main` (bench_cluster_real.py holds it).
**lodo**: thresholds for datasets without train rows, each labelled dataset left out in turn (bench_cluster_lodo.py).
Every table names the CPU; the machine's cores may be shared with other jobs (say so beside the figures).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from benchmarking import REPO, comma_list, cpu_line

import engine.components  # noqa: F401  (the built-in names a config may use, registered)
from core.errors import cli_entry

EXACT_UP_TO = 200_000
DIM = 64


def generated(n: int, seed: int = 0):
    """(n, DIM) L2-normalised float32 embeddings and identity labels: 1-9 images per identity."""
    import numpy as np

    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 10, n)
    labels = np.repeat(np.arange(n), sizes)[:n]
    centres = rng.standard_normal((labels.max() + 1, DIM), dtype=np.float32)
    x = np.empty((n, DIM), np.float32)
    for start in range(0, n, 100_000):
        stop = min(start + 100_000, n)
        x[start:stop] = centres[labels[start:stop]] + 0.6 * rng.standard_normal((stop - start, DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels


def one_size(n: int, methods: list, k: int) -> dict:
    """Run in a child process: the whole clustering of n generated images, timed."""
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    from core.schema import RetrievalConfig
    from engine.cluster.graph import Graph, knn_pairs, unique_pairs
    from engine.cluster.methods import CLUSTERERS
    from engine.scoring.calibration import fit_calibrator

    times = {}
    start = time.perf_counter()
    x, labels = generated(n)
    times["generate_s"] = time.perf_counter() - start
    start = time.perf_counter()
    retrieval = RetrievalConfig(index="flat" if n <= EXACT_UP_TO else "ivf", nprobe=16, use_gpu=False)
    a, b = knn_pairs(x, np.arange(n), k, retrieval)
    i, j = unique_pairs(a, b)
    times["knn_graph_s"] = time.perf_counter() - start
    start = time.perf_counter()
    cosine = np.einsum("ij,ij->i", x[i], x[j])
    sample = np.random.default_rng(0).choice(len(i), min(len(i), 200_000), replace=False)
    calibrator = fit_calibrator(cosine[sample], labels[i[sample]] == labels[j[sample]], "isotonic")
    graph = Graph(n, i, j, calibrator(cosine))
    times["score_calibrate_s"] = time.perf_counter() - start
    result = {"images": n, "identities": int(len(set(labels.tolist()))), "edges": int(len(i)), "index": retrieval.index,
              **{key: round(v, 1) for key, v in times.items()}}
    anchors = np.full(n, -1)
    for method in methods:
        start = time.perf_counter()
        found = CLUSTERERS.build(method).labels(graph, anchors, [0.5])[0]
        result[f"{method}_s"] = round(time.perf_counter() - start, 1)
        result[f"{method}_ARI"] = round(float(adjusted_rand_score(labels, found)), 4)
    result["peak_rss_MiB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return result


def scale_main(args) -> None:
    print(f"CPU: {cpu_line()}; k = {args.k} neighbours; one fresh process per size", flush=True)
    rows = []
    for n in [int(s) for s in comma_list(args.sizes)]:
        child = subprocess.run([sys.executable, __file__, "_one", str(n), args.methods, str(args.k)],
                               capture_output=True, text=True, cwd=REPO)
        if child.returncode != 0:
            print(f"{n} images failed:\n{child.stderr[-2000:]}", flush=True)
            break
        row = json.loads(child.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    methods = comma_list(args.methods)
    header = ["images", "edges", "index", "k-NN graph s", "score + calibrate s",
              *[f"{m} s (ARI)" for m in methods], "peak RSS MiB"]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        cells = [f"{r['images']:,}", f"{r['edges']:,}", r["index"], r["knn_graph_s"], r["score_calibrate_s"],
                 *[f"{r[f'{m}_s']} ({r[f'{m}_ARI']})" for m in methods], f"{r['peak_rss_MiB']:,}"]
        print("| " + " | ".join(str(c) for c in cells) + " |")


@cli_entry
def main(argv=None) -> None:
    if argv and argv[0] == "_one":
        print(json.dumps(one_size(int(argv[1]), comma_list(argv[2]), int(argv[3]))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    scale = sub.add_parser("scale", help="time and peak memory on generated embeddings")
    scale.add_argument("--sizes", default="10000,100000,1000000")
    scale.add_argument("--methods", default="agglomerative,components,leiden")
    scale.add_argument("--k", type=int, default=10)
    real = sub.add_parser("real", help="ARI on the development sets against the DBSCAN baseline")
    from bench_cluster_real import add_arguments, real_main

    add_arguments(real)
    lodo = sub.add_parser("lodo", help="leave-one-dataset-out: thresholds and counts of datasets without train rows")
    from bench_cluster_lodo import add_arguments as lodo_arguments
    from bench_cluster_lodo import lodo_main

    lodo_arguments(lodo)
    args = parser.parse_args(argv)
    if args.mode == "scale":
        scale_main(args)
    elif args.mode == "real":
        real_main(args)
    else:
        lodo_main(args)


if __name__ == "__main__":
    main(sys.argv[1:])

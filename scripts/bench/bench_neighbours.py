"""k-reciprocal re-ranking at scale, in bounded memory: time and peak memory of each step on
generated embeddings (identities as directions plus noise), never a dense N x N matrix.

    python scripts/bench/bench_neighbours.py                               # 100,000 queries x 100,000 database images
    python scripts/bench/bench_neighbours.py --queries 20000 --database 20000 --dim 128 --index hnsw

Steps: the faiss top-(k1 + 1) graph over queries and database together and the sparse encoding V
(k_reciprocal_encoding), each query's `--shortlist` nearest database images (faiss), and the
k-reciprocal distance of those pairs (sparse Jaccard, in chunks). Prints a markdown table with the
seconds of each step, V's non-zeros, the peak resident memory (max RSS) and what a dense float32
N x N distance matrix would take. Figures depend on the CPU, named in the header.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np
from benchmarking import cpu_line

from core.errors import cli_entry
from core.schema import RetrievalConfig
from engine.neighbourhood import k_reciprocal_distance, k_reciprocal_encoding
from engine.retrieval import exact_search


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def embeddings(count: int, dim: int, identities: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.normal(size=(identities, dim)).astype(np.float32)
    x = centres[rng.integers(0, identities, count)] + rng.normal(scale=0.7, size=(count, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@cli_entry
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=100_000)
    p.add_argument("--database", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--identities", type=int, default=20_000)
    p.add_argument("--k1", type=int, default=20)
    p.add_argument("--k2", type=int, default=6)
    p.add_argument("--shortlist", type=int, default=25)
    p.add_argument("--index", default="flat", choices=("flat", "ivf", "hnsw"))
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    x = embeddings(args.queries + args.database, args.dim, args.identities, rng)
    n = len(x)
    steps = []
    start = time.perf_counter()
    v, _ = k_reciprocal_encoding(x, args.k1, args.k2, RetrievalConfig(index=args.index))
    steps.append(("top-k graph + sparse encoding", time.perf_counter() - start, peak_mb()))
    start = time.perf_counter()
    _, short = exact_search(x[:args.queries], x[args.queries:], args.shortlist)
    steps.append((f"shortlists ({args.shortlist} per query)", time.perf_counter() - start, peak_mb()))
    first = np.repeat(np.arange(args.queries), args.shortlist)
    second = args.queries + short.ravel()
    start = time.perf_counter()
    distance = k_reciprocal_distance(x, v, first, second)
    steps.append((f"k-reciprocal distance of {len(first):,} pairs", time.perf_counter() - start, peak_mb()))
    assert np.isfinite(distance).all()
    print(f"# k-reciprocal re-ranking, {args.queries:,} queries x {args.database:,} database images "
          f"({cpu_line()}; dim {args.dim}, k1 {args.k1}, k2 {args.k2}, index {args.index})\n")
    print("| step | seconds | peak RSS so far (MB) |")
    print("|---|---|---|")
    for name, seconds, peak in steps:
        print(f"| {name} | {seconds:.1f} | {peak:.0f} |")
    print(f"\nV: {v.nnz:,} non-zeros ({v.nnz / n:.1f} per image, {(v.data.nbytes + v.indices.nbytes) / 1e6:.0f} MB); "
          f"a dense float32 {n:,} x {n:,} matrix would take {n * n * 4 / 1e9:.0f} GB. Peak RSS {peak_mb():.0f} MB.")


if __name__ == "__main__":
    main(sys.argv[1:])

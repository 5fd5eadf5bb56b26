"""Retrieval benchmark: our path vs bare faiss vs a dense matrix product; an approximate index at scale.

    python scripts/bench/bench_retrieval.py [--queries 10000] [--gallery 100000] [--dim 512] [--k 10]
                                      [--identities 20000] [--large 1000000] [--large-queries 1000]

Data are random unit vectors (--data clustered: identity clusters, like real embeddings). Every
method runs in fresh subprocesses that first create their data (in chunks, so creating them leaves
no transient peak), then measure time and extra memory = peak RSS while the method runs minus RSS
once the data exist (the peak is reset through /proc/self/clear_refs on Linux; elsewhere RSS is
sampled every 2 ms). The time ratio of ours to bare faiss comes from one more process that
alternates the two --repeats times, so load from other programs favours neither.

  ours   engine.retrieval.retrieve: exact faiss top-k, identity aggregation (max) over
         --identities identities, result arrays
  faiss  bare IndexFlatIP: add (copies the gallery) + search; both times reported
  dense  torch: queries @ gallery.T, then torch.topk over the full (Q, N) matrix

Large case (--large N, 0 to skip): exact search vs the approximate index (--large-index) for
--large-queries queries; recall@k of the approximate index against the exact top-k. A thousand
queries measure recall to about +-0.005.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from core.errors import cli_entry

CHUNK = 65536


def _normalised(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_data(kind: str, n: int, dim: int, identities: int, seed: int) -> tuple:
    """(unit vectors (n, dim) float32, identity label per vector), built in chunks.

    random: uniform on the sphere, labels drawn at random (the issue's benchmark). clustered:
    each vector is its identity's centre plus noise of the same norm (cosine ~0.5 between two
    images of one individual, ~0 otherwise), the structure real re-ID embeddings have.
    """
    rng = np.random.default_rng(seed)
    labels = np.random.default_rng(seed + 100).integers(0, identities, n)
    centres = _normalised(np.random.default_rng(0).standard_normal((identities, dim), dtype=np.float32)) \
        if kind == "clustered" else None
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, CHUNK):
        block = rng.standard_normal((min(CHUNK, n - start), dim), dtype=np.float32)
        if centres is not None:
            block = _normalised(block) + centres[labels[start:start + len(block)]]
        out[start:start + len(block)] = _normalised(block)
    return out, labels


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


class PeakMemory:
    """Extra peak resident memory (MB) of the enclosed code over the RSS at entry."""

    def __enter__(self) -> PeakMemory:
        import psutil

        self._process = psutil.Process()
        try:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")  # resets VmHWM, the kernel's peak-RSS counter, to the current RSS
            self._kernel = True
        except OSError:
            self._kernel = False
            self._peak, self._stop = 0, threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        self.baseline = self._process.memory_info().rss
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._process.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        if self._kernel:
            peak = _status_kb("VmHWM") * 1024
        else:
            self._stop.set()
            self._thread.join()
            peak = self._peak
        self.extra_mb = max(0.0, (peak - self.baseline) / 2**20)


def _timed(fn, repeats: int) -> tuple:
    """(best wall time, last result)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def child(spec: dict) -> dict:
    """Run one method on freshly created data; returns its figures, saves its top-k indices."""
    import faiss

    from core.schema import RetrievalConfig
    from engine.retrieval import build_index, exact_search, retrieve, search

    method, k, repeats = spec["method"], spec["k"], spec["repeats"]
    if method == "dense":
        import torch  # imported before measuring: loading its libraries is not the method's memory
    queries, _ = make_data(spec["data"], spec["queries"], spec["dim"], spec["identities"], seed=1)
    gallery, codes = make_data(spec["data"], spec["gallery"], spec["dim"], spec["identities"], seed=2)
    labels = np.array([f"id{i}" for i in range(spec["identities"])], dtype=object)[codes]
    out: dict = {"method": method}
    with PeakMemory() as memory:
        if method == "ours":
            out["time_s"], result = _timed(lambda: retrieve(queries, gallery, labels, RetrievalConfig(k=k)), repeats)
            indices = result.indices
        elif method == "faiss":
            def bare():
                index = faiss.IndexFlatIP(spec["dim"])
                start = time.perf_counter()
                index.add(gallery)
                added = time.perf_counter()
                _, found = index.search(queries, k)
                return added - start, time.perf_counter() - added, found
            runs = [bare() for _ in range(repeats)]
            out["add_s"], out["search_s"] = min(r[0] for r in runs), min(r[1] for r in runs)
            out["time_s"] = min(r[0] + r[1] for r in runs)
            indices = runs[-1][2]
        elif method == "paired":
            # Alternating in one process: load from other programs hits both sides alike.
            index = faiss.IndexFlatIP(spec["dim"])
            index.add(gallery)
            out["faiss_search_s"], out["ours_s"] = [], []
            for _ in range(repeats):
                start = time.perf_counter()
                index.search(queries, k)
                out["faiss_search_s"].append(time.perf_counter() - start)
                start = time.perf_counter()
                retrieve(queries, gallery, labels, RetrievalConfig(k=k))
                out["ours_s"].append(time.perf_counter() - start)
            indices = None
        elif method == "dense":
            def dense():
                sims = torch.from_numpy(queries) @ torch.from_numpy(gallery).T
                return torch.topk(sims, k, dim=1).indices.numpy()
            out["time_s"], indices = _timed(dense, repeats)
        elif method == "exact":
            out["time_s"], (_, indices) = _timed(lambda: exact_search(queries, gallery, k), repeats)
        elif method == "approx":
            cfg = RetrievalConfig(k=k, index=spec["index"], nlist=spec["nlist"], hnsw_m=spec["hnsw_m"],
                                  use_gpu=False)
            start = time.perf_counter()
            index = build_index(gallery, cfg, progress=True)
            out["build_s"] = time.perf_counter() - start
            exact = np.load(Path(spec["workdir"]) / "exact.npy")
            out["sweep"], indices = [], None
            for value in spec["sweep"]:  # one build, several search breadths
                if spec["index"] == "ivf":
                    index.nprobe = value
                else:
                    index.hnsw.efSearch = value
                seconds, (_, indices) = _timed(lambda: search(index, queries, k), repeats)
                recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(indices, exact, strict=True)]))
                out["sweep"].append({"value": value, "time_s": seconds, "recall": recall})
        else:
            raise ValueError(f"unknown method {method}")
    out["extra_mb"] = memory.extra_mb
    if indices is not None:
        np.save(Path(spec["workdir"]) / f"{method}.npy", indices)
    return out


def run_child(spec: dict) -> dict:
    print(f"... {spec['method']}: {spec['queries']} queries x {spec['gallery']} gallery", flush=True)
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child {spec['method']} failed with status {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def agreement(workdir: Path, a: str, b: str) -> float:
    """Fraction of top-k entries two methods share (ties in random data may swap a few)."""
    x, y = np.load(workdir / f"{a}.npy"), np.load(workdir / f"{b}.npy")
    return float(np.mean([len(set(p) & set(q)) / len(p) for p, q in zip(x, y, strict=True)]))


def _seconds(values: list) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=10000, help="queries of the main case (0: skip it)")
    parser.add_argument("--gallery", type=int, default=100000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--identities", type=int, default=20000, help="distinct gallery identities")
    parser.add_argument("--repeats", type=int, default=3,
                        help="alternating runs of ours and bare faiss in the timing process; the best counts")
    parser.add_argument("--skip-dense", action="store_true", help="skip the dense baseline (needs Q x N x 4 bytes)")
    parser.add_argument("--large", type=int, default=1000000, help="gallery size of the large case (0: skip)")
    parser.add_argument("--large-queries", type=int, default=1000)
    parser.add_argument("--large-index", choices=["ivf", "hnsw"], default="ivf")
    parser.add_argument("--nlist", type=int, default=0, help="ivf lists (0: 4*sqrt(N))")
    parser.add_argument("--sweep", default="",
                        help="comma-separated nprobe (ivf) or efSearch (hnsw) values, measured on one build "
                             "(default ivf: 256,1024,3600, which reaches recall 0.95 on 1M random vectors; "
                             "hnsw: 64,128,256,512)")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--data", choices=["random", "clustered"], default="random",
                        help="random unit vectors, or identity clusters like real embeddings")
    parser.add_argument("--large-data", choices=["random", "clustered"], default=None,
                        help="data of the large case (default: --data)")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


@cli_entry
def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    base = {"dim": args.dim, "k": args.k, "identities": args.identities, "repeats": args.repeats, "data": args.data}
    sweep = [int(v) for v in (args.sweep or ("256,1024,3600" if args.large_index == "ivf"
                                              else "64,128,256,512")).split(",")]
    report: dict = {"setup": vars(args) | {"child": None}}
    with tempfile.TemporaryDirectory() as workdir:
        small = base | {"queries": args.queries, "gallery": args.gallery, "workdir": workdir}
        if args.queries:
            report["small"] = {m: run_child(small | {"method": m, "repeats": 1}) for m in ("faiss", "ours")}
            if not args.skip_dense:
                report["small"]["dense"] = run_child(small | {"method": "dense", "repeats": 1})
            report["small"]["paired"] = run_child(small | {"method": "paired"})
            report["small"]["ours_vs_faiss_topk_agreement"] = agreement(Path(workdir), "ours", "faiss")
        if args.large:
            large = base | {"queries": args.large_queries, "gallery": args.large, "workdir": workdir,
                            "repeats": 1, "index": args.large_index, "nlist": args.nlist, "hnsw_m": args.hnsw_m,
                            "sweep": sweep, "data": args.large_data or args.data}
            report["large"] = {m: run_child(large | {"method": m}) for m in ("exact", "approx")}
    print_report(report, args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


def print_report(report: dict, args: argparse.Namespace) -> None:
    if "small" in report:
        print_small(report["small"], args)
    if "large" in report:
        print_large(report["large"], args)


def print_small(small: dict, args: argparse.Namespace) -> None:
    ours, bare, paired = small["ours"], small["faiss"], small["paired"]
    ours_s, bare_s = min(paired["ours_s"]), min(paired["faiss_search_s"])
    print(f"\n{args.queries} queries x {args.gallery} gallery, dim {args.dim}, top-{args.k}, "
          f"{args.identities} identities ({args.data} data)")
    print(f"  time, best of {args.repeats} alternating runs in one process:")
    print(f"    ours (retrieve + identity max)  {ours_s:7.2f} s   all: {_seconds(paired['ours_s'])}")
    print(f"    bare faiss IndexFlatIP.search   {bare_s:7.2f} s   all: {_seconds(paired['faiss_search_s'])}")
    print("  time and extra memory, each in a fresh process (extra = peak RSS over RSS after data creation):")
    print(f"    ours                            {ours['time_s']:7.2f} s  {ours['extra_mb']:8.0f} MB")
    print(f"    bare faiss (add + search)       {bare['time_s']:7.2f} s  {bare['extra_mb']:8.0f} MB"
          f"   (add {bare['add_s']:.2f} s: the index holds a copy of the gallery)")
    if "dense" in small:
        print(f"    dense matmul + torch.topk       {small['dense']['time_s']:7.2f} s  "
              f"{small['dense']['extra_mb']:8.0f} MB")
    ratio = ours_s / bare_s
    print(f"  ours / bare faiss search time = {ratio:.3f} (target <= 1.2: {'PASS' if ratio <= 1.2 else 'FAIL'}); "
          f"ours extra memory {ours['extra_mb']:.0f} MB (target < 150: "
          f"{'PASS' if ours['extra_mb'] < 150 else 'FAIL'}); top-k agreement with bare faiss "
          f"{small['ours_vs_faiss_topk_agreement']:.4f}")


def print_large(large: dict, args: argparse.Namespace) -> None:
    exact, approx = large["exact"], large["approx"]
    knob = "nprobe" if args.large_index == "ivf" else "efSearch"
    shape = f"nlist={args.nlist or '4*sqrt(N)'}" if args.large_index == "ivf" else f"M={args.hnsw_m}"
    print(f"\n{args.large_queries} queries x {args.large} gallery ({args.large_data or args.data} data), "
          f"top-{args.k}")
    print(f"  exact (faiss knn, no index)  search {exact['time_s']:.2f} s, {exact['extra_mb']:.0f} MB extra")
    print(f"  {args.large_index} ({shape}): build {approx['build_s']:.1f} s, {approx['extra_mb']:.0f} MB extra "
          "(peak over build and searches, the index's copy of the vectors included)")
    for row in approx["sweep"]:
        print(f"    {knob}={row['value']:<6} search {row['time_s']:7.2f} s   recall@{args.k} {row['recall']:.4f}")
    reached = [row for row in approx["sweep"] if row["recall"] >= 0.95]
    print(f"  recall@{args.k} >= 0.95: " + (f"PASS from {knob}={reached[0]['value']}" if reached else "FAIL"))


if __name__ == "__main__":
    main(sys.argv[1:])

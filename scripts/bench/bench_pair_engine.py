"""Pairs per second of keypoint matching: today's path (OpenCV, one pair at a time, RANSAC on every
pair, one thread) against the batched pair engine (one matrix product per hub image and chunk of
partners, hubs in a pool of threads), with and without early rejection, on the same pairs of the
same images, in one process.

    python scripts/bench/bench_pair_engine.py --images DATA/ZebraStripes DATA/DogFaceNet-dev DATA/LionData
    python scripts/bench/bench_pair_engine.py --hubs 8 --partners 25 --min-matches 15 --threads 2
    python scripts/bench/bench_pair_engine.py --images DATA/ZebraStripes --matcher aliked_lightglue   # on a GPU

Per folder: `--hubs` images, each paired with `--partners` others drawn at random (a query and its
shortlist), SIFT features extracted once at `--side` px (not timed). The three paths run in turn,
`--repeats` times, and the best time of each counts (the machine's cores may be shared: the ratio of
two paths measured side by side is the figure to trust). Inlier counts of the batched engine are
checked against today's path pair by pair (rejected early: pairs below the minimum only).
"""
from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from benchmarking import cpu_line

import engine.components  # noqa: F401  (the built-in names a config may use, registered)
from core.array_cache import ArrayCache
from core.errors import DataError, cli_entry
from core.schema import RerankConfig
from data.images import ImageLoader
from engine.matching.pairs import PairMatcher
from matchers import Matcher, build_matcher

SUFFIXES = {".jpg", ".jpeg", ".png"}


class MemoryStore:
    """The features of a list of images, in memory (what KeypointStore serves from its caches)."""

    def __init__(self, matcher: Matcher, features: list):
        self.matcher, self._features = matcher, features

    def features(self, row: int):
        return self._features[row]

    def key(self, row: int) -> str:
        return str(row)

    def prepare(self, rows, accelerator=None) -> None:
        pass


def pairs_of(count: int, hubs: int, partners: int, rng: np.random.Generator) -> tuple:
    first, second = [], []
    for hub in range(hubs):
        others = rng.choice(np.setdiff1d(np.arange(count), [hub]), partners, replace=False)
        first.extend([hub] * partners)
        second.extend(others.tolist())
    return np.array(first), np.array(second)


def run(store: MemoryStore, cfg: RerankConfig, first: np.ndarray, second: np.ndarray) -> tuple:
    engine = PairMatcher(store, cfg, ArrayCache(None), show_progress=False)
    start = time.perf_counter()
    records = engine.records(first, second)
    return time.perf_counter() - start, [int(r.inlier.sum()) for r in records], engine


def bench_folder(folder: str, args) -> dict:
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in SUFFIXES)
    needed = args.hubs + args.partners + 1
    if len(paths) < needed:
        raise DataError(f"{folder} has {len(paths)} images, the benchmark needs {needed}")
    rng = np.random.default_rng(0)
    paths = [paths[i] for i in np.sort(rng.choice(len(paths), min(len(paths), args.images_per_set), replace=False))]
    if args.matcher == "sift":
        matcher = build_matcher("sift", {"threads": args.threads}, max_keypoints=args.max_keypoints)
        pairwise = build_matcher("sift", max_keypoints=args.max_keypoints)
    else:  # LightGlue: batched by size vs one pair at a time, on args.device
        matcher = build_matcher(args.matcher, {"batched": True}, max_keypoints=args.max_keypoints, device=args.device)
        pairwise = build_matcher(args.matcher, {"batched": False}, max_keypoints=args.max_keypoints, device=args.device)
    loader = ImageLoader(args.side, None, fit="long")
    features = [matcher.extract(loader.load(str(p), None)) for p in paths]
    first, second = pairs_of(len(paths), args.hubs, args.partners, rng)
    pairwise.match_many = partial(Matcher.match_many, pairwise)  # today's path: one pair at a time,
    pairwise.thread_safe = False  # in one thread
    paths_to_time = {"today": (MemoryStore(pairwise, features), RerankConfig()),
                     "batched": (MemoryStore(matcher, features), RerankConfig()),
                     "batched+reject": (MemoryStore(matcher, features), RerankConfig(min_matches=args.min_matches))}
    best = {name: np.inf for name in paths_to_time}
    inliers, engines = {}, {}
    for _ in range(args.repeats):
        for name, (store, cfg) in paths_to_time.items():
            seconds, inliers[name], engines[name] = run(store, cfg, first, second)
            best[name] = min(best[name], seconds)
    today = np.array(inliers["today"])
    reject = np.array(inliers["batched+reject"])
    return {"set": Path(folder).name, "pairs": len(first),
            "keypoints": float(np.mean([len(f["keypoints"]) for f in features])),
            "pairs_per_s": {name: len(first) / s for name, s in best.items()},
            "same_inliers": bool(np.array_equal(today, inliers["batched"])),
            "reject_ok": bool(np.array_equal(today[today >= args.min_matches], reject[today >= args.min_matches])),
            "rejected": engines["batched+reject"].rejected}


@cli_entry
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", nargs="+", required=True, help="folders of photos (searched recursively)")
    p.add_argument("--images-per-set", type=int, default=120)
    p.add_argument("--hubs", type=int, default=8)
    p.add_argument("--partners", type=int, default=25)
    p.add_argument("--side", type=int, default=512)
    p.add_argument("--max-keypoints", type=int, default=512)
    p.add_argument("--min-matches", type=int, default=15)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the batched products (sift threads)")
    p.add_argument("--matcher", default="sift", choices=("sift", "aliked_lightglue", "disk_lightglue"),
                   help="LightGlue: batched by size (every layer) vs one pair at a time (adaptive): inliers differ")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="LightGlue's device")
    args = p.parse_args(argv)
    rows = [bench_folder(folder, args) for folder in args.images]
    where = torch.cuda.get_device_name() if args.matcher != "sift" and args.device.startswith("cuda") else cpu_line()
    print(f"# Pair engine throughput ({where}, torch threads {args.threads}, side {args.side} px, "
          f"{args.max_keypoints} keypoints, {args.matcher}, fundamental RANSAC)\n")
    print(f"| set | pairs | keypoints/image | today pairs/s | batched pairs/s | x | same inliers | "
          f"batched + reject < {args.min_matches} pairs/s | x | rejected | no pair >= {args.min_matches} inliers dropped |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["pairs_per_s"]
        print(f"| {r['set']} | {r['pairs']} | {r['keypoints']:.0f} | {s['today']:.0f} | {s['batched']:.0f} | "
              f"{s['batched'] / s['today']:.1f} | {'yes' if r['same_inliers'] else 'NO'} | {s['batched+reject']:.0f} | "
              f"{s['batched+reject'] / s['today']:.1f} | {r['rejected']} | {'yes' if r['reject_ok'] else 'NO'} |")


if __name__ == "__main__":
    main(sys.argv[1:])

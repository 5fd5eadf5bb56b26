"""Throughput, scaling, caching and memory of keypoint re-ranking, per matcher.

    python scripts/bench/bench_rerank.py --images DATA/ZebraStripes     # any folder of real photos
    python scripts/bench/bench_rerank.py                                             # the synthetic set
    python scripts/bench/bench_rerank.py --matchers sift --galleries 60,180 --queries 8 --shortlist 10

`--images` takes any folder of photos (searched recursively); DATA/ZebraStripes stands for a copy
of the ZebraStripes photos (camera photos of plains zebras, about 1,500-2,600 px), the set the
docs/results.md's figures were measured on.

Per matcher, at `--side` px on this machine's cores:
1. images extracted per second (fresh cache), the number of extractions against the number of
   distinct images, and the cache's bytes per image;
2. pairs matched per second (features already cached);
3. the cascade (a random global model shortlisting `--shortlist` images for `--queries` queries,
   then the matcher) at two gallery sizes, each in a fresh process: pairs matched, images
   extracted, seconds and peak memory (max RSS). Pairs = queries x shortlist at any gallery size
   and images at most queries x (shortlist + 1), so time follows them, not the gallery;
4. the same cascade run again on the same caches: extractions and pairs matched (both 0).
Prints a markdown table; figures depend on the CPU (named in the header).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from benchmarking import cpu_line

import engine.components  # noqa: F401  (the built-in names a config may use, registered)
from core.array_cache import ArrayCache
from core.errors import DataError, cli_entry
from core.schema import RerankConfig, RetrievalConfig
from engine.matching.keypoints import KeypointStore
from engine.matching.pairs import PairMatcher
from engine.matching.scorer import MatcherScorer
from engine.scoring.calibration import fit_calibrator
from engine.scoring.scorers import MatchSpace, ModelOutput, scorers_for
from engine.scoring.voting import vote
from matchers import build_matcher

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def image_table(folder: str, count: int) -> pd.DataFrame:
    """`count` images of a folder of <identity>/<image> files (or the synthetic set), sorted."""
    if folder:
        paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        from data.synthetic import ensure_synthetic

        root = Path(ensure_synthetic(seed=0))
        paths = sorted((root / "images").rglob("*.jpg"))
    if len(paths) < count:
        raise DataError(f"{folder or 'the synthetic set'} has {len(paths)} images, the benchmark needs {count}")
    paths = paths[:count]
    return pd.DataFrame({"path": [str(p) for p in paths], "identity": [p.parent.name for p in paths],
                         "bbox": [None] * count, "dataset": ["bench"] * count, "orientation": [None] * count})


def store_for(matcher_name: str, table: pd.DataFrame, args, cache_dir: Path) -> KeypointStore:
    matcher = build_matcher(matcher_name, max_keypoints=args.max_keypoints)
    return KeypointStore(matcher, table, side=args.side, crop_to_bbox=False, bbox_padding=0.0, orientation_rules={},
                         cache=ArrayCache(cache_dir), show_progress=False)


def cascade(matcher_name: str, args, gallery: int, cache_dir: Path) -> dict:
    """One cascade run: a random global model over `gallery` images, `args.queries` queries."""
    table = image_table(args.images, gallery + args.queries)
    store = store_for(matcher_name, table, args, cache_dir)
    cfg = RerankConfig(matcher=matcher_name, shortlist=args.shortlist, side=args.side, max_keypoints=args.max_keypoints)
    pairs = PairMatcher(store, cfg, ArrayCache(cache_dir), show_progress=False)
    scorer = MatcherScorer(pairs, cfg, 1.0)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(table), 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    space = MatchSpace(table["identity"].to_numpy(dtype=object)[:gallery], table["dataset"].to_numpy(dtype=object),
                       False, RetrievalConfig())
    scorers = scorers_for([ModelOutput("random", vectors)]) + [scorer]
    scorers[0].calibrator = fit_calibrator(np.array([0.0, 1.0]), np.array([False, True]), "isotonic")
    scorer.calibrator = scorers[0].calibrator
    start = time.perf_counter()
    vote(scorers, space, np.arange(gallery, gallery + args.queries), np.arange(gallery), args.shortlist)
    return {"gallery": gallery, "seconds": time.perf_counter() - start, "pairs": pairs.matched,
            "extracted": store.extracted, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def bench_matcher(name: str, args) -> dict:
    result = {"matcher": name}
    with tempfile.TemporaryDirectory() as tmp:
        table = image_table(args.images, args.extract)
        store = store_for(name, table, args, Path(tmp) / "cache")
        start = time.perf_counter()
        store.prepare(range(len(table)))
        result["images_per_s"] = len(table) / (time.perf_counter() - start)
        result["extractions"], result["distinct_images"] = store.extracted, len(table)
        files = list((Path(tmp) / "cache").rglob("*.npz"))
        result["cache_kb_per_image"] = sum(f.stat().st_size for f in files) / len(files) / 1024
        cfg = RerankConfig(matcher=name, side=args.side, max_keypoints=args.max_keypoints)
        pairs = PairMatcher(store, cfg, ArrayCache(None), show_progress=False)
        rng = np.random.default_rng(0)
        first, second = rng.integers(0, len(table), (2, args.pairs))
        keep = first != second
        start = time.perf_counter()
        pairs.records(first[keep], second[keep])
        result["pairs_per_s"] = pairs.matched / (time.perf_counter() - start)
    result["cascade"] = []
    with tempfile.TemporaryDirectory() as tmp:
        for gallery in args.galleries:  # each in its own process: its peak memory is its own
            out = subprocess.run([sys.executable, __file__, "--cascade-only", name, "--gallery", str(gallery),
                                  "--cache", str(Path(tmp) / f"g{gallery}"), *args.argv],
                                 capture_output=True, text=True, check=True)
            result["cascade"].append(json.loads(out.stdout.strip().splitlines()[-1]))
        again = subprocess.run([sys.executable, __file__, "--cascade-only", name, "--gallery", str(args.galleries[-1]),
                                "--cache", str(Path(tmp) / f"g{args.galleries[-1]}"), *args.argv],
                               capture_output=True, text=True, check=True)
        result["second_run"] = json.loads(again.stdout.strip().splitlines()[-1])
    return result


def table_of(results: list, args) -> str:
    lines = [f"# Re-ranking throughput ({cpu_line()}, side {args.side} px, "
             f"{args.max_keypoints} keypoints, {args.images or 'synthetic set'})", "",
             "| matcher | images/s | pairs/s | extractions / distinct images | cache KB/image | "
             + " | ".join(f"gallery {g}: pairs, images, s, peak MB" for g in args.galleries) + " | second run: extractions, pairs |",
             "|---|---|---|---|---|" + "---|" * len(args.galleries) + "---|"]
    for r in results:
        runs = " | ".join(f"{c['pairs']}, {c['extracted']}, {c['seconds']:.1f}, {c['max_rss_mb']:.0f}"
                         for c in r["cascade"])
        lines.append(f"| {r['matcher']} | {r['images_per_s']:.2f} | {r['pairs_per_s']:.2f} | "
                     f"{r['extractions']} / {r['distinct_images']} | {r['cache_kb_per_image']:.0f} | {runs} | "
                     f"{r['second_run']['extracted']}, {r['second_run']['pairs']} |")
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", default="", help="a folder of images (default: the synthetic set)")
    p.add_argument("--matchers", type=lambda s: s.split(","), default=["sift", "aliked_lightglue", "disk_lightglue"])
    p.add_argument("--side", type=int, default=512)
    p.add_argument("--max-keypoints", type=int, default=512)
    p.add_argument("--extract", type=int, default=24, help="images extracted to time extraction")
    p.add_argument("--pairs", type=int, default=40, help="random pairs matched to time matching")
    p.add_argument("--galleries", type=lambda s: [int(v) for v in s.split(",")], default=[60, 180])
    p.add_argument("--queries", type=int, default=6)
    p.add_argument("--shortlist", type=int, default=10)
    p.add_argument("--out", default="", help="also write the table to this file")
    p.add_argument("--cascade-only", default="", help=argparse.SUPPRESS)
    p.add_argument("--gallery", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--cache", default="", help=argparse.SUPPRESS)
    return p


@cli_entry
def main(argv=None) -> None:
    args = parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # repeated to the cascade's own processes
    if args.cascade_only:
        print(json.dumps(cascade(args.cascade_only, args, args.gallery, Path(args.cache))))
        return
    results = []
    for name in args.matchers:
        print(f"benchmarking {name} ...", file=sys.stderr, flush=True)
        results.append(bench_matcher(name, args))
    text = table_of(results, args)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main(sys.argv[1:])

"""Keypoints that tell individuals apart, not places (issue 36): eval.py's open-set score, rank-1 and
re-ranking time per test part, SIFT re-ranking as it was before issue 36 (`sift`) against each new
option alone, the default since (`weightings`: every keypoint weighting, each kept where the held-out
split gains) and all of them together.

    python scripts/bench/bench_keypoints.py --set sites=EXPORT:PROTOCOL/sites/test \\
        --set zebra=EXPORT:PROTOCOL/zebra/test --out runs/bench_keypoints
    python scripts/bench/bench_keypoints.py --set dogs=EXPORT:ROOT --variants sift rootsift all

Each `--set NAME=MODEL:ROOT` is a model export and an AnimalCLEF-format open-set part (the test part
of scripts/make_openset_protocol.py; for the synthetic camera sites, a protocol of
`scripts/make_synthetic.py --scenes --sites K`). Every run scores whole images
(`data.crop_to_bbox=false`: camera photos come without boxes). Per set, eval.py first runs with
`rerank.matcher=none` twice (the first fills OUT/embeddings; the second's wall time is eval.py's cost
without re-ranking), then each matcher's keypoints of every image are extracted once into
OUT/NAME/features-MATCHER (not timed). Each variant then runs with a fresh keypoint cache holding those
features but no pair records: its wall time counts every pair's matching and verification, the
weightings' own database shortlists, and the tuning, not the extraction (the same for every
variant of a matcher). `rerank s` is a variant's wall time less the `none` run's; `x sift` is that
against the `sift` variant of the same set, measured in the same session.

Runs are sequential and reused while their record holds the same command. OUT/results.md is the
table (score = metrics.json `tuned.score`, the threshold tuned on the database only; rank-1 of the
fused identity ranking among known queries) with the options and matcher weight eval.py chose on
the held-out split.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List

from benchmarking import REPO, cell, cpu_line, execute, parse_set, read_metrics

from core.errors import ConfigError, cli_entry
from core.files import atomic_write_text

ALL_WEIGHTINGS = "rerank.weighting=[confusers,burstiness,foreground]"
NO_WEIGHTING = "rerank.weighting=[]"
# Every variant names its weightings: the default lists them all since issue 36.
VARIANTS: Dict[str, List[str]] = {
    "none": ["rerank.matcher=none"],
    "sift": ["rerank.matcher=sift", NO_WEIGHTING],  # the re-ranking before issue 36
    "rootsift": ["rerank.matcher=rootsift", NO_WEIGHTING],
    "confusers": ["rerank.matcher=sift", "rerank.weighting=[confusers]"],
    "burstiness": ["rerank.matcher=sift", "rerank.weighting=[burstiness]"],
    "foreground": ["rerank.matcher=sift", "rerank.weighting=[foreground]"],
    "geometry": ["rerank.matcher=sift", NO_WEIGHTING, "rerank.geometries=[similarity,affine]"],
    "weightings": ["rerank.matcher=sift", ALL_WEIGHTINGS],  # today's default
    "all": ["rerank.matcher=rootsift", ALL_WEIGHTINGS, "rerank.geometries=[similarity,affine]"],
}
DEFAULT = list(VARIANTS)
RECORDS_PREFIX = "pair_records"  # the pair engine's records file (and its SQLite journal files)


def matcher_of(variant: str) -> str:
    return next(o.split("=", 1)[1] for o in VARIANTS[variant] if o.startswith("rerank.matcher="))



def command(data: Dict, variant: str, folder: Path, out: Path, cache: Path, overrides: List[str]) -> List[str]:
    return [sys.executable, str(REPO / "eval.py"), f"models=[{data['model']}]", "data.format=animalclef2025",
            f"data.root={data['root']}", "data.crop_to_bbox=false", f"output_dir={folder / 'eval'}",
            f"embed_cache={out / 'embeddings'}", f"rerank.cache={cache}", "report=false", *VARIANTS[variant],
            *overrides]


def features_only(source: Path, target: Path) -> None:
    """A fresh keypoint cache at `target` holding `source`'s features (hard links) but no pair records."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for path in source.rglob("*"):
        if path.is_file() and not path.name.startswith(RECORDS_PREFIX):
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, destination)
            except OSError:
                shutil.copy2(path, destination)


def warm_features(data: Dict, matcher: str, cache: Path, overrides: List[str]) -> None:
    """Every evaluation image's keypoints under `matcher`, extracted into `cache` (no pairs matched)."""
    import engine.components  # noqa: F401  (the registries a config is checked against)
    from core.config import load_config
    from core.schema import EvalConfig
    from engine.matching.scorer import build_matcher_scorer
    from engine.prepare import load_run_data

    cfg = load_config(EvalConfig, None, [f"models=[{data['model']}]", "data.format=animalclef2025",
                                         f"data.root={data['root']}", "data.crop_to_bbox=false",
                                         f"rerank.matcher={matcher}", f"rerank.cache={cache}", *overrides])
    rows = load_run_data(cfg).rows
    build_matcher_scorer(cfg, rows).pairs.store.prepare(range(len(rows)))


def run_variant(out: Path, data: Dict, variant: str, overrides: List[str]) -> Dict:
    folder = out / data["name"] / variant
    cache = folder / "keypoints"
    warm = out / data["name"] / f"features-{matcher_of(variant)}" if variant != "none" else None
    if warm is not None and not (warm / ".warm").is_file():  # each matcher's keypoints, extracted once per set
        shutil.rmtree(warm, ignore_errors=True)
        warm_features(data, matcher_of(variant), warm / "keypoints", overrides)
        (warm / ".warm").write_text("features extracted\n")
    cmd = command(data, variant, folder, out, cache, overrides)
    record_path = folder / "record.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("command") == cmd[1:]:
            return record
    if warm is not None:
        features_only(warm / "keypoints", cache)
    else:  # the embeddings extracted once, untimed: the timed run reads them, as every variant does
        execute(command(data, variant, folder / "warmup", out, cache, overrides), folder / "warmup.log",
                f"{data['name']} embeddings")
    start, cpu = time.monotonic(), _children_cpu()
    execute(cmd, folder / "eval.log", f"{data['name']} {variant}")
    seconds, cpu_seconds = round(time.monotonic() - start, 1), round(_children_cpu() - cpu, 1)
    manifest = json.loads((folder / "eval" / "manifest.json").read_text())
    threshold = manifest.get("threshold", {})
    record = {"name": data["name"], "variant": variant, "command": cmd[1:], "seconds": seconds, "cpu_seconds": cpu_seconds,
              **{k: read_metrics(folder / "eval" / "metrics.json")[k] for k in ("score", "BAKS", "BAUS", "rank1")},
              "matcher_weight": threshold.get("matcher_weight", {}).get("chosen"),
              "options": {k: v["chosen"] for k, v in threshold.get("options", {}).items()},
              "pairs_matched": (manifest.get("rerank") or {}).get("pairs_matched")}
    atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
    return record


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children: eval.py's own work, which a
    busy shared machine stretches less than its wall time."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _extra(record: Dict, base: Dict, sift: Dict, key: str, variant: str) -> tuple:
    """(the variant's `key` seconds beyond the `none` run's, that over the `sift` variant's); None where
    a run or the figure is missing."""
    if not base or variant == "none" or record.get(key) is None or base.get(key) is None:
        return None, None
    extra = record[key] - base[key]
    sift_extra = sift[key] - base[key] if sift and sift.get(key) is not None else None
    return extra, (extra / sift_extra if sift_extra else None)


def markdown(records: List[Dict], sets: List[str], variants: List[str]) -> str:
    lines = [f"CPU: {cpu_line()}", "",
             "| set | variant | score (BAKS, BAUS) | rank-1 | wall s | rerank s | x sift | rerank CPU s | x sift | pairs "
             "| weight | options kept |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    by = {(r["name"], r["variant"]): r for r in records}
    for name in sets:
        base = by.get((name, "none"))
        sift = by.get((name, "sift"))
        for variant in variants:
            r = by.get((name, variant))
            if r is None:
                continue
            rerank, ratio = _extra(r, base, sift, "seconds", variant)
            rerank_cpu, ratio_cpu = _extra(r, base, sift, "cpu_seconds", variant)
            kept = ", ".join(k.split(": ", 1)[-1] + ("" if v is True else f" {v}") for k, v in r["options"].items()
                             if v is not False) or "-"
            lines.append(f"| {name} | {variant} | {cell(r['score'])} ({cell(r['BAKS'])}, {cell(r['BAUS'])}) | "
                         f"{cell(r['rank1'])} | {r['seconds']:.0f} | {cell(rerank, 0)} | {cell(ratio, 2)} | "
                         f"{cell(rerank_cpu, 0)} | {cell(ratio_cpu, 2)} | "
                         f"{r['pairs_matched'] if r['pairs_matched'] is not None else '-'} | "
                         f"{'-' if r['matcher_weight'] is None else r['matcher_weight']} | {kept} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="sets", action="append", type=parse_set, required=True,
                        help="NAME=MODEL:ROOT (repeat)")
    parser.add_argument("--variants", nargs="+", default=DEFAULT, help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--overrides", nargs="*", default=[], help="key=value for every eval.py run")
    parser.add_argument("--out", default="runs/bench_keypoints")
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variant {unknown[0]!r}: choose from {', '.join(VARIANTS)}")
    if "none" not in args.variants:
        args.variants = ["none", *args.variants]  # re-ranking time is measured against it
    return args


@cli_entry
def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for data in args.sets:
        for variant in args.variants:
            record = run_variant(out, data, variant, args.overrides)
            records.append(record)
            print(f"{data['name']:>8} {variant:>10}: score {cell(record['score'])} rank-1 {cell(record['rank1'])} "
                  f"in {record['seconds']:.0f} s", flush=True)
            atomic_write_text(out / "results.md", markdown(records, [s["name"] for s in args.sets], args.variants))
    print(markdown(records, [s["name"] for s in args.sets], args.variants))


if __name__ == "__main__":
    main()

"""Open-set score and wall time of eval.py under each re-ranking option (issue 25), per test part.

    python scripts/bench/bench_eval_rerank.py --set dogs=runs/dogs/export:runs/protocols/dogs/test --out runs/bench_eval_rerank
    python scripts/bench/bench_eval_rerank.py --set zebra=EXPORT:ROOT --variants none sift sift-min15

Each `--set NAME=MODEL:ROOT` is a model (export folder) and an AnimalCLEF-format open-set part
(e.g. the test part of scripts/make_openset_protocol.py). Per set, eval.py first runs once with
`rerank.matcher=none` to fill OUT/embeddings (not timed in the table: `warmup`), then once per
variant with that warm embedding cache and a fresh keypoint/match cache (`rerank.cache=` a new
folder per variant), so keypoint extraction and every pair's matching count in its wall time.
With `--before DIR` (a checkout of an earlier commit: `git worktree add DIR COMMIT`), the variant
`before` runs DIR's eval.py with SIFT one pair at a time (`rerank.matcher_args={batched: false}`), the
path issue 25 started from, on the same warm embedding cache: the reference of the speed-up.
Runs are sequential; a run whose record holds the same command is reused. OUT/results.md is the
table: open-set score (metrics.json `tuned.score`, threshold tuned on the database only), BAKS,
BAUS, rank-1, wall seconds and the weights eval.py tuned (from each run's log).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from benchmarking import REPO, cpu_line, parse_set

from core.errors import ConfigError, cli_entry
from core.files import atomic_write_text

VARIANTS: Dict[str, List[str]] = {
    "before": ["rerank.matcher=sift", "rerank.matcher_args={batched: false}"],  # with --before DIR's eval.py
    "none": ["rerank.matcher=none"],
    "sift-one-pair": ["rerank.matcher=sift", "rerank.matcher_args={batched: false}"],
    "sift": ["rerank.matcher=sift"],
    "sift-min15": ["rerank.matcher=sift", "rerank.min_matches=15"],
    "sift-adaptive": ["rerank.matcher=sift", "rerank.adaptive=true"],
    "kreciprocal": ["rerank.matcher=none", "rerank.neighbours=[kreciprocal]"],
    "alpha_qe": ["rerank.matcher=none", "rerank.neighbours=[alpha_qe]"],
    "dba": ["rerank.matcher=none", "rerank.neighbours=[dba]"],
    "sift+all3": ["rerank.matcher=sift", "rerank.neighbours=[kreciprocal,alpha_qe,dba]"],
}
DEFAULT = ["none", "sift", "sift-min15", "sift-adaptive", "kreciprocal", "alpha_qe", "dba", "sift+all3"]


def execute(out: Path, data: Dict, variant: str, overrides: List[str], before: Optional[Path] = None) -> Dict:
    folder = out / data["name"] / variant
    cache = folder / "keypoints"
    repo = before if variant == "before" else REPO
    cmd = [sys.executable, str(repo / "eval.py"), f"models=[{data['model']}]", "data.format=animalclef2025",
           f"data.root={data['root']}", f"output_dir={folder / 'eval'}", f"embed_cache={out / 'embeddings'}",
           f"rerank.cache={cache}", *(VARIANTS["none"] if variant == "warmup" else VARIANTS[variant]), *overrides]
    record_path = folder / "record.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("command") == cmd[1:]:
            return record
    shutil.rmtree(cache, ignore_errors=True)  # a fresh keypoint and match cache: nothing reused
    folder.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(folder / "eval.log", "w") as log:
        done = subprocess.run(cmd, cwd=repo, stdout=log, stderr=subprocess.STDOUT)
    seconds = round(time.time() - start, 1)
    if done.returncode != 0:
        raise SystemExit(f"eval failed ({done.returncode}): see {folder / 'eval.log'}")
    metrics = json.loads((folder / "eval" / "metrics.json").read_text())
    tuned = metrics["tuned"]
    record = {"name": data["name"], "variant": variant, "command": cmd[1:], "seconds": seconds,
              "rank1": metrics["retrieval"]["ensemble (identity ranking)"]["rank1"],
              "open_set": {k: tuned[k] for k in ("BAKS", "BAUS", "score")}}
    atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
    return record


def tuned_choices(log: Path) -> str:
    """The weights (and adaptive margin) eval.py chose on the held-out database split, from its log."""
    if not log.is_file():
        return ""
    text = log.read_text(errors="replace")
    notes = [f"{name} {float(w):g}" for name, w in re.findall(r"^(\S+) weight (\S+) chosen", text, re.M)]
    adaptive = re.search(r"margin (\S+) chosen.*?; (\d+) of (\d+) queries certain", text)
    if adaptive:
        notes.append(f"margin {adaptive.group(1)}: {adaptive.group(2)}/{adaptive.group(3)} certain")
    return ", ".join(notes)


def write_results(out: Path, order: List[str]) -> str:
    records = [json.loads(p.read_text()) for p in sorted(out.glob("*/*/record.json"))]
    records = [r for r in records if r["variant"] != "warmup"]
    rank = {v: i for i, v in enumerate(order)}
    records.sort(key=lambda r: (r["name"], rank.get(r["variant"], len(rank))))
    lines = [f"# eval.py per re-ranking option ({cpu_line()})", "",
             "| set | variant | overrides | score | BAKS | BAUS | rank-1 | seconds | tuned weights |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        o = r["open_set"]
        extra = " ".join(f"`{v}`" for v in VARIANTS.get(r["variant"], []))
        lines.append(f"| {r['name']} | {r['variant']} | {extra} | {o['score']:.3f} | {o['BAKS']:.3f} | "
                     f"{o['BAUS']:.3f} | {r['rank1']:.3f} | {r['seconds']:.0f} | "
                     f"{tuned_choices(out / r['name'] / r['variant'] / 'eval.log') or '-'} |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "results.json", json.dumps(records, indent=2) + "\n")
    atomic_write_text(out / "results.md", text)
    return text


@cli_entry
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", dest="sets", action="append", type=parse_set, default=[],
                        help="NAME=MODEL:ROOT (repeatable); none: only rewrite OUT/results.md")
    parser.add_argument("--variants", nargs="*", default=DEFAULT, help=f"among {', '.join(VARIANTS)}")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra eval.py overrides for every run")
    parser.add_argument("--out", default="runs/bench_eval_rerank")
    parser.add_argument("--before", type=Path, help="checkout of an earlier commit: adds the variant `before`")
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    if ("before" in args.variants) != (args.before is not None):
        raise ConfigError("the variant `before` and --before DIR go together")
    if args.before is not None and not (args.before / "eval.py").is_file():
        raise ConfigError(f"--before {args.before}: no eval.py there (git worktree add DIR COMMIT)")
    out = Path(args.out)
    order = list(VARIANTS)
    for data in args.sets:
        for variant in ["warmup", *args.variants]:
            print(f"{data['name']}: {variant}", flush=True)
            record = execute(out, data, variant, args.overrides, args.before)
            print(f"  score {record['open_set']['score']:.3f} rank-1 {record['rank1']:.3f} {record['seconds']:.0f} s",
                  flush=True)
            write_results(out, order)
    print(write_results(out, order))


if __name__ == "__main__":
    main(sys.argv[1:])

"""Global ranking alone against the same models fused with each keypoint matcher, per dataset.

    python scripts/bench/compare_rerank.py --set zebra=runs/zebra/export:DATA/zebra-test \\
        --set lion=runs/lion/export:DATA/lion-test --matchers sift,aliked_lightglue --shortlists 10,25,50
    python scripts/bench/compare_rerank.py --set zebra=EXPORT:ROOT --variants "rerank.burstiness=true" "rerank.score=matches"

Each `--set NAME=MODEL:ROOT` is a model (export folder or zoo name) and an AnimalCLEF-format open-set
split (database + query with labels, e.g. a part made by scripts/make_openset_protocol.py). For
every set it runs eval.py once without re-ranking, then once per matcher x shortlist size x
variant (a space-separated list of extra overrides; "" = none), largest shortlist first: the
keypoint and match caches make the smaller shortlists reuse the larger one's pairs. Runs are
sequential and reused when their record holds the same command, so an interrupted comparison
continues. OUT/results.md and OUT/results.json list every run recorded under OUT (by this and
earlier commands): rank-1, BAKS, BAUS, open-set score (threshold tuned on the database, never on
query labels) and wall time (which includes matching the pairs no earlier run cached).
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

from benchmarking import REPO, cpu_line, parse_set

import engine.components  # noqa: F401  (the built-in names a config may use, registered)
from core.errors import cli_entry
from core.files import atomic_write_text


def runs_of(args) -> List[Dict]:
    runs = []
    for data in args.sets:
        runs.append({**data, "matcher": "none", "shortlist": None, "variant": ""})
        for matcher in args.matchers:
            for size in sorted(args.shortlists, reverse=True):
                runs.extend({**data, "matcher": matcher, "shortlist": size, "variant": v} for v in args.variants)
    return runs


def run_dir(args, run: Dict) -> Path:
    label = run["matcher"] if run["shortlist"] is None else f"{run['matcher']}-b{run['shortlist']}"
    if run["variant"]:
        label += "-" + "-".join(part.removeprefix("rerank.").replace("=", "") for part in shlex.split(run["variant"]))
    return Path(args.out) / run["name"] / label


def command(args, run: Dict) -> List[str]:
    out = [sys.executable, str(REPO / "eval.py"), f"models=[{run['model']}]", "data.format=animalclef2025",
           f"data.root={run['root']}", f"output_dir={run_dir(args, run) / 'eval'}", f"rerank.matcher={run['matcher']}",
           *args.overrides]
    if run["shortlist"] is not None:
        out.append(f"rerank.shortlist={run['shortlist']}")
    return out + shlex.split(run["variant"])


def execute(args, run: Dict) -> Dict:
    folder = run_dir(args, run)
    cmd = command(args, run)
    record_path = folder / "record.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("command") == cmd[1:]:
            return record
    folder.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(folder / "eval.log", "w") as log:
        done = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"eval failed ({done.returncode}): see {folder / 'eval.log'}")
    metrics = json.loads((folder / "eval" / "metrics.json").read_text())
    tuned = metrics["tuned"]
    record = {**run, "command": cmd[1:], "seconds": round(time.time() - start, 1),
              "rank1": metrics["retrieval"]["ensemble (identity ranking)"]["rank1"],
              "open_set": {k: tuned[k] for k in ("BAKS", "BAUS", "score")}}
    atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
    return record


def summary(records: List[Dict]) -> str:
    lines = [f"# Re-ranking against global alone ({cpu_line()})", "",
             "| set | matcher | shortlist | variant | rank-1 | BAKS | BAUS | score | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        o = r["open_set"]
        lines.append(f"| {r['name']} | {r['matcher']} | {r['shortlist'] or '-'} | {r['variant'] or '-'} | "
                     f"{r['rank1']:.3f} | {o['BAKS']:.3f} | {o['BAUS']:.3f} | {o['score']:.3f} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


@cli_entry
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", dest="sets", action="append", type=parse_set, default=[],
                        help="NAME=MODEL:ROOT (repeatable); none: only rewrite the results of OUT")
    parser.add_argument("--matchers", type=lambda s: s.split(","), default=["sift", "aliked_lightglue"])
    parser.add_argument("--shortlists", type=lambda s: [int(v) for v in s.split(",")], default=[25])
    parser.add_argument("--variants", nargs="*", default=[""], help='override lists, e.g. "rerank.score=matches"')
    parser.add_argument("--overrides", nargs="*", default=[], help="extra eval.py overrides for every run")
    parser.add_argument("--out", default="runs/compare_rerank")
    args = parser.parse_args(argv)
    for run in runs_of(args):
        print(f"{run['name']}: {run['matcher']} B={run['shortlist']} {run['variant']}", flush=True)
        execute(args, run)
        write_results(Path(args.out))
    print(write_results(Path(args.out)))


def write_results(out: Path) -> str:
    """results.json and results.md of every run recorded under `out`; returns the markdown."""
    records = [json.loads(p.read_text()) for p in sorted(out.glob("*/*/record.json"))]
    records.sort(key=lambda r: (r["name"], r["matcher"] != "none", r["matcher"], r["variant"], r["shortlist"] or 0))
    text = summary(records)
    atomic_write_text(out / "results.json", json.dumps(records, indent=2) + "\n")
    atomic_write_text(out / "results.md", text)
    return text


if __name__ == "__main__":
    main(sys.argv[1:])

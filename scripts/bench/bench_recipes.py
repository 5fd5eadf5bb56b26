"""Benchmark training recipes against the plain loop on the same wall-clock budget, across datasets.

    python scripts/bench/bench_recipes.py --data-root DATA --minutes 8                  # default vs plain loop
    python scripts/bench/bench_recipes.py --data-root DATA --recipes default,triplet_cpu --split test
    python scripts/bench/bench_recipes.py --datasets synthetic --minutes 2 --overrides "train.lr=3e-4"
    python scripts/bench/bench_recipes.py --data-root DATA --dry-run                     # print the commands

Each run trains one recipe (`python train.py --config configs/train/<recipe>.yaml`, with
train.max_minutes set and epochs left to the budget) or the plain loop (scripts/bench/reference_loop.py,
`--baseline reference`) on a protocol's train part, then scores the export with eval.py on the
protocol's validation or test part (`--split`). The plain loop is scored as its users score it
(`--baseline-eval plain`: nearest neighbour on the raw cosine, one view, no re-ranking), or exactly
as the recipes (`--baseline-eval pipeline`, with `--eval-overrides`), which isolates the training.
Runs are strictly sequential, so each one has the machine to itself. The budget is what each trainer counts as training: train.py its data loading
and steps (not validation or checkpoints), the plain loop its steps once every image is decoded
into memory; both wall times are recorded. `--overrides` go to the recipes, never to the plain
loop. Per run: steps, wall time, rank-1, rank-5, mAP, open-set score (tuned threshold) with BAKS
and BAUS; then per dataset the mean over seeds of each recipe and of the baseline, the mean over
datasets, and each recipe's mean score over the baseline's.

Protocols (scripts/make_openset_protocol.py, built once per dataset and protocol seed under
OUT/protocols): half of the identities are the test part, open-set (20 % of its identities only
in the query, to be called new; the others' images about 80/20 database/query); of the other half,
`--val-fraction` (20 %) are held out as the validation part, built the same way, and the rest is
the train part. Choose recipe settings on `--split validation`; report `--split test`, which no
choice has looked at. Datasets (`--data-root` holds their folders):
  dogfacenet  DogFaceNet-dev/<id>/<img>.jpg, aligned faces; one protocol per `--protocol-seeds` seed
  lion        LionData/{train,val}/<name>/<name>_<part>.png: both folders pooled (no lion is in
              both) and split as above, so its test part has about half of the 94 lions
  zebra       ZebraStripes/<id>/<img>.jpg, 35 zebras in camera photos: 17 test, 4 validation and
              14 train zebras, so its figures are the noisiest
  synthetic   the built-in generator with `--synthetic-seed` (default 1; the recipes were tuned
              on seed 0), split as above (it has three species, each split on its own)
Sets other than dogfacenet use one protocol, from the first protocol seed.

Outputs under `--out`: runs/<dataset>-p<protocol seed>/<recipe>-s<seed>/ (train.log, the run or
export, eval-<split>/ with metrics.json, run records), results.json and results.md for the runs
of this command, rewritten after every run. A run whose record matches its commands and protocol is reused, so an
interrupted benchmark continues where it stopped. `--tiny` shrinks every run (32 px, a few steps)
to check the plumbing in seconds: its figures mean nothing.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from benchmarking import REPO, comma_list, cpu_info, execute, parse_steps, read_metrics, reused

import engine.components  # noqa: F401  (the built-in names a config may use, registered)
from core.errors import ConfigError, DataError, cli_entry
from core.files import atomic_write_text
from core.suggest import did_you_mean

BASELINE = "reference"
SPLITS = {"validation": "val", "test": "test"}
EPOCHS = 100000  # the wall-clock budget ends every run; the cosine schedule follows the clock
METRICS = ("score", "BAKS", "BAUS", "rank1", "rank5", "mAP")
TINY_RECIPE = ["data.image_size=32", "data.num_workers=0", "train.batch_size=8", "train.max_steps=3",
               "train.warmup_steps=1", "model.args.embed_dim=64"]
TINY_REFERENCE = ["--image-size", "32", "--batch-size", "8"]
# The plain loop as users run it: nearest neighbour on the raw cosine, one view, no re-ranking; the
# open-set threshold tuned on the database as for every run (never on query labels).
PLAIN_EVAL = ["tta=[identity]", "calibration=none", "rerank.matcher=none"]
TINY_EVAL = ["data.num_workers=0", "report=false", "tta=[identity]"]


@dataclass(frozen=True)
class RealSet:
    folder: str
    layout: str


REAL_SETS = {
    "dogfacenet": RealSet("DogFaceNet-dev", "<id>/<img>.jpg"),
    "lion": RealSet("LionData", "{train,val}/<name>/<name>_<part>.png"),
    "zebra": RealSet("ZebraStripes", "<id>/<img>.jpg"),
}
DATASET_NAMES = [*REAL_SETS, "synthetic"]


@dataclass(frozen=True)
class Run:
    dataset: str
    protocol_seed: int
    trainer: str  # a recipe name, or BASELINE
    seed: int

    @property
    def key(self) -> str:
        return f"{self.dataset}-p{self.protocol_seed}/{self.trainer}-s{self.seed}"


# ----------------------------------------------------------------------------- arguments


def _ints(text: str) -> List[int]:
    try:
        return [int(part) for part in comma_list(text)]
    except ValueError:
        raise ConfigError(f"expected comma-separated integers, got '{text}'") from None


def check_arguments(args) -> None:
    recipes = sorted(p.stem for p in (REPO / "configs" / "train").glob("*.yaml"))
    for recipe in args.recipes:
        if recipe not in recipes:
            raise ConfigError(f"--recipes: no recipe '{recipe}' in configs/train{did_you_mean(recipe, recipes)}")
    for name in args.datasets:
        if name not in DATASET_NAMES:
            raise ConfigError(f"--datasets: unknown dataset '{name}'{did_you_mean(name, DATASET_NAMES)}")
    if not (args.recipes or args.baseline) or not args.datasets or not args.seeds or not args.protocol_seeds:
        raise ConfigError("nothing to run: give at least one recipe (or the baseline), dataset, seed and protocol seed")
    if args.minutes <= 0:
        raise ConfigError(f"--minutes must be positive, got {args.minutes}")
    real = [name for name in args.datasets if name in REAL_SETS]
    if real and not args.data_root:
        raise ConfigError(f"--data-root is required for {', '.join(real)}: the folder that holds "
                          f"{', '.join(REAL_SETS[n].folder for n in real)}")
    for name in real:
        folder = Path(args.data_root) / REAL_SETS[name].folder
        if not folder.is_dir():
            raise DataError(f"dataset {name} not found: {folder} does not exist (expected "
                            f"{REAL_SETS[name].folder}/{REAL_SETS[name].layout} under --data-root {args.data_root})")


# ----------------------------------------------------------------------------- protocols


def protocol_seeds(args, dataset: str) -> List[int]:
    return list(args.protocol_seeds) if dataset == "dogfacenet" else list(args.protocol_seeds[:1])


def protocol_dir(args, dataset: str, seed: int) -> Path:
    return Path(args.out) / "protocols" / f"{dataset}-p{seed}"


def _source(args, dataset: str):
    """(DataConfig overrides, images root) of a dataset; the synthetic set is generated (cached) here."""
    if dataset == "synthetic":
        from data.synthetic import ensure_synthetic

        root = ensure_synthetic(seed=args.synthetic_seed, individuals=args.synthetic_individuals,
                                images_per_individual=args.synthetic_images)
        return ["format=animalclef2025", f"root={root}"], root
    root = Path(args.data_root) / REAL_SETS[dataset].folder
    return ["format=folders", f"root={root}"], root


def ensure_protocol(args, dataset: str, seed: int) -> Dict:
    """The protocol's record, built on first use and reused while its source and arguments match."""
    from core.config import load_config
    from core.schema import DataConfig
    from data.formats import load_table
    from data.protocol import PROTOCOL_FILE, SPLIT_DEFAULTS, build_protocol

    out = protocol_dir(args, dataset, seed)
    overrides, root = _source(args, dataset)
    arguments = {**SPLIT_DEFAULTS, "val_fraction": args.val_fraction, "seed": seed}
    record_file = out / PROTOCOL_FILE
    if record_file.is_file():
        record = json.loads(record_file.read_text())
        if record.get("source") == str(Path(root).resolve()) and record.get("arguments") == arguments:
            return record
    table = load_table(load_config(DataConfig, None, overrides))
    record = build_protocol(table, root, out, **arguments)
    parts = ", ".join(f"{name} {c['identities']} identities / {c['images']} images" for name, c in record["parts"].items())
    print(f"protocol {dataset} p{seed}: {parts} -> {out}", flush=True)
    return record


# ----------------------------------------------------------------------------- commands


def run_dir(args, run: Run) -> Path:
    return Path(args.out) / "runs" / run.key


def train_command(args, run: Run) -> List[str]:
    part = protocol_dir(args, run.dataset, run.protocol_seed) / "train"
    if run.trainer == BASELINE:
        return [sys.executable, "scripts/bench/reference_loop.py", "--format", "animalclef2025", "--root", str(part),
                "--minutes", str(args.minutes), "--seed", str(run.seed), "--out", str(run_dir(args, run)),
                *(TINY_REFERENCE if args.tiny else [])]
    return [sys.executable, "train.py", "--config", f"configs/train/{run.trainer}.yaml", "data.format=animalclef2025",
            f"data.root={part}", f"train.max_minutes={args.minutes}", f"train.epochs={EPOCHS}",
            f"output_dir={run_dir(args, run)}", f"seed={run.seed}", *(TINY_RECIPE if args.tiny else []),
            *shlex.split(args.overrides)]


def plain_eval(args, run: Run) -> bool:
    return run.trainer == BASELINE and args.baseline_eval == "plain"


def eval_name(args, run: Run) -> str:
    """The run's evaluation folder: the plain loop's plain scoring is kept apart from eval.py's defaults."""
    return f"eval-{args.split}" + ("-plain" if plain_eval(args, run) else "")


def eval_command(args, run: Run) -> List[str]:
    part = protocol_dir(args, run.dataset, run.protocol_seed) / SPLITS[args.split]
    settings = PLAIN_EVAL if plain_eval(args, run) else shlex.split(args.eval_overrides)
    return [sys.executable, "eval.py", f"models=[{run_dir(args, run) / 'export'}]", "data.format=animalclef2025",
            f"data.root={part}", f"output_dir={run_dir(args, run) / eval_name(args, run)}", "embed_cache=none",
            *settings, *(TINY_EVAL if args.tiny else [])]


def plan(args) -> List[Run]:
    trainers = list(args.recipes) + ([BASELINE] if args.baseline else [])
    # Recipes alternate within a seed, so a drift in the machine's speed touches them alike.
    return [Run(dataset, p, trainer, seed) for dataset in args.datasets for p in protocol_seeds(args, dataset)
            for seed in args.seeds for trainer in trainers]


# ----------------------------------------------------------------------------- running


def execute_run(args, run: Run, protocol: Dict, machine: Dict) -> Dict:
    folder = run_dir(args, run)
    train_spec = {"command": train_command(args, run)[1:], "protocol": protocol}
    trained = reused(folder / "train_record.json", train_spec)
    if trained is not None:
        print(f"  trained earlier: {trained['steps']} steps (record {folder / 'train_record.json'})", flush=True)
    else:
        print(f"  training {run.trainer} for {args.minutes} min ...", flush=True)
        text, wall = execute(train_command(args, run), folder / "train.log", f"training {run.key}")
        trained = {"spec": train_spec, "steps": parse_steps(text), "train_wall_s": round(wall, 1), "cpu": machine}
        atomic_write_text(folder / "train_record.json", json.dumps(trained, indent=2) + "\n")
    eval_spec = {"command": eval_command(args, run)[1:], "trained": trained}
    name = eval_name(args, run)
    evaluated = reused(folder / f"{name}_record.json", eval_spec)
    if evaluated is None:
        print(f"  evaluating on the {args.split} part ...", flush=True)
        _, wall = execute(eval_command(args, run), folder / f"{name}.log", f"evaluating {run.key}")
        evaluated = {"spec": eval_spec, "eval_wall_s": round(wall, 1)}
        atomic_write_text(folder / f"{name}_record.json", json.dumps(evaluated, indent=2) + "\n")
    return {"dataset": run.dataset, "protocol_seed": run.protocol_seed, "recipe": run.trainer, "seed": run.seed,
            "split": args.split, "steps": trained["steps"], "train_wall_s": trained["train_wall_s"],
            "eval_wall_s": evaluated["eval_wall_s"], "cpu": trained["cpu"]["model"],
            **read_metrics(folder / name / "metrics.json"),
            "run_dir": str(folder)}


# ----------------------------------------------------------------------------- summary


def _mean(values) -> Optional[float]:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(finite) / len(finite) if finite else None


def _rounded(value: Optional[float]) -> Optional[int]:
    return None if value is None else round(value)


def summarize(rows: List[Dict], datasets: List[str], trainers: List[str]) -> Dict:
    """Per dataset and recipe the mean over its runs (seeds, protocol seeds); per recipe the mean over
    datasets (only once it has every dataset); each recipe's mean score over the baseline's."""
    per_dataset: Dict[str, Dict[str, Dict]] = {}
    for dataset in datasets:
        for trainer in trainers:
            mine = [r for r in rows if r["dataset"] == dataset and r["recipe"] == trainer]
            if mine:
                per_dataset.setdefault(dataset, {})[trainer] = {
                    "runs": len(mine), "steps": _rounded(_mean(r["steps"] for r in mine)),
                    **{m: _mean(r[m] for r in mine) for m in METRICS}}
    over_datasets = {}
    for trainer in trainers:
        parts = [per_dataset.get(d, {}).get(trainer) for d in datasets]
        if all(parts):
            over_datasets[trainer] = {m: _mean(p[m] for p in parts) for m in METRICS}
    base = over_datasets.get(BASELINE, {}).get("score")
    # None when the baseline scored 0: no ratio to give.
    ratio = {t: v["score"] / base if base else None for t, v in over_datasets.items()
             if t != BASELINE and base is not None and v["score"] is not None}
    return {"per_dataset": per_dataset, "mean_over_datasets": over_datasets, "score_ratio_to_baseline": ratio}


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(results: Dict) -> str:
    s = results["settings"]
    cpu = results["machine"]
    lines = [f"# Recipes against the plain loop ({s['split']} part, {s['minutes']} min per run)", "",
             f"CPU: {cpu['model']}, {cpu['cores']} cores, AVX512-BF16 {'yes' if cpu['avx512_bf16'] else 'no'}, "
             f"AMX {'yes' if cpu['amx'] else 'no'}. Recipe overrides: `{s['overrides'] or 'none'}`; "
             f"evaluation overrides: `{s['eval_overrides'] or 'none'}`; the plain loop scored "
             + ("as users run it (nearest neighbour on the raw cosine)." if s["baseline_eval"] == "plain"
                else "with eval.py's defaults.")
             + (" **Tiny mode: a plumbing check, not a measurement.**" if s["tiny"] else ""), "",
             "| dataset | protocol seed | recipe | seed | steps | train s | rank-1 | rank-5 | mAP | score (BAKS, BAUS) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        lines.append(f"| {r['dataset']} | {r['protocol_seed']} | {r['recipe']} | {r['seed']} | {_cell(r['steps'])} | "
                     f"{r['train_wall_s']:.0f} | {_cell(r['rank1'])} | {_cell(r['rank5'])} | {_cell(r['mAP'])} | "
                     f"{_cell(r['score'])} ({_cell(r['BAKS'])}, {_cell(r['BAUS'])}) |")
    summary = results["summary"]
    lines += ["", "Means over seeds and protocol seeds:", "",
              "| dataset | recipe | runs | steps | rank-1 | score | BAKS | BAUS |", "|---|---|---|---|---|---|---|---|"]
    for dataset, by_trainer in summary["per_dataset"].items():
        for trainer, m in by_trainer.items():
            lines.append(f"| {dataset} | {trainer} | {m['runs']} | {_cell(m['steps'])} | {_cell(m['rank1'])} | "
                         f"{_cell(m['score'])} | {_cell(m['BAKS'])} | {_cell(m['BAUS'])} |")
    for trainer, m in summary["mean_over_datasets"].items():
        lines.append(f"| **mean over datasets** | {trainer} | | | {_cell(m['rank1'])} | **{_cell(m['score'])}** | "
                     f"{_cell(m['BAKS'])} | {_cell(m['BAUS'])} |")
    for trainer, ratio in summary["score_ratio_to_baseline"].items():
        lines.append(f"\n{trainer} / {BASELINE}, mean open-set score: **{_cell(ratio)}**")
    return "\n".join(lines) + "\n"


def write_results(args, machine: Dict, rows: List[Dict]) -> Dict:
    trainers = list(args.recipes) + ([BASELINE] if args.baseline else [])
    results = {"settings": {"recipes": args.recipes, "baseline": args.baseline, "datasets": args.datasets,
                            "minutes": args.minutes, "seeds": args.seeds, "protocol_seeds": args.protocol_seeds,
                            "split": args.split, "val_fraction": args.val_fraction, "overrides": args.overrides,
                            "eval_overrides": args.eval_overrides, "baseline_eval": args.baseline_eval,
                            "tiny": args.tiny},
               "machine": machine, "runs": rows, "summary": summarize(rows, args.datasets, trainers)}
    out = Path(args.out)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "results.md", markdown(results))
    return results


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", type=comma_list, default=["default"], help="configs/train/*.yaml names (default: default)")
    parser.add_argument("--baseline", choices=[BASELINE, "none"], default=BASELINE,
                        help="the plain loop, scripts/bench/reference_loop.py (default) or none")
    parser.add_argument("--datasets", type=comma_list, default=DATASET_NAMES, help=f"default: {','.join(DATASET_NAMES)}")
    parser.add_argument("--data-root", default=None, help="folder holding DogFaceNet-dev/, LionData/, ZebraStripes/")
    parser.add_argument("--minutes", type=float, default=8.0, help="training budget of every run (default 8)")
    parser.add_argument("--seeds", type=_ints, default=[0, 1], help="training seeds (default 0,1)")
    parser.add_argument("--protocol-seeds", type=_ints, default=[0, 1], help="DogFaceNet protocols (default 0,1)")
    parser.add_argument("--split", choices=list(SPLITS), default="validation",
                        help="part scored: validation (to choose settings, default) or test (to report)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="training identities held out for validation")
    parser.add_argument("--synthetic-individuals", type=int, default=240)
    parser.add_argument("--synthetic-images", type=int, default=12, help="photos per synthetic individual")
    parser.add_argument("--synthetic-seed", type=int, default=1, help="generator seed of the synthetic set")
    parser.add_argument("--overrides", default="", help='extra train.py overrides for the recipes: "key=value ..."')
    parser.add_argument("--baseline-eval", choices=["plain", "pipeline"], default="plain",
                        help="score the plain loop as users run it (nearest neighbour on the raw cosine, the default) "
                             "or with eval.py's defaults like the recipes, which isolates the training")
    parser.add_argument("--eval-overrides", default="", help='extra eval.py overrides for the recipes: "key=value ..."')
    parser.add_argument("--out", default="runs/bench_recipes", help="runs, protocols, results.json, results.md")
    parser.add_argument("--tiny", action="store_true", help="32 px, 3 steps: check the plumbing in seconds")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    return parser


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    args.baseline = args.baseline == BASELINE
    args.out = str(Path(args.out).expanduser().absolute())
    check_arguments(args)
    return args


@cli_entry
def main(argv=None) -> Dict:
    args = parse_args(argv)
    runs = plan(args)
    if args.dry_run:
        for dataset in args.datasets:
            for p in protocol_seeds(args, dataset):
                print(f"# protocol {dataset} p{p} -> {protocol_dir(args, dataset, p)} (built on the first real run)")
        for run in runs:
            print(shlex.join(train_command(args, run)))
            print(shlex.join(eval_command(args, run)))
        return {}
    machine = cpu_info()
    print(f"{len(runs)} runs of {args.minutes} min on {machine['model']} ({machine['cores']} cores, "
          f"AVX512-BF16 {machine['avx512_bf16']}, AMX {machine['amx']}); results in {args.out}", flush=True)
    protocols = {(d, p): ensure_protocol(args, d, p) for d in args.datasets for p in protocol_seeds(args, d)}
    rows: List[Dict] = []
    for number, run in enumerate(runs, 1):
        print(f"[{number}/{len(runs)}] {run.key}", flush=True)
        row = execute_run(args, run, protocols[(run.dataset, run.protocol_seed)], machine)
        rows.append(row)
        print(f"  {_cell(row['steps'])} steps, train {row['train_wall_s']:.0f} s: rank-1 {_cell(row['rank1'])}  "
              f"score {_cell(row['score'])} (BAKS {_cell(row['BAKS'])}, BAUS {_cell(row['BAUS'])})", flush=True)
        results = write_results(args, machine, rows)
    print(markdown(results))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])

"""The trained fusion model against its members alone, their static blend and their calibrated soft vote.

    python scripts/bench_fusion.py --train PARTS/train --test PARTS/test --members A_EXPORT,B_EXPORT --out OUT
    python scripts/bench_fusion.py ... --overrides "model.args.pca_dim=128"      # fusion recipe overrides

The members are two trained exports (e.g. the default recipe's and classifier_cpu's, trained by
scripts/bench_recipes.py on the same train part and budget). The fusion recipe
(`--config`, default configs/train/fusion_cpu.yaml) is trained on `--train` (an AnimalCLEF-format
part; its features come from the members, extracted once into OUT/embeddings), then eval.py scores
on `--test`, without keypoint re-ranking so that only the global scorers differ:
  member A alone, member B alone,
  static blend: both, raw cosine scores averaged with weights 0.5 / 0.5 (calibration=none),
  soft vote: both, each calibrated (eval.py's default),
  fusion: the trained fusion model alone.
Writes OUT/results.md and OUT/results.json: rank-1, BAKS, BAUS, open-set score (threshold tuned on
the database), and the time of each training stage. Runs are reused when their command is unchanged.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.errors import ConfigError, DataError, cli_entry  # noqa: E402
from core.files import atomic_write_text  # noqa: E402
from scripts.benchmarking import cpu_line, execute, parse_steps, read_metrics, reused  # noqa: E402

GLOBAL_ONLY = ["rerank.matcher=none"]


def variants(members: List[str], fusion: Path) -> Dict[str, List[str]]:
    a, b = members
    return {
        "member A alone": [f"models=[{a}]"],
        "member B alone": [f"models=[{b}]"],
        "static blend 0.5 / 0.5 (raw cosine)": [f"models=[{a},{b}]", "weights=[0.5,0.5]", "calibration=none"],
        "calibrated soft vote": [f"models=[{a},{b}]"],
        "trained fusion": [f"models=[{fusion}]"],
    }


def train_command(args) -> List[str]:
    members = ",".join(args.members)
    return [sys.executable, "train.py", "--config", args.config, "data.format=animalclef2025", f"data.root={args.train}",
            f"model.args.members=[{members}]", f"output_dir={Path(args.out) / 'fusion'}",
            f"features.cache={Path(args.out) / 'embeddings'}", *shlex.split(args.overrides)]


def eval_folder(args, name: str) -> Path:
    """OUT/eval/<slug of the variant's name>, e.g. eval/static-blend-05-05."""
    words = name.lower().replace("/", " ").replace(".", "").split()
    return Path(args.out) / "eval" / "-".join(word for word in words if word.isalnum())


def eval_command(args, name: str, settings: List[str]) -> List[str]:
    return [sys.executable, "eval.py", "data.format=animalclef2025", f"data.root={args.test}",
            f"output_dir={eval_folder(args, name)}", f"embed_cache={Path(args.out) / 'embeddings'}", *GLOBAL_ONLY,
            *settings]


def member_budget(export: str) -> Dict:
    config = json.loads((Path(export) / "config.json").read_text())
    train = (config.get("train_config") or {}).get("train", {})
    return {"model": config.get("architecture"), "minutes": train.get("max_minutes"),
            "steps": (config.get("metrics") or {}).get("step")}


def run_stage(folder: Path, name: str, command: List[str], what: str) -> Dict:
    """Run (or reuse) one command; its record holds the wall time and the output."""
    spec = {"command": command[1:]}
    record = reused(folder / f"{name}_record.json", spec)
    if record is None:
        print(f"{what} ...", flush=True)
        text, wall = execute(command, folder / f"{name}.log", what)
        record = {"spec": spec, "wall_s": round(wall, 1), "steps": parse_steps(text)}
        atomic_write_text(folder / f"{name}_record.json", json.dumps(record, indent=2) + "\n")
    return record


def markdown(results: Dict) -> str:
    lines = [f"# Fusion against its members ({results['cpu']})", "",
             f"Train part `{results['train']}`, test part `{results['test']}`; no keypoint re-ranking.", "",
             "| member | model | training budget (min) | steps |", "|---|---|---|---|"]
    for label, spec in zip(("A", "B"), results["members"], strict=True):
        m = results["member_training"][spec]
        lines.append(f"| {label}: `{spec}` | {m['model']} | {m['minutes']} | {m['steps']} |")
    f = results["fusion_training"]
    lines += ["", f"Fusion stage: {f['wall_s']:.0f} s in all (features of both members extracted, PCA, "
                  f"{f['steps']} MLP steps).", "",
              "| scoring | rank-1 | BAKS | BAUS | score |", "|---|---|---|---|---|"]
    for name, m in results["variants"].items():
        lines.append(f"| {name} | {m['rank1']:.3f} | {m['BAKS']:.3f} | {m['BAUS']:.3f} | **{m['score']:.3f}** |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True, help="AnimalCLEF-format part the members were trained on")
    parser.add_argument("--test", required=True, help="AnimalCLEF-format open-set part to score")
    parser.add_argument("--members", required=True, help="two export folders, comma-separated")
    parser.add_argument("--config", default="configs/train/fusion_cpu.yaml", help="the fusion recipe")
    parser.add_argument("--overrides", default="", help='extra train.py overrides for the fusion: "key=value ..."')
    parser.add_argument("--out", default="runs/bench_fusion")
    args = parser.parse_args(argv)
    args.members = [m.strip() for m in args.members.split(",") if m.strip()]
    if len(args.members) != 2:
        raise ConfigError(f"--members takes two export folders, got {len(args.members)}")
    for path in (args.train, args.test, *args.members):
        if not Path(path).is_dir():
            raise DataError(f"not a folder: {path}")
    args.train, args.test = str(Path(args.train).absolute()), str(Path(args.test).absolute())
    args.members = [str(Path(m).absolute()) for m in args.members]
    args.out = str(Path(args.out).absolute())
    return args


@cli_entry
def main(argv=None) -> Dict:
    args = parse_args(argv)
    out = Path(args.out)
    fusion = run_stage(out, "train", train_command(args), "training the fusion model")
    results = {"cpu": cpu_line(), "train": args.train, "test": args.test, "members": args.members,
               "member_training": {m: member_budget(m) for m in args.members}, "fusion_training": fusion,
               "variants": {}}
    for name, settings in variants(args.members, out / "fusion" / "export").items():
        folder = eval_folder(args, name)
        record = run_stage(out, folder.name, eval_command(args, name, settings), f"evaluating: {name}")
        results["variants"][name] = {**read_metrics(folder / "metrics.json"), "wall_s": record["wall_s"]}
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "results.md", markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])

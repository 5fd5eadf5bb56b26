"""The trained fusion model against its members alone, their static blend and their calibrated soft vote.

    # held out (the recommended protocol): members train on half of the identities, the fusion on the other half
    python scripts/bench/bench_fusion.py --train PARTS/train --test PARTS/val,PARTS/test \
        --member-configs configs/train/default.yaml,configs/train/classifier_cpu.yaml --member-epochs 75 --out OUT
    # given members (trained elsewhere): the fusion trains on --train as its recipe says (fusion_cpu.yaml: part 1)
    python scripts/bench/bench_fusion.py --train PARTS/train --test PARTS/test --members A_EXPORT,B_EXPORT --out OUT
    python scripts/bench/bench_fusion.py ... --overrides "model.args.pca_dim=128"      # fusion recipe overrides

With `--member-configs`, both members are trained by train.py on identity part 0 of `--train`
(`data.identity_parts=2`), by epochs so that the budget does not depend on the machine, and the
fusion recipe (`--config`, default configs/train/fusion_cpu.yaml) on part 1: it never sees the
individuals its members were fitted to. Its features come from the members, extracted once into
OUT/embeddings. Then eval.py scores every `--test` part, without keypoint re-ranking so that only
the global scorers differ:
  member A alone, member B alone,
  static blend: both, raw cosine scores averaged with weights 0.5 / 0.5 (calibration=none),
  soft vote: both, each calibrated (eval.py's default),
  trained fusion, as shipped: the fusion alone, its pair head voting with a fixed half of its weight,
  trained fusion: the fusion alone, its pair head's share tuned on the database (rerank.tune_pair_weight),
  fusion with eval-time choice: eval.py's default, per dataset the best of the fusion, each member
    alone, their blend and soft vote on the threshold's held-out database split (choose_scoring).
Cross-species: list other species' open-set parts in --test (members and fusion train on --train's
species only), and train the members as a user would with --member-minutes 5; both protocols share
the members and the fusion when their --train, seed and --out are the same:
    python scripts/bench/bench_fusion.py --train DOGS/train --test DOGS/test,LIONS/test,ZEBRAS/test \
        --member-configs configs/train/default.yaml,configs/train/classifier_cpu.yaml --member-minutes 5 --out OUT
Writes OUT/results.md and OUT/results.json: rank-1, BAKS, BAUS, open-set score (threshold tuned on
the database), the time of each training stage, and per part the eval-time choice's score minus
the best of members, blend and soft vote with a 95 % bootstrap interval over the part's individuals
(a small part cannot tell a few points from chance). Runs are reused when their command is unchanged.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional

import pandas as pd
from benchmarking import comma_list, execute, hardware_line, parse_steps, read_metrics, reused

import engine.components  # noqa: F401  (the built-in names a config may use, registered)
from core.errors import ConfigError, DataError, cli_entry
from core.files import atomic_write_text
from engine.metrics import score_difference_interval

GLOBAL_ONLY = ["rerank.matcher=none"]
HELD_OUT = ["data.identity_parts=2"]  # members on part 0, the fusion on part 1


def variants(members: List[str], fusion: Path) -> Dict[str, List[str]]:
    a, b = members
    return {
        "member A alone": [f"models=[{a}]"],
        "member B alone": [f"models=[{b}]"],
        "static blend 0.5 / 0.5 (raw cosine)": [f"models=[{a},{b}]", "weights=[0.5,0.5]", "calibration=none"],
        "calibrated soft vote": [f"models=[{a},{b}]"],
        "trained fusion, as shipped (fixed pair-head share, no choice)": [f"models=[{fusion}]", "choose_scoring=false",
                                                                          "rerank.tune_pair_weight=false"],
        "trained fusion": [f"models=[{fusion}]", "choose_scoring=false"],
        "fusion with eval-time choice": [f"models=[{fusion}]"],
    }


def chosen_scoring(folder: Path) -> str:
    """What eval.py's eval-time choice picked per dataset ("" where it made none), from its manifest."""
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return ""
    record = json.loads(manifest.read_text()).get("threshold", {}).get("scoring_choice") or {}
    return "; ".join(f"{dataset}: {name}" for dataset, name in (record.get("chosen") or {}).items())


def member_budget_settings(args) -> List[str]:
    """By epochs (the budget does not depend on the machine), or by minutes as a user trains (the default 5)."""
    if args.member_minutes is not None:
        return [f"train.max_minutes={args.member_minutes:g}"]
    return ["train.max_minutes=0", f"train.epochs={args.member_epochs}"]


def member_command(args, config: str, out: Path) -> List[str]:
    return [sys.executable, "train.py", "--config", config, "data.format=animalclef2025", f"data.root={args.train}",
            *HELD_OUT, "data.identity_part=0", *member_budget_settings(args), f"seed={args.seed}", f"output_dir={out}",
            *shlex.split(args.member_overrides)]


def fusion_command(args) -> List[str]:
    members = ",".join(args.members)
    held_out = [*HELD_OUT, "data.identity_part=1"] if args.member_configs else []
    return [sys.executable, "train.py", "--config", args.config, "data.format=animalclef2025", f"data.root={args.train}",
            *held_out, f"model.args.members=[{members}]", f"seed={args.seed}", f"output_dir={Path(args.out) / 'fusion'}",
            f"features.cache={Path(args.out) / 'embeddings'}", *shlex.split(args.overrides)]


def eval_folder(args, test: str, name: str) -> Path:
    """OUT/eval/<test part>/<slug of the variant's name>, e.g. eval/test/static-blend-05-05."""
    words = name.lower().replace("/", " ").replace(".", "").split()
    return Path(args.out) / "eval" / Path(test).name / "-".join(word for word in words if word.isalnum())


def eval_command(args, test: str, name: str, settings: List[str]) -> List[str]:
    return [sys.executable, "eval.py", "data.format=animalclef2025", f"data.root={test}",
            f"output_dir={eval_folder(args, test, name)}", f"embed_cache={Path(args.out) / 'embeddings'}",
            *GLOBAL_ONLY, *settings]


ALTERNATIVES = ("member A alone", "member B alone", "static blend 0.5 / 0.5 (raw cosine)", "calibrated soft vote")
CHOICE = "fusion with eval-time choice"


def choice_against_best(args, test: str, scored: Dict) -> Dict:
    """The eval-time choice's score minus the best alternative's on this part, with a 95 % bootstrap
    interval over its individuals (engine.metrics.score_difference_interval): a shortfall inside it
    is one the part is too small to tell from chance."""
    best = max(ALTERNATIVES, key=lambda name: scored[name]["score"])
    table = pd.read_csv(Path(test) / "metadata.csv", dtype={"identity": str})
    query = table[table["split"] == "query"]
    predicted = {name: pd.read_csv(eval_folder(args, test, name) / "predictions.csv", dtype=str)
                 .set_index("file")["prediction"] for name in (CHOICE, best)}
    files = query["path"].tolist()
    interval = score_difference_interval(query["identity"].tolist(), predicted[CHOICE].loc[files].tolist(),
                                         predicted[best].loc[files].tolist(), query["dataset"].tolist(),
                                         set(table.loc[table["split"] == "database", "identity"]))
    return {"best": best, **{key: round(value, 4) for key, value in interval.items()}}


def export_config(export) -> Dict:
    return json.loads((Path(export) / "config.json").read_text())


def identities_trained(config: Dict) -> str:
    """Which identities an export's model trained on, from its config.json."""
    data = (config.get("train_config") or {}).get("data", {})
    parts = data.get("identity_parts", 1)
    return f"identity part {data.get('identity_part', 0)} of {parts}" if parts > 1 else "every identity"


def member_budget(export: str, record: Optional[Dict]) -> Dict:
    """What a member was trained with; `record` is its training stage's here (None: trained elsewhere)."""
    config = export_config(export)
    train = config.get("train_config") or {}
    steps = (config.get("metrics") or {}).get("step") or (record or {}).get("steps")
    return {"model": config.get("architecture"), "minutes": train.get("train", {}).get("max_minutes"),
            "epochs": train.get("train", {}).get("epochs"), "steps": steps, "wall_s": (record or {}).get("wall_s"),
            "identities": identities_trained(config)}


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
    lines = [f"# Fusion against its members ({results['hardware']})", "",
             f"Train part `{results['train']}`, seed {results['seed']}; no keypoint re-ranking.", "",
             "| member | model | trained on | epochs | steps | training (s) |", "|---|---|---|---|---|---|"]
    for label, spec in zip(("A", "B"), results["members"], strict=True):
        m = results["member_training"][spec]
        wall = m.get("wall_s")
        lines.append(f"| {label}: `{spec}` | {m['model']} | {m['identities']} | {m['epochs']} | {m['steps']} | "
                     f"{'' if wall is None else f'{wall:.0f}'} |")
    f = results["fusion_training"]
    lines += ["", f"Fusion stage ({results['fusion_part']}): {f['wall_s']:.0f} s in all (features of both members "
                  f"extracted, PCA, {f['steps']} training steps)."]
    for test, scored in results["parts"].items():
        lines += ["", f"Scored on `{test}`:", "", "| scoring | rank-1 | BAKS | BAUS | score |", "|---|---|---|---|---|"]
        for name, m in scored.items():
            chose = f" (chose {m['chose']})" if m.get("chose") else ""
            lines.append(f"| {name}{chose} | {m['rank1']:.3f} | {m['BAKS']:.3f} | {m['BAUS']:.3f} | **{m['score']:.3f}** |")
        gap = results["choice_against_best"][test]
        lines += ["", f"Eval-time choice minus the best of members, blend and soft vote ({gap['best']}): "
                      f"{gap['difference']:+.3f}, 95 % bootstrap interval over the part's individuals "
                      f"[{gap['low']:+.3f}, {gap['high']:+.3f}]."]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True, help="AnimalCLEF-format part the models train on")
    parser.add_argument("--test", required=True, help="AnimalCLEF-format open-set parts to score, comma-separated")
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--members", help="two trained export folders, comma-separated (the fusion trains on --train as --config says)")
    given.add_argument("--member-configs", help="two train.py recipes, comma-separated: trained on identity part 0, "
                                                "the fusion on part 1")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--member-epochs", type=int, default=75, help="with --member-configs: epochs of each member")
    budget.add_argument("--member-minutes", type=float, default=None,
                        help="with --member-configs: train each member for this many minutes instead, as a user "
                             "would (train.max_minutes; the default recipe's budget is 5)")
    parser.add_argument("--jobs", type=int, default=1, help="with --member-configs: members trained at once "
                                                            "(2 where a GPU has room; their wall times then overlap)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every training run")
    parser.add_argument("--config", default="configs/train/fusion_cpu.yaml", help="the fusion recipe")
    parser.add_argument("--overrides", default="", help='extra train.py overrides for the fusion: "key=value ..."')
    parser.add_argument("--member-overrides", default="", help="with --member-configs: extra train.py overrides "
                                                               "for both members")
    parser.add_argument("--out", default="runs/bench_fusion")
    args = parser.parse_args(argv)
    args.test = comma_list(args.test)
    named = comma_list(args.member_configs or args.members)
    if len(named) != 2:
        raise ConfigError(f"{'--member-configs' if args.member_configs else '--members'} takes two, got {len(named)}")
    if args.member_minutes is not None and not args.member_minutes > 0:
        raise ConfigError(f"--member-minutes must be > 0, got {args.member_minutes}")
    for flag, value in (("--member-epochs", args.member_epochs), ("--jobs", args.jobs)):
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    for path in (args.train, *args.test, *([] if args.member_configs else named)):
        if not Path(path).is_dir():
            raise DataError(f"not a folder: {path}")
    for config in ([*named, args.config] if args.member_configs else [args.config]):
        if not Path(config).is_file():
            raise ConfigError(f"no such recipe: {config}")
    if len({Path(t).name for t in args.test}) != len(args.test):
        raise ConfigError(f"--test parts need different folder names (results are filed by name): {args.test}")
    args.train, args.test = str(Path(args.train).absolute()), [str(Path(t).absolute()) for t in args.test]
    args.out = str(Path(args.out).absolute())
    if args.member_configs:
        args.member_configs = named
        args.members = [str(Path(args.out) / "members" / Path(c).stem / "export") for c in named]
    else:
        args.members = [str(Path(m).absolute()) for m in named]
    return args


@cli_entry
def main(argv=None) -> Dict:
    args = parse_args(argv)
    out = Path(args.out)
    def train_member(config: str, export: str) -> Dict:
        return run_stage(out, f"member_{Path(config).stem}", member_command(args, config, Path(export).parent),
                         f"training member {Path(config).stem} on identity part 0")

    configs = args.member_configs or []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each member trains in its own process
        trained = dict(zip(args.members, pool.map(train_member, configs, args.members), strict=False))
    fusion = run_stage(out, "train", fusion_command(args), "training the fusion model")
    results = {"hardware": hardware_line(), "train": args.train, "seed": args.seed, "members": args.members,
               "member_training": {m: member_budget(m, trained.get(m)) for m in args.members},
               "fusion_part": identities_trained(export_config(out / "fusion" / "export")),
               "fusion_training": fusion, "parts": {}, "choice_against_best": {}}
    for test in args.test:
        scored = results["parts"][test] = {}
        for name, settings in variants(args.members, out / "fusion" / "export").items():
            folder = eval_folder(args, test, name)
            record = run_stage(folder.parent, folder.name, eval_command(args, test, name, settings),
                               f"evaluating on {Path(test).name}: {name}")
            scored[name] = {**read_metrics(folder / "metrics.json"), "wall_s": record["wall_s"],
                            "chose": chosen_scoring(folder)}
        results["choice_against_best"][test] = choice_against_best(args, test, scored)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "results.md", markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])

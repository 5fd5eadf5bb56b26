"""scripts/bench/bench_recipes.py and the protocol it builds (data/protocol.py, the library of
scripts/make_openset_protocol.py): identity-disjoint train/validation/test parts, clear errors, the
summary's arithmetic, and one tiny benchmark end to end."""
from __future__ import annotations

import importlib.util
import json
import math
import shlex
import sys

import bench_recipes as bench
import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from core.config import load_config
from core.errors import ConfigError
from core.schema import DataConfig
from data import protocol
from data.formats import load_table


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


protocol_tool = _script("make_openset_protocol")


@pytest.fixture(scope="module")
def folders_dataset(tmp_path_factory):
    """40 identities x 3 small photos as ROOT/<identity>/<image>.jpg."""
    root = tmp_path_factory.mktemp("folders") / "Animals"
    rng = np.random.default_rng(0)
    for identity in range(40):
        (root / f"id{identity:02d}").mkdir(parents=True)
        for k in range(3):
            cv2.imwrite(str(root / f"id{identity:02d}" / f"{k}.jpg"), rng.integers(0, 255, (16, 16, 3), np.uint8))
    return root


def _identities(part: pd.DataFrame) -> set:
    return set(part["identity"])


def test_protocol_parts_are_identity_disjoint_with_a_fifth_of_test_identities_new(folders_dataset, tmp_path):
    table = load_table(load_config(DataConfig, None, ["format=folders", f"root={folders_dataset}"]))
    record = protocol.build_protocol(table, folders_dataset, tmp_path / "proto", val_fraction=0.2, seed=3)
    parts = {name: load_table(load_config(DataConfig, None, ["format=animalclef2025", f"root={tmp_path / 'proto' / name}"]))
             for name in ("train", "val", "test")}
    train, val, test = (_identities(parts[n]) for n in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == _identities(table)
    assert (len(train), len(val), len(test)) == (16, 4, 20)
    assert set(parts["train"]["split"]) == {"database"}
    for name, part in (("val", parts["val"]), ("test", parts["test"])):
        database = _identities(part[part["split"] == "database"])
        query_only = _identities(part[part["split"] == "query"]) - database
        assert len(query_only) == round(0.2 * len(_identities(part))), name
        assert record["parts"][name]["new_identities"] == len(query_only)
    assert json.loads((tmp_path / "proto" / protocol.PROTOCOL_FILE).read_text())["arguments"]["seed"] == 3
    # The same arguments give the same parts; another seed other ones.
    again = protocol.split_protocol(table, **{**protocol.SPLIT_DEFAULTS, "val_fraction": 0.2, "seed": 3})
    other = protocol.split_protocol(table, **{**protocol.SPLIT_DEFAULTS, "val_fraction": 0.2, "seed": 4})
    assert _identities(again["test"]) == test and _identities(other["test"]) != test


def test_protocol_of_one_dataset_of_several_keeps_only_its_images(folders_dataset, tmp_path, capsys):
    # Two "species" in one AnimalCLEF-format set: a cross-species protocol tests on one of them alone.
    rows = [{"image_id": i, "identity": path.parent.name, "path": str(path.relative_to(folders_dataset)),
             "split": "database", "dataset": "A" if path.parent.name < "id20" else "B"}
            for i, path in enumerate(sorted(folders_dataset.glob("*/*.jpg")))]
    pd.DataFrame(rows).to_csv(folders_dataset / "metadata.csv", index=False)
    try:
        protocol_tool.main(["--format", "animalclef2025", "--root", str(folders_dataset), "--datasets", "B",
                            "--train-fraction", "0.05", "--out", str(tmp_path / "proto")])
    finally:
        (folders_dataset / "metadata.csv").unlink()
    test = load_table(load_config(DataConfig, None, ["format=animalclef2025", f"root={tmp_path / 'proto' / 'test'}"]))
    assert set(test["dataset"]) == {"B"} and len(_identities(test)) == 19  # 20 B identities, one to train
    assert "test:  19 identities" in capsys.readouterr().out


def test_protocol_never_replaces_a_folder_that_is_not_one(folders_dataset, tmp_path):
    table = load_table(load_config(DataConfig, None, ["format=folders", f"root={folders_dataset}"]))
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a protocol folder"):
        protocol.build_protocol(table, folders_dataset, tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize("argv, message", [
    (["--datasets", "lion", "--data-root", "{tmp}"], "error: dataset lion not found: {tmp}/LionData does not exist"),
    (["--datasets", "zebra,synthetic"], "error: --data-root is required for zebra"),
    (["--datasets", "synthetic", "--recipes", "defualt"], "error: --recipes: no recipe 'defualt' in configs/train; "
                                                          "did you mean 'default'?"),
    (["--datasets", "dogs"], "error: --datasets: unknown dataset 'dogs'"),
])
def test_user_mistakes_are_one_clear_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main([a.format(tmp=tmp_path) for a in argv] + ["--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message.format(tmp=tmp_path)) and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_dry_run_gives_every_run_the_same_budget(tmp_path, capsys):
    (tmp_path / "DogFaceNet-dev").mkdir()
    bench.main(["--datasets", "dogfacenet,synthetic", "--data-root", str(tmp_path), "--recipes", "default,triplet_cpu",
                "--minutes", "3", "--seeds", "0,1", "--protocol-seeds", "0,1", "--overrides", "train.lr=3e-4",
                "--out", str(tmp_path / "out"), "--dry-run"])
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    trains = [line for line in lines if " train.py " in line or "reference_loop.py" in line]
    evals = [line for line in lines if " eval.py " in line]
    # dogfacenet: 2 protocols, synthetic: 1; x 2 seeds x (2 recipes + the plain loop)
    assert len(trains) == 3 * 2 * 3 and len(evals) == len(trains) == len(lines) / 2
    assert all("train.max_minutes=3.0" in t and "train.lr=3e-4" in t for t in trains if " train.py " in t)
    assert all("--minutes 3.0" in t and "train.lr" not in t for t in trains if "reference_loop.py" in t)
    assert all("/train " in t for t in trains)
    assert all("/val output_dir=" in e for e in evals)  # --split validation by default
    assert sum("dogfacenet-p1/" in e for e in evals) == 6
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("baseline_eval", ["plain", "pipeline"])
def test_the_plain_loop_is_scored_plainly_or_as_the_recipes(baseline_eval, tmp_path, capsys):
    bench.main(["--datasets", "synthetic", "--seeds", "0", "--eval-overrides", "rerank.matcher=sift",
                "--baseline-eval", baseline_eval, "--out", str(tmp_path / "out"), "--dry-run"])
    evals = [shlex.split(line) for line in capsys.readouterr().out.splitlines() if " eval.py " in line]
    recipe, plain = (next(e for e in evals if f"/{name}-s0/" in " ".join(e)) for name in ("default", "reference"))
    assert recipe[-1] == "rerank.matcher=sift" and recipe[-3].endswith("/default-s0/eval-validation")
    if baseline_eval == "plain":
        assert plain[-3:] == ["tta=[identity]", "calibration=none", "rerank.matcher=none"]
        assert plain[-4] == "embed_cache=none" and plain[-5].endswith("/reference-s0/eval-validation-plain")
    else:
        assert plain[-1] == "rerank.matcher=sift" and plain[-3].endswith("/reference-s0/eval-validation")


def test_summary_means_over_seeds_then_datasets_and_the_ratio_to_the_baseline():
    def row(dataset, recipe, seed, score):
        return {"dataset": dataset, "recipe": recipe, "seed": seed, "steps": 10 + seed, "score": score,
                "BAKS": score, "BAUS": score, "rank1": score, "rank5": None, "mAP": score}

    rows = [row("a", "default", 0, 0.4), row("a", "default", 1, 0.6), row("a", "reference", 0, 0.4),
            row("b", "default", 0, 0.3), row("b", "reference", 0, 0.2)]
    summary = bench.summarize(rows, ["a", "b"], ["default", "reference"])
    assert summary["per_dataset"]["a"]["default"]["score"] == pytest.approx(0.5)
    assert summary["per_dataset"]["a"]["default"]["runs"] == 2 and summary["per_dataset"]["a"]["default"]["rank5"] is None
    assert summary["mean_over_datasets"]["default"]["score"] == pytest.approx(0.4)
    assert summary["mean_over_datasets"]["reference"]["score"] == pytest.approx(0.3)
    assert summary["score_ratio_to_baseline"] == {"default": pytest.approx(0.4 / 0.3)}
    partial = bench.summarize(rows[:3], ["a", "b"], ["default", "reference"])
    assert partial["mean_over_datasets"] == {} and partial["score_ratio_to_baseline"] == {}
    zero = bench.summarize([row("a", "default", 0, 0.4), row("a", "reference", 0, 0.0)], ["a"], ["default", "reference"])
    assert zero["score_ratio_to_baseline"] == {"default": None}


def test_cpu_info_reads_the_model_and_the_bf16_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx512f avx512_bf16 amx_tile\n\n"
                       "processor\t: 1\nmodel name\t: Some CPU\nflags\t\t: fpu\n")
    info = bench.cpu_info(str(cpuinfo))
    assert (info["model"], info["avx512_bf16"], info["amx"]) == ("Some CPU", True, True)
    assert bench.cpu_info(str(tmp_path / "absent"))["model"] == "unknown"


def test_steps_are_read_from_either_trainer():
    assert bench.parse_steps("exported x\ndone: 1570 steps; exported model's validation: n/a") == 1570
    assert bench.parse_steps("1099 steps (12.3 epochs of 900 images, 280 identities) in 8 minutes -> x") == 1099
    assert bench.parse_steps("no summary") is None


@pytest.mark.slow
def test_tiny_benchmark_end_to_end(tmp_path, monkeypatch, scripts_run_this_checkout):
    monkeypatch.setenv("REIDZOO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench"
    results = bench.main(["--datasets", "synthetic", "--synthetic-individuals", "24", "--synthetic-images", "5",
                          "--minutes", "0.03", "--seeds", "0", "--split", "test", "--tiny", "--out", str(out)])
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    runs = {(r["dataset"], r["recipe"], r["seed"]): r for r in saved["runs"]}
    assert set(runs) == {("synthetic", "default", 0), ("synthetic", "reference", 0)}
    for run in runs.values():
        assert run["steps"] >= 1 and run["train_wall_s"] > 0 and run["cpu"]
        assert all(math.isfinite(run[m]) for m in bench.METRICS)
    means = saved["summary"]["mean_over_datasets"]
    ratio = saved["summary"]["score_ratio_to_baseline"]["default"]
    if means["reference"]["score"] > 0:  # a 3-step model may well score 0
        assert ratio == pytest.approx(means["default"]["score"] / means["reference"]["score"])
    else:
        assert ratio is None
    assert "default / reference" in (out / "results.md").read_text()
    assert (out / "protocols" / "synthetic-p0" / "test" / "metadata.csv").is_file()

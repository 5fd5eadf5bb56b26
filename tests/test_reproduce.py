"""scripts/reproduce.py and engine/reproduce: recipe checks, the data check, skipping by
fingerprint, failures, the manifest. Stages run stand-in scripts that only record their
arguments, so these tests take seconds (tests/test_recipes.py runs the real twins)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, script_env

from core.errors import ConfigError, DataError
from core.files import file_sha256
from engine.reproduce.pipeline import reproduce
from engine.reproduce.recipe import load_recipe
from engine.reproduce.runner import STAGE_LOG, STAGE_RECORD, StageFailed

# Stand-ins for train.py / eval.py: append the stage folder's name to $FAKE_RUNS, write the
# arguments (train: an export; eval: a submission made of them); seed=13 makes a stage fail.
FAKE_SCRIPT = textwrap.dedent("""
    import json, os, pathlib, sys
    overrides = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a and not a.startswith("--"))
    out = pathlib.Path(overrides["output_dir"])
    with open(os.environ["FAKE_RUNS"], "a") as runs:
        runs.write(out.name + "\\n")
    if overrides.get("seed") == "13":
        print("error: stage asked to fail", file=sys.stderr)
        sys.exit(2)
    out.mkdir(parents=True, exist_ok=True)
    if "{kind}" == "train":
        (out / "export").mkdir(exist_ok=True)
        (out / "export" / "config.json").write_text(json.dumps(sorted(overrides.items())))
    else:
        (out / "submission.csv").write_text("image_id,identity\\n" + "\\n".join(sorted(overrides.values())) + "\\n")
""")


@pytest.fixture
def fakes(tmp_path, monkeypatch):
    scripts = {}
    for kind in ("train", "eval"):
        path = tmp_path / f"fake_{kind}.py"
        path.write_text(FAKE_SCRIPT.replace("{kind}", kind))
        scripts[kind] = path
    runs = tmp_path / "runs.txt"
    runs.write_text("")
    monkeypatch.setenv("FAKE_RUNS", str(runs))
    return scripts, runs


def write_recipe(folder: Path, stages: str, *, extra: str = "", expected: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.yaml").write_text("train: {max_minutes: 0, epochs: 1}\n")
    (folder / "eval.yaml").write_text("tta: [identity]\n")
    (folder / "recipe.yaml").write_text(
        f'description: "a test recipe"\n{extra}data: {{format: animalclef2025}}\nstages:\n{textwrap.indent(stages, "  ")}')
    if expected is not None:
        (folder / "expected.json").write_text(json.dumps(expected))
    return folder


THREE_STAGES = """\
- {name: a, script: train, config: train.yaml, overrides: ["seed=1"]}
- {name: b, script: train, config: train.yaml}
- {name: c, script: eval, config: eval.yaml, overrides: ["models=[{stages.a}/export]"]}
"""


def ran(runs: Path) -> list:
    return runs.read_text().split()


# ----------------------------------------------------------------------------- recipe checks


@pytest.mark.parametrize("text, message", [
    ('description: x\ndata: {format: animalclef2025}\nstagse: []\n', "unknown key 'stagse'; did you mean 'stages'"),
    ('description: x\ndata: {fromat: animalclef2025}\nstages: []\n', "unknown key 'fromat'; did you mean 'format'"),
    ('description: x\ndata: {format: animalclef}\nstages: []\n', "did you mean 'animalclef202[56]'"),
    ('description: x\ndata: {format: humpback}\nstages:\n  - {name: a, script: train, config: train.yaml, overides: []}\n',
     "unknown key 'overides'; did you mean 'overrides'"),
    ('description: x\ndata: {format: humpback}\nstages:\n  - {name: a, script: trian, config: train.yaml}\n',
     "did you mean 'train'"),
    ('description: x\ndata: {format: humpback}\nstages:\n  - {name: a, script: train, config: nowhere.yaml}\n',
     "config file .*nowhere.yaml not found"),
    ('description: x\ndata: {format: humpback}\nstages:\n  - {name: a, script: train, config: train.yaml}\n'
     '  - {name: a, script: eval, config: eval.yaml}\n', "'a' is used twice"),
    ('description: x\ndata: {format: humpback}\nstages:\n  - {name: a, script: train, config: train.yaml, '
     'overrides: ["output_dir=/x"]}\n', "'output_dir' is set by the runner"),
])
def test_bad_recipes_are_refused_with_one_clear_message(tmp_path, text, message):
    write_recipe(tmp_path / "r", "")
    (tmp_path / "r" / "recipe.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_recipe(tmp_path / "r")


@pytest.mark.parametrize("overrides, message", [
    ('["models=[{stages.b}/export]"]', "'{stages.b}', a stage that runs at the same time or later"),
    ('["models=[{stages.a}/export]"]', "'{stages.a}', a stage that runs at the same time or later"),
    ('["models=[{stages.z}/export]"]', "unknown stage '{stages.z}'"),
    ('["models=[{outt}/a/export]"]', "unknown placeholder '{outt}'; did you mean 'out'"),
])
def test_placeholders_may_name_only_earlier_stages(tmp_path, overrides, message):
    stages = (f"- {{name: a, script: eval, config: eval.yaml, overrides: {overrides}}}\n"
              "- {name: b, script: train, config: train.yaml}\n")
    with pytest.raises(ConfigError, match=message):
        load_recipe(write_recipe(tmp_path / "r", stages))


def test_yaml_mappings_in_overrides_are_not_placeholders(tmp_path):
    stages = '- {name: a, script: eval, config: eval.yaml, overrides: ["rerank.matcher_args={variant: aliked-n16rot}"]}\n'
    recipe = load_recipe(write_recipe(tmp_path / "r", stages))
    assert recipe.stages[0].overrides == ("rerank.matcher_args={variant: aliked-n16rot}",)


def test_a_misspelt_key_in_a_stage_config_stops_before_any_stage_runs(tmp_path, tiny_synthetic, fakes):
    scripts, runs = fakes
    stages = ('- {name: a, script: train, config: train.yaml}\n'
              '- {name: b, script: train, config: train.yaml, overrides: ["train.epocs=3"]}\n')
    with pytest.raises(ConfigError, match=r"stage 'b'.*did you mean 'train.epochs'"):
        reproduce(write_recipe(tmp_path / "r", stages), out=tmp_path / "out", data_root=str(tiny_synthetic),
                  scripts=scripts, echo=False)
    assert ran(runs) == []


def test_deterministic_refuses_a_wall_clock_budget(tmp_path, tiny_synthetic, fakes):
    scripts, runs = fakes
    stages = '- {name: a, script: train, config: train.yaml, overrides: ["train.max_minutes=5"]}\n'
    with pytest.raises(ConfigError, match="train.max_minutes=0"):
        reproduce(write_recipe(tmp_path / "r", stages), out=tmp_path / "out", data_root=str(tiny_synthetic),
                  deterministic=True, scripts=scripts, echo=False)
    assert ran(runs) == []


# ----------------------------------------------------------------------------- the data check


def test_missing_or_wrong_data_root_is_one_message_before_any_stage(tmp_path, fakes):
    scripts, runs = fakes
    recipe = write_recipe(tmp_path / "r", THREE_STAGES)
    empty = tmp_path / "empty"
    empty.mkdir()
    for root, message in [(None, "needs --data-root: a folder holding metadata.csv and images/"),
                          (str(tmp_path / "nowhere"), "does not exist"),
                          (str(empty), "is not a animalclef2025 dataset")]:
        with pytest.raises(DataError, match=message):
            reproduce(recipe, out=tmp_path / "out", data_root=root, scripts=scripts, echo=False)
    assert ran(runs) == [] and not (tmp_path / "out" / "a").exists()


def test_the_command_line_prints_one_error_line_and_exits_2(tmp_path):
    recipe = write_recipe(tmp_path / "comp" / "entry", THREE_STAGES)
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "reproduce.py"), str(recipe),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path,
                            env=script_env())
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: recipe comp/entry needs --data-root: a folder holding metadata.csv and images/ (animalclef2025 format); "
        "or run its synthetic twin with --synthetic"]
    assert not (tmp_path / "out" / "a").exists()


# ----------------------------------------------------------------------------- skipping


def test_unchanged_stages_are_skipped_and_a_change_reruns_its_dependants(tmp_path, tiny_synthetic, fakes):
    scripts, runs = fakes
    recipe = write_recipe(tmp_path / "r", THREE_STAGES)
    said: list = []

    def run():
        return reproduce(recipe, out=tmp_path / "out", data_root=str(tiny_synthetic), scripts=scripts, echo=False,
                         say=said.append)

    first = run()
    assert ran(runs) == ["a", "b", "c"] and [s["ran"] for s in first["stages"]] == [True, True, True]
    for name in "abc":
        record = json.loads((tmp_path / "out" / name / STAGE_RECORD).read_text())
        assert record["fingerprint"] == first["stages"]["abc".index(name)]["fingerprint"]
        assert (tmp_path / "out" / name / STAGE_LOG).is_file()

    said.clear()
    second = run()
    assert ran(runs) == ["a", "b", "c"]  # nothing ran again
    assert [s["ran"] for s in second["stages"]] == [False, False, False]
    assert sum("skipped, unchanged" in line for line in said) == 3
    assert second["submission"]["sha256"] == first["submission"]["sha256"]

    (recipe / "recipe.yaml").write_text((recipe / "recipe.yaml").read_text().replace('"seed=1"', '"seed=2"'))
    said.clear()
    third = run()
    assert ran(runs) == ["a", "b", "c", "a", "c"]  # b does not read a's folder: skipped
    assert any("[1/3] a: running" in line and "changed: overrides" in line for line in said)
    assert any("[3/3] c: running" in line and "stage 'a'" in line for line in said)
    assert third["stages"][1]["fingerprint"] == first["stages"][1]["fingerprint"]
    assert third["stages"][0]["fingerprint"] != first["stages"][0]["fingerprint"]

    reproduce(recipe, out=tmp_path / "out", data_root=str(tiny_synthetic), scripts=scripts, echo=False,
              force=True, say=said.append)
    assert ran(runs)[5:] == ["a", "b", "c"]


def test_changed_data_reruns_every_stage(tmp_path, tiny_synthetic, fakes):
    scripts, runs = fakes
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_synthetic, data)
    recipe = write_recipe(tmp_path / "r", THREE_STAGES)
    reproduce(recipe, out=tmp_path / "out", data_root=str(data), scripts=scripts, echo=False, say=lambda _: None)
    with open(data / "metadata.csv", "a") as handle:
        handle.write("\n")
    reproduce(recipe, out=tmp_path / "out", data_root=str(data), scripts=scripts, echo=False, say=lambda _: None)
    assert ran(runs) == ["a", "b", "c"] * 2


def test_a_failing_stage_stops_the_run_naming_its_log_and_runs_again_next_time(tmp_path, tiny_synthetic, fakes):
    scripts, runs = fakes
    recipe = write_recipe(tmp_path / "r", THREE_STAGES.replace('"seed=1"', '"seed=13"'))
    out = tmp_path / "out"
    with pytest.raises(StageFailed, match=rf"stage 'a' failed .*its log: {out / 'a' / STAGE_LOG}"):
        reproduce(recipe, out=out, data_root=str(tiny_synthetic), scripts=scripts, echo=False, say=lambda _: None)
    assert ran(runs) == ["a"]
    assert "error: stage asked to fail" in (out / "a" / STAGE_LOG).read_text()
    assert not (out / "a" / STAGE_RECORD).exists() and not (out / "manifest.json").exists()
    (recipe / "recipe.yaml").write_text((recipe / "recipe.yaml").read_text().replace('"seed=13"', '"seed=1"'))
    reproduce(recipe, out=out, data_root=str(tiny_synthetic), scripts=scripts, echo=False, say=lambda _: None)
    assert ran(runs) == ["a", "a", "b", "c"]


# ----------------------------------------------------------------------------- arguments and manifest


def test_stages_get_the_runners_arguments_and_the_manifest_checks_the_sha(tmp_path, tiny_synthetic, fakes):
    scripts, _ = fakes
    recipe = write_recipe(tmp_path / "r", THREE_STAGES)
    out = tmp_path / "out"
    manifest = reproduce(recipe, out=out, data_root=str(tiny_synthetic), scripts=scripts, echo=False,
                         deterministic=True, say=lambda _: None)
    args = dict(json.loads((out / "a" / "export" / "config.json").read_text()))
    assert args["output_dir"] == str(out / "a") and args["data.root"] == str(tiny_synthetic)
    assert args["data.format"] == "animalclef2025" and args["train.deterministic"] == "true"
    assert args["data.num_workers"] == "0"
    submission = (out / "c" / "submission.csv").read_text()
    assert f"[{out / 'a'}/export]" in submission and "train.deterministic" not in submission  # eval: no train keys
    sha = file_sha256(out / "c" / "submission.csv")
    assert manifest["submission"]["sha256"] == sha and manifest["check"]["match"] is None
    assert json.loads((out / "manifest.json").read_text())["stages"][0]["export"] == {
        "config.json": file_sha256(out / "a" / "export" / "config.json")}
    assert manifest["versions"]["python"] and "torch" in manifest["versions"]

    for expected_sha, match in ((sha, True), ("0" * 64, False)):
        write_recipe(recipe, THREE_STAGES, expected={"metric": "m", "value": 0.5, "submission_sha256": expected_sha})
        manifest = reproduce(recipe, out=out, data_root=str(tiny_synthetic), scripts=scripts, echo=False,
                             deterministic=True, say=lambda _: None)
        assert manifest["check"] == {"key": "submission_sha256", "expected": expected_sha, "match": match}


def test_expected_json_keys_are_checked(tmp_path):
    recipe = write_recipe(tmp_path / "r", THREE_STAGES, expected={"metric": "m", "submision_sha256": "x"})
    with pytest.raises(ConfigError, match="did you mean 'submission_sha256'"):
        load_recipe(recipe)

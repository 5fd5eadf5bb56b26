"""scripts/bench/bench_fusion.py: the held-out protocol it runs (members on identity part 0, the fusion on
part 1), the variants it scores and clear errors on bad arguments."""
from __future__ import annotations

import bench_fusion as bench
import pytest

from core.errors import ConfigError, DataError


@pytest.fixture
def parts(tmp_path):
    for name in ("train", "val", "test"):
        (tmp_path / name).mkdir()
    return tmp_path


def test_members_train_on_part_0_and_the_fusion_on_part_1(parts):
    args = bench.parse_args(["--train", str(parts / "train"), "--test", f"{parts / 'val'},{parts / 'test'}",
                             "--member-configs", "configs/train/default.yaml,configs/train/classifier_cpu.yaml",
                             "--seed", "3", "--out", str(parts / "out"), "--overrides", "'model.args.pca_dim=8'"])
    assert args.members == [str(parts / "out" / "members" / name / "export") for name in ("default", "classifier_cpu")]
    member = bench.member_command(args, "configs/train/default.yaml", parts / "out" / "members" / "default")
    assert {"data.identity_parts=2", "data.identity_part=0", "seed=3", "train.epochs=75"} <= set(member)
    fusion = bench.fusion_command(args)
    assert {"data.identity_parts=2", "data.identity_part=1", "seed=3", "model.args.pca_dim=8"} <= set(fusion)
    assert f"model.args.members=[{','.join(args.members)}]" in fusion
    folders = {bench.eval_folder(args, test, name) for test in args.test for name in bench.variants(args.members, parts)}
    assert len(folders) == 14  # seven scorings on each of two parts, none overwriting another
    assert "choose_scoring=false" in bench.variants(args.members, parts / "fusion")["trained fusion"]


def test_members_train_by_minutes_as_a_user_would(parts):
    args = bench.parse_args(["--train", str(parts / "train"), "--test", str(parts / "test"), "--member-configs",
                             "configs/train/default.yaml,configs/train/classifier_cpu.yaml", "--member-minutes", "5",
                             "--out", str(parts / "out")])
    member = bench.member_command(args, "configs/train/default.yaml", parts / "out" / "members" / "default")
    assert "train.max_minutes=5" in member and not any(m.startswith("train.epochs") for m in member)
    with pytest.raises(ConfigError, match="--member-minutes"):
        bench.parse_args(["--train", str(parts / "train"), "--test", str(parts / "test"), "--member-configs",
                          "configs/train/default.yaml,configs/train/classifier_cpu.yaml", "--member-minutes", "0"])
    with pytest.raises(SystemExit):  # one budget or the other
        bench.parse_args(["--train", str(parts / "train"), "--test", str(parts / "test"), "--member-configs",
                          "configs/train/default.yaml,configs/train/classifier_cpu.yaml", "--member-minutes", "5",
                          "--member-epochs", "3"])


def test_the_chosen_scoring_is_read_from_the_manifest(tmp_path):
    assert bench.chosen_scoring(tmp_path) == ""
    (tmp_path / "manifest.json").write_text('{"threshold": {"scoring_choice": {"chosen": {"LionData": "member a alone"}}}}')
    assert bench.chosen_scoring(tmp_path) == "LionData: member a alone"


def test_the_choice_is_set_against_the_best_alternative_with_an_interval_over_individuals(parts):
    import pandas as pd

    args = bench.parse_args(["--train", str(parts / "train"), "--test", str(parts / "test"), "--member-configs",
                             "configs/train/default.yaml,configs/train/classifier_cpu.yaml", "--out", str(parts / "out")])
    test = args.test[0]
    rows = [("a", "database"), ("b", "database"), ("a", "query"), ("b", "query"), ("x", "query"), ("y", "query")]
    pd.DataFrame({"identity": [i for i, _ in rows], "split": [s for _, s in rows], "dataset": "D",
                  "path": [f"images/{k}.jpg" for k in range(len(rows))]}).to_csv(parts / "test" / "metadata.csv")
    files = [f"images/{k}.jpg" for k in range(2, 6)]
    guesses = {bench.CHOICE: ["a", "b", "new_individual", "a"], "calibrated soft vote": ["a", "b", "new_individual", "new_individual"]}
    scored = {name: {"score": 0.1} for name in bench.ALTERNATIVES}
    scored["calibrated soft vote"]["score"] = 1.0
    for name, predictions in guesses.items():
        folder = bench.eval_folder(args, test, name)
        folder.mkdir(parents=True)
        pd.DataFrame({"file": files, "prediction": predictions}).to_csv(folder / "predictions.csv", index=False)
    found = bench.choice_against_best(args, test, scored)
    # The soft vote (best alternative) is perfect; the choice calls y known: BAUS 1/2, score sqrt(1/2).
    assert found["best"] == "calibrated soft vote"
    assert found["difference"] == pytest.approx(round(0.5 ** 0.5 - 1, 4))
    assert found["low"] <= found["difference"] <= found["high"] <= 0


def test_given_members_train_the_fusion_as_its_recipe_says(parts):
    (parts / "a").mkdir(), (parts / "b").mkdir()
    args = bench.parse_args(["--train", str(parts / "train"), "--test", str(parts / "test"),
                             "--members", f"{parts / 'a'},{parts / 'b'}"])
    assert not any(item.startswith("data.identity_part") for item in bench.fusion_command(args))
    blend = bench.variants(args.members, parts / "fusion")["static blend 0.5 / 0.5 (raw cosine)"]
    assert blend == [f"models=[{parts / 'a'},{parts / 'b'}]", "weights=[0.5,0.5]", "calibration=none"]


@pytest.mark.parametrize("extra, error, message", [
    (["--member-configs", "configs/train/default.yaml"], ConfigError, "takes two, got 1"),
    (["--member-configs", "configs/train/default.yaml,configs/train/nope.yaml"], ConfigError, "no such recipe"),
    (["--members", "missing_a,missing_b"], DataError, "not a folder: missing_a"),
    (["--member-configs", "configs/train/default.yaml,configs/train/default.yaml", "--jobs", "0"], ConfigError,
     "--jobs must be >= 1"),
])
def test_bad_arguments_are_refused(parts, extra, error, message):
    with pytest.raises(error, match=message):
        bench.parse_args(["--train", str(parts / "train"), "--test", str(parts / "test"), *extra])


def test_two_test_parts_of_one_name_are_refused(parts):
    (parts / "other" / "test").mkdir(parents=True)
    with pytest.raises(ConfigError, match="different folder names"):
        bench.parse_args(["--train", str(parts / "train"), "--test", f"{parts / 'test'},{parts / 'other' / 'test'}",
                          "--member-configs", "configs/train/default.yaml,configs/train/classifier_cpu.yaml"])

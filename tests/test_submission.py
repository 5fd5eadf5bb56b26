"""Submission validation (every kind of broken file), atomic writing, and the validator CLI."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, script_env

from core.errors import DataError
from data.table import make_table
from engine.outputs.submission import check_submission, validate_submission, write_submission


def _table() -> pd.DataFrame:
    rows = [{"image_id": str(i), "identity": ident, "split": "database", "dataset": "D", "path": f"/x/{i}"}
            for i, ident in enumerate(["a", "a", "b", "c"])]
    rows += [{"image_id": str(i), "identity": None, "split": "query", "dataset": "D", "path": f"/x/{i}"}
             for i in range(10, 14)]
    return make_table(rows)


def _good() -> pd.DataFrame:
    return pd.DataFrame({"image_id": ["10", "11", "12", "13"], "identity": ["a", "new_individual", "b", "a"]})


def test_a_good_submission_passes():
    assert validate_submission(_good(), _table(), "animalclef") == []


BROKEN = {
    "missing column": (lambda f: f.rename(columns={"identity": "Id"}), "missing column"),
    "extra column": (lambda f: f.assign(score=1.0), "unexpected column"),
    "query missing": (lambda f: f.iloc[:3], "have no prediction: 13"),
    "query duplicated": (lambda f: pd.concat([f, f.iloc[[0]]]), "more than once: 10"),
    "unknown image": (lambda f: pd.concat([f, pd.DataFrame({"image_id": ["99", "1"], "identity": ["a", "a"]})]),
                      "not query images of the dataset (1 of them are database images): 1, 99"),
    "identity not in database": (lambda f: f.assign(identity=["a", "zebra", "b", "a"]), "zebra"),
    "wrong new label": (lambda f: f.assign(identity=["a", "new_whale", "b", "a"]), "new_whale"),
    "empty identity": (lambda f: f.assign(identity=["a", "", "b", None]), "2 predictions are empty: 11, 13"),
    "empty image id": (lambda f: f.assign(image_id=["10", "11", "12", ""]), "no image id"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_animalclef_submissions_are_rejected(name):
    change, message = BROKEN[name]
    problems = validate_submission(change(_good()), _table(), "animalclef")
    assert any(message in p for p in problems), problems


def _whale_table() -> pd.DataFrame:
    rows = [{"image_id": f"t{i}.jpg", "identity": f"w{i}", "split": "database", "dataset": "humpback",
             "path": f"/x/t{i}"} for i in range(6)]
    rows += [{"image_id": f"q{i}.jpg", "identity": None, "split": "query", "dataset": "humpback",
              "path": f"/x/q{i}"} for i in range(2)]
    return make_table(rows)


@pytest.mark.parametrize("guesses, message", [
    ("w1 w2 new_whale w3 w4", None),
    ("w1 w2 new_whale w3", "exactly 5 space-separated guesses: q0.jpg (4)"),
    ("w1 w2 w1 w3 w4", "repeat a guess: q0.jpg"),
    ("w1 w2 w99 w3 w4", "neither a database whale nor 'new_whale': w99"),
])
def test_humpback_guess_lists(guesses, message):
    frame = pd.DataFrame({"Image": ["q0.jpg", "q1.jpg"], "Id": [guesses, "new_whale w0 w1 w2 w3"]})
    problems = validate_submission(frame, _whale_table(), "humpback")
    assert problems == [] if message is None else any(message in p for p in problems), problems


def test_check_submission_reads_files_and_lists_every_problem(tmp_path):
    path = tmp_path / "sub.csv"
    _good().assign(identity=["a", "zebra", "b", "a"]).iloc[:3].to_csv(path, index=False)
    with pytest.raises(DataError) as err:
        check_submission(path, _table(), "animalclef")
    assert "zebra" in str(err.value) and "no prediction: 13" in str(err.value)
    with pytest.raises(DataError, match="does not exist"):
        check_submission(tmp_path / "absent.csv", _table(), "animalclef")


def test_write_submission_round_trips(tmp_path):
    path = write_submission(tmp_path / "out" / "submission.csv", "animalclef", _table(),
                            ["a", "new_individual", "b", "a"])
    assert validate_submission(path, _table(), "animalclef") == []
    whales = write_submission(tmp_path / "whales.csv", "humpback", _whale_table(),
                              {"q0.jpg": ["w1", "new_whale", "w2", "w3", "w4"], "q1.jpg": "w0 w1 w2 w3 w4"})
    assert pd.read_csv(whales)["Id"].tolist() == ["w1 new_whale w2 w3 w4", "w0 w1 w2 w3 w4"]


def test_write_submission_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "submission.csv"
    with pytest.raises(DataError, match="zebra"):
        write_submission(path, "animalclef", _table(), ["a", "zebra", "b", "a"])
    assert os.listdir(tmp_path) == []
    path.write_text("previous run\n")

    def fail_midway(self, target, *args, **kwargs):
        Path(target).write_text("image_id,identity\n10,a\n")  # half a file, then the disk fills up
        raise OSError("No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", fail_midway)
    with pytest.raises(OSError):
        write_submission(path, "animalclef", _table(), ["a", "new_individual", "b", "a"])
    assert os.listdir(tmp_path) == ["submission.csv"] and path.read_text() == "previous run\n"


def _cli(*args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "validate_submission.py"), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120, env=script_env())


def test_validator_cli(tmp_path):
    root = tmp_path / "clef"
    (root / "images").mkdir(parents=True)
    table = _table()
    for image_id in table["image_id"]:
        (root / "images" / f"{image_id}.jpg").write_bytes(b"")  # not opened: the CLI skips image checks
    pd.DataFrame({"image_id": table["image_id"], "identity": table["identity"],
                  "path": [f"images/{i}.jpg" for i in table["image_id"]], "split": table["split"],
                  "dataset": table["dataset"]}).to_csv(root / "metadata.csv", index=False)
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    _good().to_csv(good, index=False)
    _good().iloc[:3].to_csv(bad, index=False)
    ok = _cli(str(good), "--format", "animalclef2025", "--root", str(root))
    assert ok.returncode == 0 and ok.stdout.startswith("OK"), ok.stderr
    assert "1 predicted new" in ok.stdout
    rejected = _cli(str(bad), "--format", "animalclef2025", "--root", str(root))
    assert rejected.returncode == 2 and "no prediction: 13" in rejected.stderr
    assert "Traceback" not in rejected.stderr

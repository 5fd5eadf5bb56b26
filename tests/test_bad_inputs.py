"""Bad input on the command line: exit status 2, one line naming the problem, no traceback, and
nothing written where the output would go."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import REPO
from PIL import Image

import eval as eval_program
import train
from core.errors import DataError, cli_entry, original_message


def run(script: str, *args, cache: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "REIDZOO_CACHE": str(cache)}
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)


def assert_refused(result: subprocess.CompletedProcess, message: str, *, only_line: bool = True) -> None:
    """Status 2 and one `error:` line holding `message`; with `only_line`, nothing else printed."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-3000:]
    if only_line:
        assert result.stdout == "" and result.stderr == errors[0] + "\n"


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.grad_accum=0", "'train.grad_accum' must be >= 1, got 0"),
        ("val.every_epochs=0", "'val.every_epochs' must be >= 1, got 0"),
        ("data.image_size=0", "'data.image_size' must be >= 1, got 0"),
        ("train.mixed_precision=bf61", "'train.mixed_precision' must be one of auto, no, fp16, bf16, got 'bf61'; "
                                       "did you mean 'bf16'?"),
        ("augment.scale=[0.8]", "'augment.scale' must be [min, max] with 0 < min <= max <= 1, got [0.8]"),
    ],
)
def test_train_refuses_bad_values_before_writing_anything(tmp_path, run_here, override, message):
    out = tmp_path / "run"
    assert_refused(run_here(train, [f"output_dir={out}", override], cache=tmp_path / "cache"), message)
    assert not out.exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("tta=[identity,hflp]", "'tta[1]' must be one of identity, hflip, fivecrop, got 'hflp'; did you mean 'hflip'?"),
        ("calibration=isotnic", "did you mean 'isotonic'?"),
        ("retrieval.index=hnws", "'retrieval.index' must be one of flat, ivf, hnsw, got 'hnws'"),
        ("weights=[1,2]", "'weights' has 2 values for 1 models"),
    ],
)
def test_eval_refuses_bad_values_before_writing_anything(tmp_path, run_here, override, message):
    out = tmp_path / "eval"
    assert_refused(run_here(eval_program, [f"output_dir={out}", override], cache=tmp_path / "cache"), message)
    assert not out.exists()


def test_a_recipe_with_a_bad_value_is_refused(tmp_path):  # a real process: the exit status the shell sees
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"output_dir: {tmp_path / 'run'}\nsampler: {{name: pk, k: 5}}\n")
    result = run("train.py", "--config", recipe, cache=tmp_path / "cache")
    assert_refused(result, "'sampler.k' = 5 must divide 'train.batch_size' = 64")
    assert not (tmp_path / "run").exists()


def make_humpback(root: Path, boxes: str) -> Path:
    """Four 40x30 photos of two whales and a bboxes.csv with the given rows (Kaggle's columns)."""
    (root / "train").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (40, 30), (60 * i, 90, 30)).save(root / "train" / f"t{i}.jpg")
    pd.DataFrame({"Image": [f"t{i}.jpg" for i in range(4)], "Id": ["w_0", "w_1"] * 2}).to_csv(root / "train.csv", index=False)
    (root / "bboxes.csv").write_text("Image,x0,y0,x1,y1\n" + boxes)
    return root


TINY_RUN = ["data.format=humpback", "data.image_size=32", "data.cache_dir=none", "train.batch_size=2",
            "val.enabled=false", "train.max_steps=4", "model.args.embed_dim=16"]


def test_train_refuses_an_empty_cell_in_humpback_boxes(tmp_path):
    root = make_humpback(tmp_path / "humpback", "t0.jpg,1,2,30,20\nt1.jpg,1,,30,20\n")
    out = tmp_path / "run"
    result = run("train.py", f"data.root={root}", f"output_dir={out}", *TINY_RUN, cache=tmp_path / "cache")
    assert_refused(result, f"{root / 'bboxes.csv'}: 1 boxes are not 'x0 y0 x1 y1'", only_line=False)
    assert "line 3 (t1.jpg): ['1', '', '30', '20'] (an empty value)" in result.stderr
    assert not out.exists(), "a run that cannot start writes nothing"


@pytest.mark.slow
def test_an_error_in_a_dataloader_worker_prints_the_workers_message(tmp_path):
    # Without the up-front image pass the box outside its image is found when a worker crops it.
    root = make_humpback(tmp_path / "humpback", "t1.jpg,100,100,130,120\n")
    out = tmp_path / "run"
    result = run("train.py", f"data.root={root}", f"output_dir={out}", *TINY_RUN, "data.verify_images=false",
                 "data.num_workers=1", cache=tmp_path / "cache")
    assert_refused(result, "lies outside image", only_line=False)
    assert "DataLoader worker" not in result.stderr and not (out / "export").exists()


class _BrokenDataset(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int):
        try:
            int("x")
        except ValueError as err:  # a chained cause: the worker's traceback then holds two exceptions
            raise DataError(f"image {i}: bbox [1, 2, 3] is not [x, y, w, h]") from err


def test_cli_entry_prints_a_worker_error_as_its_own_message(capsys):
    @cli_entry
    def main():
        list(torch.utils.data.DataLoader(_BrokenDataset(), num_workers=1))

    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: image 0: bbox [1, 2, 3] is not [x, y, w, h]\n"


def test_original_message_leaves_other_messages_alone():
    assert original_message(DataError("Caught nothing: a plain message")) == "Caught nothing: a plain message"
    wrapped = ("Caught DataError in DataLoader worker process 3.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\n    raise DataError("first line\\nsecond")\n'
               "core.errors.DataError: first line\nsecond\n")
    assert original_message(DataError(wrapped)) == "first line\nsecond"

"""train.py end to end: a tiny run, exact resume after SIGKILL, two processes, bad configs."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_RUN_OVERRIDES, run_train, tiny_train_overrides
from safetensors.torch import load_file

import train
from zoo import load_export


def latest_checkpoint(out: Path) -> Path:
    return sorted((out / "checkpoints").glob("step-*"))[-1]


def final_weights(out: Path) -> dict:
    return load_file(str(latest_checkpoint(out) / "model.safetensors"))


@pytest.mark.slow
def test_train_end_to_end_exports_a_rebuildable_model(tiny_run):
    out, result = tiny_run
    assert "exported model's validation: rank1=" in result.stdout
    model, meta = load_export(out / "export")
    assert meta["embed_dim"] == 64 and meta["input_size"] == 48
    assert len(meta["label_map"]) > 0 and {"rank1", "geometric_mean"} <= set(meta["metrics"])
    assert (out / "config.yaml").is_file() and list((out / "tensorboard").glob("events.*"))
    with torch.no_grad():
        emb = model.embed(torch.rand(2, 3, 48, 48))
    assert emb.shape == (2, 64) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)


@pytest.mark.slow
def test_val_export_last_exports_the_final_weights(tiny_run):
    out, result = tiny_run
    assert "val.export=last" in TINY_RUN_OVERRIDES
    assert not (out / "best").exists()
    exported = load_file(str(out / "export" / "model.safetensors"))
    final = {k[len("model."):]: v for k, v in final_weights(out).items() if k.startswith("model.")}
    assert exported.keys() == final.keys()
    assert all(torch.equal(exported[k], final[k]) for k in final)
    metrics = json.loads((out / "export" / "config.json").read_text())["metrics"]
    last_step = json.loads((latest_checkpoint(out) / "trainer_state.json").read_text())["step"]
    assert latest_checkpoint(out).name == f"step-{last_step:06d}" and last_step > 1
    assert metrics["step"] == last_step and "rank1" in metrics


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise_identical(tiny_synthetic, tmp_path):
    common = tiny_train_overrides(tiny_synthetic, tmp_path / "x", tmp_path / "cache")[1:] + [
        "train.max_steps=10",
        "train.checkpoint_every=3",
        "train.keep_last=5",
        "train.deterministic=true",
        "val.enabled=false",
        "data.num_workers=2",
    ]
    straight = tmp_path / "straight"
    result = run_train([f"output_dir={straight}"] + common)
    assert result.returncode == 0, result.stderr[-3000:]

    killed = tmp_path / "killed"
    cmd = [sys.executable, str(REPO / "train.py"), f"output_dir={killed}"] + common
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (killed / "checkpoints" / "step-000003").is_dir():
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before its first checkpoint"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "checkpoints" / "step-000010").exists(), "killed too late to test a resume"
    resumed = run_train([f"output_dir={killed}"] + common + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr

    a, b = final_weights(straight), final_weights(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_agree_and_match_one_process(tiny_synthetic, tmp_path):
    common = tiny_train_overrides(tiny_synthetic, tmp_path / "x", tmp_path / "cache")[1:] + [
        "train.max_steps=6",
        "val.enabled=false",
        "train.log_every=1",
        "train.warmup_steps=0",
    ]
    two = tmp_path / "two"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = run_train([f"output_dir={two}", "train.batch_size=16"] + common, launcher=launcher, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    digests = json.loads((two / "rank_digests.json").read_text())
    assert len(digests) == 2 and digests[0] == digests[1]

    # One process accumulating two micro-batches of 16 sees the same global batches, augmented alike.
    one = tmp_path / "one"
    result = run_train([f"output_dir={one}", "train.batch_size=16", "train.grad_accum=2"] + common, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    curve = {}
    for run in (one, two):
        curve[run] = [json.loads(line)["loss"] for line in (run / "loss.jsonl").read_text().splitlines()]
    assert len(curve[one]) == len(curve[two]) == 6
    assert curve[one] == pytest.approx(curve[two], rel=1e-3), (curve[one], curve[two])


@pytest.mark.slow
def test_time_budget_stops_the_run_with_the_lr_annealed(tiny_synthetic, tmp_path):
    out = tmp_path / "run"
    args = tiny_train_overrides(tiny_synthetic, out, tmp_path / "cache") + [
        "train.epochs=1000", "train.max_minutes=0.1", "train.lr=0.01", "train.min_lr_ratio=0.01", "val.enabled=false"
    ]
    result = run_train(args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train.max_minutes=0.1 reached" in result.stdout
    latest = sorted((out / "checkpoints").glob("step-*"))[-1]
    last_lr = torch.load(latest / "scheduler.pt", weights_only=True)["_last_lr"][0]
    # Far from the planned 1000 epochs, yet the cosine followed the clock down to its floor.
    assert last_lr < 0.01 * 0.05, last_lr
    assert json.loads((latest / "trainer_state.json").read_text())["spent_seconds"] >= 6.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.epochz=1"], "did you mean 'train.epochs'"),
        (["train.epochs=many"], "'train.epochs' must be an integer"),
        (["val.export=lats"], "did you mean 'last'"),
    ],
)
def test_bad_configs_exit_2_with_a_message(tiny_synthetic, tmp_path, run_here, overrides, message):
    result = run_here(train, tiny_train_overrides(tiny_synthetic, tmp_path / "run", tmp_path / "cache") + overrides,
                      cache=tmp_path / "cache")
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.name=embeder"], "did you mean 'embedder'"),
        (["losses=[{name: arcfase}]"], "did you mean 'arcface'"),
        (["data.datasets=[NoSuchDataset]"], "NoSuchDataset"),
    ],
)
def test_configs_found_bad_once_the_run_starts_exit_2_with_a_message(tiny_synthetic, tmp_path, overrides, message):
    result = run_train(tiny_train_overrides(tiny_synthetic, tmp_path / "run", tmp_path / "cache") + overrides)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr


def test_empty_training_set_exits_2(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (32, 32)).save(root / "images" / "q.jpg")
    (root / "metadata.csv").write_text(
        "image_id,identity,path,date,orientation,species,split,dataset\n1,,images/q.jpg,,,lynx,query,X\n"
    )
    result = run_train([f"output_dir={tmp_path / 'run'}", "data.format=animalclef2025", f"data.root={root}"])
    assert result.returncode == 2 and "training set is empty" in result.stderr


@pytest.mark.slow
def test_resume_with_other_classes_exits_2(tiny_synthetic, tiny_run, tmp_path):
    out = shutil.copytree(tiny_run[0], tmp_path / "run")
    args = tiny_train_overrides(tiny_synthetic, out, tmp_path / "cache") + TINY_RUN_OVERRIDES
    result = run_train(args + ["data.datasets=[SynthLynx]", "--resume"])
    assert result.returncode == 2 and "do not match" in result.stderr, result.stderr[-2000:]


def test_overrides_before_and_after_config_are_applied():
    result = run_train(["train.epochs=3", "--config", "configs/train/triplet_cpu.yaml", "train.lr=0.5", "--print-config"])
    assert result.returncode == 0, result.stderr
    assert "epochs: 3" in result.stdout and "lr: 0.5" in result.stdout and "name: triplet" in result.stdout


def test_a_time_budget_shows_in_the_progress_bar_instead_of_the_planned_steps(monkeypatch):
    from engine.training import schedule
    from engine.training.schedule import advance, progress_bar

    clock = {"now": 0.0}
    monkeypatch.setattr(schedule, "monotonic", lambda: clock["now"])
    # train.epochs=1000 train.max_minutes=8, resumed 2 minutes in at step 442 of 117000 planned.
    budget = schedule.TimeBudget(8, spent_before=120.0)
    bar = progress_bar(budget, total_steps=117000, step=442, disable=False)
    assert (bar.total, bar.n) == (480, 120)
    clock["now"] = 60.0
    advance(bar, budget, 443, loss="1.000")
    assert bar.n == 180 and "180/480 s" in str(bar) and "step=443" in str(bar) and "117000" not in str(bar)
    bar.close()
    steps = progress_bar(schedule.TimeBudget(0), total_steps=117000, step=442, disable=False)
    advance(steps, schedule.TimeBudget(0), 443, loss="1.000")
    assert (steps.total, steps.n) == (117000, 443) and "step=" not in str(steps)
    steps.close()


def test_the_ema_ramps_up_so_a_short_run_averages_trained_weights():
    from engine.training.epochs import make_ema

    module = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(module.weight)
    ema = make_ema(module, 0.999)
    with torch.no_grad():
        module.weight.fill_(1.0)
    ema.update(module, step=10)
    # decay at step 10 is 1 - 10 ** -2/3 (about 0.785), not 0.999: the average moved a fifth of the way.
    assert ema.module.weight.item() == pytest.approx(10 ** (-2 / 3), rel=1e-4)

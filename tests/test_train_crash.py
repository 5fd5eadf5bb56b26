"""Training killed while it writes a checkpoint, then resumed: the same final weights as a run never
interrupted (a time-budgeted run included), best/ of the resumed timeline, and the refusals train.py
gives instead of a traceback (someone else's folder, a changed model)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_RUN_OVERRIDES, run_train, tiny_train_overrides
from safetensors.torch import load_file
from test_checkpoint import FILES, Killed, kill_checkpoint

from core.config import load_config
from core.schema import TrainConfig
from engine.training import schedule
from engine.training.checkpoint import find_checkpoint, read_state
from engine.training.loop import Trainer
from engine.training.run_folder import RUN_MARKER
from engine.training.schedule import warmup_cosine_factor

# A model small enough for a dozen runs in a test: a step takes a few milliseconds. float32, as the
# other in-process users of Accelerate's process-wide state on a CPU.
TINY = ["model.args.backbone=test_resnet", "data.image_size=32", "model.args.embed_dim=16",
        "train.deterministic=true", "train.keep_last=3", "train.mixed_precision=no"]


@pytest.fixture
def config(tiny_synthetic, tmp_path):
    def make(out: Path, *overrides: str) -> TrainConfig:
        args = tiny_train_overrides(tiny_synthetic, out, tmp_path / "cache") + TINY + list(overrides)
        return load_config(TrainConfig, REPO / "configs/train/default.yaml", args)

    return make


def killed(monkeypatch, cfg, step, point, resume=None) -> None:
    with monkeypatch.context() as patch:
        kill_checkpoint(patch, point, step)
        with pytest.raises(Killed):
            Trainer(cfg, resume=resume).fit()


def last_weights(out: Path) -> dict:
    return load_file(str(find_checkpoint(out, "latest") / "model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.slow
def test_a_kill_at_every_point_of_a_checkpoint_write_resumes_to_the_same_weights(config, tmp_path, monkeypatch):
    common = ["train.max_steps=8", "train.checkpoint_every=2", "val.enabled=false"]
    straight = tmp_path / "straight"
    Trainer(config(straight, *common)).fit()

    # One run killed at each point of checkpoint 4's write in turn, each resumed from what it left.
    out = tmp_path / "killed"
    cfg = config(out, *common)
    resume = None
    for point in list(range(len(FILES) + 1)) + ["prune"]:
        killed(monkeypatch, cfg, 4, point, resume=resume)
        resume = "latest"
        expected = "step-000004" if point == "prune" else "step-000002"
        assert find_checkpoint(out, "latest", warn=pytest.fail).name == expected, point
    result = Trainer(cfg, resume="latest").fit()
    assert result["steps"] == 8
    assert_same_weights(last_weights(straight), last_weights(out))


class FakeClock:
    """Wall-clock time that passes only in optimizer steps, 5 seconds each: a budget then ends at
    the same step in every run."""

    def __init__(self, monkeypatch):
        self.now = 1000.0
        monkeypatch.setattr(schedule, "monotonic", lambda: self.now)
        original = Trainer._micro_step

        def timed_step(trainer, *args):
            done = original(trainer, *args)
            self.now += 5.0 if done else 0.0
            return done

        monkeypatch.setattr(Trainer, "_micro_step", timed_step)


@pytest.mark.slow
def test_a_budgeted_run_resumes_its_schedule_and_stops_at_the_same_budget(config, tmp_path, monkeypatch):
    FakeClock(monkeypatch)
    common = ["train.epochs=1000", "train.max_minutes=0.5", "train.checkpoint_every=2", "val.enabled=false",
              "train.lr=0.01", "train.min_lr_ratio=0.01"]
    straight = tmp_path / "straight"
    assert Trainer(config(straight, *common)).fit()["steps"] == 6  # 6 steps of 5 s fill the 30 s budget

    out = tmp_path / "killed"
    cfg = config(out, *common)
    killed(monkeypatch, cfg, 4, 2)
    resumed_from = find_checkpoint(out, "latest")
    assert read_state(resumed_from)["spent_seconds"] == 10.0
    assert Trainer(cfg, resume="latest").fit()["steps"] == 6
    assert_same_weights(last_weights(straight), last_weights(out))
    for run in (straight, out):
        final = find_checkpoint(run, "latest")
        assert read_state(final)["spent_seconds"] == 30.0
        # The cosine followed the clock, far from the planned 1000 epochs: the last step's lr is the
        # one for the budget spent when it began (25 of 30 s).
        last_lr = torch.load(final / "scheduler.pt", weights_only=True)["_last_lr"][0]
        assert last_lr == pytest.approx(0.01 * warmup_cosine_factor(6, warmup_steps=2, total_steps=2000,
                                                                    min_ratio=0.01, progress_floor=25 / 30))


@pytest.mark.slow
def test_best_after_a_resume_belongs_to_the_resumed_checkpoint(config, tmp_path, monkeypatch):
    # Checkpoints at epoch ends (2 steps each), each after its epoch's validation.
    common = ["train.max_steps=6", "train.checkpoint_every=0", "val.fraction=0.4", "val.export=best"]
    straight = tmp_path / "straight"
    Trainer(config(straight, *common)).fit()

    out = tmp_path / "killed"
    cfg = config(out, *common)
    killed(monkeypatch, cfg, 4, 1)  # step 4 validated and improved best/, its checkpoint never appeared
    assert json.loads((out / "best" / "best.json").read_text())["step"] == 4, "step 4 should improve on step 2"
    trainer = Trainer(cfg, resume="latest")
    resumed_from = find_checkpoint(out, "latest")
    assert resumed_from.name == "step-000002"
    assert json.loads((out / "best" / "best.json").read_text())["step"] == read_state(resumed_from)["best_step"] == 2
    assert (out / "best" / "model.safetensors").read_bytes() == (resumed_from / "best.safetensors").read_bytes()

    trainer.fit()
    assert json.loads((out / "best" / "best.json").read_text()) == json.loads((straight / "best" / "best.json").read_text())
    assert_same_weights(load_file(str(straight / "export" / "model.safetensors")),
                        load_file(str(out / "export" / "model.safetensors")))


def test_someone_elses_folder_is_refused_and_nothing_deleted(tiny_synthetic, tmp_path):
    out = tmp_path / "theirs"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "notes.txt").write_text("not a run")
    (out / "export").mkdir()
    result = run_train(tiny_train_overrides(tiny_synthetic, out, tmp_path / "cache") + TINY)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: output_dir") and f"no {RUN_MARKER}" in lines[-1]
    assert "Traceback" not in result.stderr
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["checkpoints", "checkpoints/notes.txt", "export"]


@pytest.mark.slow
def test_resume_with_a_changed_model_exits_2_naming_the_difference(tiny_synthetic, tiny_run, tmp_path):
    out = shutil.copytree(tiny_run[0], tmp_path / "run")
    args = tiny_train_overrides(tiny_synthetic, out, tmp_path / "cache") + TINY_RUN_OVERRIDES + [
        "train.epochs=3", "model.args.embed_dim=8", "--resume"]
    result = run_train(args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "was written by a different model (model.args.embed_dim: 64 in the checkpoint, 8 now)" in error[0]

"""Checkpoints on disk: complete or invisible, a kill at any point of a write, resume refusals, best/,
and the run folder's ownership."""
from __future__ import annotations

import json

import pytest
import torch

from core.errors import ConfigError, UserError
from engine.training import checkpoint, run_folder
from engine.training.checkpoint import find_checkpoint, read_state
from engine.training.run_folder import RUN_MARKER
from engine.training.schedule import build_scheduler

CONFIG = {"model": {"name": "embedder", "args": {"backbone": "test_resnet", "embed_dim": 4, "pretrained": False}},
          "losses": [{"name": "arcface", "weight": 1.0, "args": {}}]}
FILES = ("rng-rank0.pt", "model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json")


class Killed(BaseException):
    """A kill -9 at this point: no code after it runs (an Exception handler would not catch it)."""


class OneProcess:
    """The part of an Accelerator that checkpoints use, without its process-wide state."""

    is_main_process, process_index, device, scaler = True, 0, torch.device("cpu"), None

    def wait_for_everyone(self) -> None:
        pass


class Run:
    """A model, optimizer and schedule small enough to checkpoint in milliseconds."""

    def __init__(self, seed: int = 0):
        torch.manual_seed(seed)
        self.acc = OneProcess()
        self.module = torch.nn.Linear(3, 2)
        self.optimizer = torch.optim.AdamW(self.module.parameters(), lr=0.1)
        self.scheduler = build_scheduler(self.optimizer, warmup_steps=0, total_steps=20, min_ratio=0.01)

    def step(self) -> None:
        self.module(torch.randn(4, 3)).sum().backward()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()

    def save(self, root, step, keep_last=2, best=None):
        return checkpoint.save_checkpoint(self.acc, root, step=step, module=self.module, optimizer=self.optimizer,
                               scheduler=self.scheduler, ema=None, state={"step": step, "config": CONFIG},
                               keep_last=keep_last, best_weights=best)

    def load(self, path, config=CONFIG):
        return checkpoint.load_checkpoint(self.acc, path, module=self.module, optimizer=self.optimizer,
                               scheduler=self.scheduler, ema=None, config=config)


def kill_checkpoint(monkeypatch, point, step=None):
    """Kill the write of the next checkpoint (of `step`, when given) after its `point`-th file (0:
    before the first), or with point='prune' after the rename and before older ones are pruned."""
    written = {"files": 0}
    original_write, original_prune = checkpoint._write_file, checkpoint._prune

    def write(path, fn):  # path is in atomic_folder's staging folder, .step-000004.tmp-*
        if step is not None and not path.parent.name.startswith(f".step-{step:06d}."):
            return original_write(path, fn)
        if point == 0:
            raise Killed
        identity = original_write(path, fn)
        written["files"] += 1
        if written["files"] == point:
            raise Killed
        return identity

    def prune(root, at, keep_last):
        if point == "prune" and step in (None, at):
            raise Killed
        original_prune(root, at, keep_last)

    monkeypatch.setattr(checkpoint, "_write_file", write)
    monkeypatch.setattr(checkpoint, "_prune", prune)


@pytest.mark.parametrize("point", list(range(len(FILES) + 1)) + ["prune"])
def test_a_kill_at_any_point_of_a_write_leaves_the_previous_checkpoint_or_the_new_one(tmp_path, monkeypatch, point):
    root = tmp_path / "checkpoints"
    run = Run()
    run.step()
    run.save(root, 1)
    expected = {k: v.clone() for k, v in run.module.state_dict().items()}
    rng = torch.get_rng_state()
    run.step()
    kill_checkpoint(monkeypatch, point)
    with pytest.raises(Killed):
        run.save(root, 2)
    monkeypatch.undo()

    warnings = []
    latest = find_checkpoint(tmp_path, "latest", warn=warnings.append)
    assert not warnings and not [p for p in root.iterdir() if p.name.startswith(".")]
    if point == "prune":  # renamed into place: the new checkpoint is complete and resumable
        assert latest.name == "step-000002" and (root / "step-000001").is_dir()
        return
    assert latest.name == "step-000001" and sorted(p.name for p in root.iterdir()) == ["step-000001"]
    fresh = Run(seed=1)
    assert fresh.load(latest)["step"] == 1
    assert all(torch.equal(fresh.module.state_dict()[k], expected[k]) for k in expected)
    assert fresh.scheduler.last_epoch == 1 and fresh.optimizer.state_dict()["state"][0]["step"] == 1
    assert torch.equal(torch.get_rng_state(), rng)


def test_every_file_is_in_the_checkpoint_before_it_appears(tmp_path):
    run = Run()
    path = run.save(tmp_path / "checkpoints", 3)
    assert sorted(p.name for p in path.iterdir()) == sorted(FILES)
    assert set(read_state(path)["files"]) == set(FILES) - {"trainer_state.json"}
    assert checkpoint.checkpoint_problem(path) is None


@pytest.mark.parametrize("damage, problem", [
    (lambda p: (p / "scheduler.pt").unlink(), "scheduler.pt is missing"),
    (lambda p: (p / "optimizer.pt").write_bytes(b"x"), "optimizer.pt does not match"),
    (lambda p: (p / "trainer_state.json").unlink(), "no trainer_state.json"),
    (lambda p: (p / "trainer_state.json").write_text("{"), "trainer_state.json is unreadable"),
    (lambda p: (p / "trainer_state.json").write_text('{"step": 2}'), "does not list the checkpoint's files"),
])
def test_an_incomplete_checkpoint_is_skipped_by_latest_and_refused_by_name(tmp_path, damage, problem):
    run = Run()
    run.save(tmp_path / "checkpoints", 1)
    damaged = run.save(tmp_path / "checkpoints", 2)
    damage(damaged)
    warnings = []
    assert find_checkpoint(tmp_path, "latest", warn=warnings.append).name == "step-000001"
    assert len(warnings) == 1 and problem in warnings[0] and "\n" not in warnings[0]
    with pytest.raises(UserError, match=problem) as err:
        find_checkpoint(tmp_path, str(damaged))
    assert "\n" not in str(err.value)


def test_no_complete_checkpoint_is_one_line(tmp_path):
    with pytest.raises(UserError, match="no complete checkpoint under"):
        find_checkpoint(tmp_path, "latest")
    with pytest.raises(UserError, match="not a complete checkpoint: no such folder"):
        find_checkpoint(tmp_path, str(tmp_path / "nowhere"))


def test_leftovers_of_a_killed_write_are_ignored_then_removed(tmp_path):
    root = tmp_path / "checkpoints"
    run = Run()
    run.save(root, 1)
    # What a kill -9 leaves: atomic_folder's staging folder, half written.
    leftover = root / ".step-000002.tmp-abc123"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")
    assert find_checkpoint(tmp_path, "latest").name == "step-000001"
    run.save(root, 2)
    assert sorted(p.name for p in root.iterdir()) == ["step-000001", "step-000002"]


def test_pruning_keeps_the_last_and_drops_an_abandoned_timeline(tmp_path):
    root = tmp_path / "checkpoints"
    run = Run()
    for step in (1, 2, 3, 4):
        run.save(root, step, keep_last=3)
    assert [p.name for p in checkpoint.checkpoint_dirs(root)] == ["step-000002", "step-000003", "step-000004"]
    # Resumed from step 2 and checkpointed again at 3: step 4 belongs to the steps the resume discarded.
    run.save(root, 3, keep_last=3)
    assert [p.name for p in checkpoint.checkpoint_dirs(root)] == ["step-000002", "step-000003"]


def test_a_checkpoint_of_another_model_is_refused_with_what_differs(tmp_path):
    path = Run().save(tmp_path / "checkpoints", 1)
    changed = json.loads(json.dumps(CONFIG))
    changed["model"]["args"]["embed_dim"] = 8
    changed["model"]["args"]["pretrained"] = True  # initialisation only: not a difference
    with pytest.raises(ConfigError) as err:
        Run().load(path, config=changed)
    message = str(err.value)
    assert "written by a different model (model.args.embed_dim: 4 in the checkpoint, 8 now)" in message
    assert "pretrained" not in message and "\n" not in message


def test_weights_that_do_not_fit_are_one_line_naming_the_losses(tmp_path):
    path = Run().save(tmp_path / "checkpoints", 1)
    other = Run()
    other.module = torch.nn.Linear(3, 5)  # same model block, yet another shape: a loss with other parameters
    changed = json.loads(json.dumps(CONFIG))
    changed["losses"][0]["name"] = "subcenter_arcface"
    with pytest.raises(ConfigError, match=r"does not fit the current model and losses: the losses differ "
                                          r"\(losses.0.name: 'arcface' in the checkpoint, 'subcenter_arcface' now\)"):
        other.load(path, config=changed)
    with pytest.raises(ConfigError, match="does not fit the current model and losses: .*size mismatch for weight") as err:
        other.load(path)
    assert "\n" not in str(err.value)


def test_best_rolls_back_with_the_checkpoint(tmp_path):
    run = Run()
    checkpoint.write_best(tmp_path, run.module, step=1, metrics={"rank1": 0.5})
    path = run.save(tmp_path / "checkpoints", 1, best=tmp_path / "best" / "model.safetensors")
    best_then = (tmp_path / "best" / "model.safetensors").read_bytes()
    run.step()
    checkpoint.write_best(tmp_path, run.module, step=2, metrics={"rank1": 0.9})  # then killed before checkpoint 2

    assert checkpoint.restore_best(tmp_path, path, {"best_step": 1, "best": {"rank1": 0.5}})
    assert json.loads((tmp_path / "best" / "best.json").read_text()) == {"step": 1, "metrics": {"rank1": 0.5}}
    assert (tmp_path / "best" / "model.safetensors").read_bytes() == best_then
    without_best = run.save(tmp_path / "checkpoints", 2)
    assert not checkpoint.restore_best(tmp_path, without_best, {}) and not (tmp_path / "best").exists()


def test_someone_elses_folder_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "thesis.tex").write_text("years of work")
    for fresh in (True, False):
        with pytest.raises(ConfigError, match=f"holds checkpoints but is not a train.py run folder .no {RUN_MARKER}"):
            run_folder.claim_run_dir(out, fresh=fresh)
    assert (out / "checkpoints" / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in out.rglob("*")) == ["checkpoints", "thesis.tex"]
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        run_folder.check_run_dir(tmp_path / "file")


def test_a_run_folder_is_claimed_then_reused(tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "README.txt").write_text("mine")  # none of the names a run writes: the run may live here
    run_folder.claim_run_dir(out, fresh=True)
    assert (out / RUN_MARKER).is_file()
    (out / "checkpoints" / "step-000001").mkdir(parents=True)
    (out / "best").mkdir()
    (out / "loss.jsonl").write_text("{}\n")
    (out / "export").mkdir()
    run_folder.claim_run_dir(out, fresh=False)  # a resume keeps everything
    assert (out / "checkpoints" / "step-000001").is_dir() and (out / "best").is_dir()
    with pytest.raises(ConfigError, match="holds an earlier run's checkpoints, best, loss.jsonl: continue it with --resume"):
        run_folder.claim_run_dir(out, fresh=True)  # a forgotten --resume deletes nothing
    assert (out / "checkpoints" / "step-000001").is_dir() and (out / "best").is_dir()
    said = []
    run_folder.claim_run_dir(out, fresh=True, overwrite=True, say=said.append)
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", "export", RUN_MARKER]
    assert "checkpoints, best, loss.jsonl are removed" in said[0]

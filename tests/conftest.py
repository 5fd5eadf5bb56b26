"""Shared fixtures: a tiny synthetic dataset generated once per test session."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import engine.components  # noqa: F401  (every built-in component registered, as train.py and eval.py do)
from data.synthetic import generate
from zoo import MODELS
from zoo.registry import model_inputs

REPO = Path(__file__).resolve().parents[1]
# A timm test network (0.4 M parameters, 5x faster than resnet18 per step): tests train it unless the backbone
# itself is what they test.
TINY_BACKBONE = "test_resnet"
# Models that read images (the fusion model reads other models' embeddings: tests/test_fusion.py).
IMAGE_MODELS = [name for name in MODELS.names() if model_inputs(name) == "images"]
# The benchmarks import their shared helpers (benchmarking.py) from their own folder, which Python puts on
# sys.path when it runs one of them; so do the tests that import a benchmark as a module
# (`import bench_rerank`).
BENCH = REPO / "scripts" / "bench"
sys.path.append(str(BENCH))


def script_env() -> dict:
    """The environment of a script run in its own process: this checkout first on PYTHONPATH. Scripts
    import reidzoo as installed (they leave sys.path alone), so without it they would run whichever copy
    is installed, not the code this test process imports (pytest's `pythonpath = .`)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def scripts_run_this_checkout(monkeypatch):
    """For a script called in this process that starts others (a benchmark's children, the plain loop):
    they run this checkout's code, as script_env's do."""
    monkeypatch.setenv("PYTHONPATH", script_env()["PYTHONPATH"])


@pytest.fixture
def run_here(capsys, monkeypatch):
    """A program's main() in this process, for command lines that stop while reading the config (no
    5-second interpreter start): (exit status, stdout, stderr) as subprocess.run would give them."""
    def run(program, args, cache: Path) -> subprocess.CompletedProcess:
        monkeypatch.setenv("REIDZOO_CACHE", str(cache))
        capsys.readouterr()
        try:
            program.main([str(a) for a in args])
            code = 0
        except SystemExit as exited:
            code = exited.code
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)
    return run


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory) -> Path:
    """16 individuals x 6 photos in AnimalCLEF format (about 2 s to generate)."""
    return generate(tmp_path_factory.mktemp("synthetic") / "data", seed=1, individuals=16,
                    images_per_individual=6, progress=False)


def tiny_train_overrides(root: Path, out: Path, cache: Path) -> list:
    """A train.py run that takes seconds on 2 CPU cores."""
    return [
        f"output_dir={out}",
        "data.format=synthetic",
        f"data.root={root}",
        "data.synthetic.seed=1",
        "data.synthetic.individuals=16",
        "data.synthetic.images_per_individual=6",
        f"data.cache_dir={cache}",
        "data.image_size=48",
        "data.num_workers=0",
        f"model.args.backbone={TINY_BACKBONE}",
        "model.args.embed_dim=64",
        "train.batch_size=16",
        "train.warmup_steps=2",
        "train.max_minutes=0",  # stop by steps or epochs, not by the clock, so runs are reproducible
    ]


def run_train(args, timeout=300, launcher=None, env=None) -> subprocess.CompletedProcess:
    """train.py in a fresh process (or under `launcher`), as a user runs it."""
    cmd = (launcher or [sys.executable]) + [str(REPO / "train.py")] + [str(a) for a in args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


TINY_RUN_OVERRIDES = ["train.epochs=2", "val.fraction=0.4", "val.export=last"]


@pytest.fixture(scope="session")
def tiny_run(tiny_synthetic, tmp_path_factory) -> tuple:
    """One finished train.py run of the tiny model (tiny_train_overrides + TINY_RUN_OVERRIDES): its folder
    and the completed process. Shared by every test that needs a trained run or its export, so the model
    is trained once per session; a test that writes into a run copies the folder first."""
    base = tmp_path_factory.mktemp("tiny_run")
    out = base / "run"
    result = run_train(tiny_train_overrides(tiny_synthetic, out, base / "cache") + TINY_RUN_OVERRIDES)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result

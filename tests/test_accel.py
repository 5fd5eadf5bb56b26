"""Mixed-precision choice: bf16 on CPUs that have the instructions, never emulated."""
from __future__ import annotations

import pytest
import torch

from engine import accel


@pytest.mark.parametrize("avx512_bf16, amx, cpu_bf16, expected", [
    (True, False, True, "bf16"),
    (False, True, True, "bf16"),
    (False, False, True, "no"),
    (True, True, False, "no"),
])
def test_auto_on_cpu_follows_the_instruction_set(monkeypatch, avx512_bf16, amx, cpu_bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert accel.resolve_mixed_precision("auto", cpu_bf16) == expected


def test_a_torch_without_the_probes_means_no_bf16(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert not accel.cpu_has_native_bf16()


def test_an_explicit_choice_is_kept(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert accel.resolve_mixed_precision("no") == "no"
    assert accel.resolve_mixed_precision("bf16", cpu_bf16=False) == "bf16"


EXIT_SCRIPT = """
import atexit, sys
import torch.distributed as dist
sys.path.insert(0, {repo!r})
atexit.register(lambda: print("group at exit:", dist.is_initialized(), flush=True))  # runs after later handlers
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:{port}", rank=0, world_size=1)
from engine.accel import make_accelerator
make_accelerator("no")
make_accelerator("no")
"""


def test_the_process_group_is_destroyed_before_the_interpreter_exits(tmp_path):
    # left to interpreter shutdown, gloo's threads can abort a finished `accelerate launch` run
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "run.py"
    script.write_text(EXIT_SCRIPT.format(repo=repo, port=port))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "group at exit: False" in done.stdout

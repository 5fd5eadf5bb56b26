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

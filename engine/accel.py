"""Accelerator construction that behaves the same on a laptop CPU and a multi-GPU node."""
from __future__ import annotations

import atexit
import time
from typing import Tuple

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bfloat16 instructions (AVX512-BF16 or AMX), where bf16 autocast is fast.

    Elsewhere bf16 is emulated and slower than float32. The probes are private torch helpers, so
    a torch without them counts as "no".
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def resolve_mixed_precision(value: str, cpu_bf16: bool = True) -> str:
    """'auto': bf16 where the GPU supports it, else fp16; on CPU bf16 where the instructions exist
    (there it makes more training steps in a time budget than float32: docs/results.md) and
    `cpu_bf16` allows it, else none."""
    if value != "auto":
        return value
    if not torch.cuda.is_available():
        return "bf16" if cpu_bf16 and cpu_has_native_bf16() else "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def eval_precision() -> str:
    """The precision eval.py extracts in: on CPU float32, which keeps near-equal similarities in order
    (extraction is a small share of an evaluation); on GPUs bf16 or fp16."""
    return resolve_mixed_precision("auto", cpu_bf16=False)


def say(accelerator, *parts) -> None:
    """Print once, on the main process (every process when there is no accelerator)."""
    if accelerator is None or accelerator.is_main_process:
        print(*parts, flush=True)


def rank_and_world(accelerator) -> Tuple[int, int]:
    """(this process's index, number of processes); (0, 1) without an accelerator."""
    if accelerator is None:
        return 0, 1
    return accelerator.process_index, accelerator.num_processes


_WORKER_DRAIN_S = 0.05  # gloo's workers finish a collective's cleanup within microseconds


def leave_process_group() -> None:
    """Destroy this process's process group, if it has one, while the interpreter is fully alive.

    Gloo's worker threads drop their last reference to a finished collective's tensors after they
    have woken the caller, and need the GIL to do it. If the interpreter is already shutting down
    they abort the process ("terminate called without an active exception"), and
    `accelerate launch` reports a run that finished its work as failed. Giving up the GIL for a
    moment lets any such thread finish first; no peer is waited for, so a crashing process still
    exits at once.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        time.sleep(_WORKER_DRAIN_S)
        torch.distributed.destroy_process_group()


def make_accelerator(mixed_precision: str = "auto", cpu_bf16: bool = True) -> Accelerator:
    # Without CUDA, `accelerate launch --multi_gpu` starts independent processes unless the
    # accelerator is built for CPU: then it joins them over gloo and averages gradients.
    cpu = not torch.cuda.is_available()
    # Loss modules and frozen stages leave some parameters without gradients in some steps.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=resolve_mixed_precision(mixed_precision, cpu_bf16),
        kwargs_handlers=[ddp],
    )
    atexit.unregister(leave_process_group)  # once, however many accelerators a process makes
    atexit.register(leave_process_group)
    return accelerator

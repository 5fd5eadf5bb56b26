"""Accelerator construction that behaves the same on a laptop CPU and a multi-GPU node."""
from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs


def resolve_mixed_precision(value: str) -> str:
    """'auto' picks bf16 where the GPU supports it, fp16 on older GPUs and no precision change on CPU."""
    if value != "auto":
        return value
    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def make_accelerator(mixed_precision: str = "auto") -> Accelerator:
    # Without CUDA, `accelerate launch --multi_gpu` starts independent processes unless the
    # accelerator is built for CPU: then it joins them over gloo and averages gradients.
    cpu = not torch.cuda.is_available()
    # Loss modules and frozen stages leave some parameters without gradients in some steps.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(
        cpu=cpu,
        mixed_precision=resolve_mixed_precision(mixed_precision),
        kwargs_handlers=[ddp],
    )

"""One pass of a model over a dataset: embeddings (and classifier logits), TTA views averaged.

Training-time validation and eval.py both call this, so it accepts any model with
`embed(images) -> (B, D)` and any dataset whose items hold "image" as (C, H, W), or (V, C, H, W)
when test-time augmentation gives V views of each image. Views are averaged in embedding space
and the mean is L2-normalised again (the mean of unit vectors is shorter than one).

Under Accelerate with several processes, process r takes items r, r + P, r + 2P, ... (the list
padded by wrapping around to a multiple of P, so every process runs the same number of batches),
and one gather at the end puts the rows back in dataset order.
"""
from __future__ import annotations

import contextlib
import math
from functools import partial
from typing import Callable, Dict, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

EMBEDDING = "embedding"
LOGITS = "logits"
HEADS = (EMBEDDING, LOGITS)


def _heads_of(net: torch.nn.Module, images: torch.Tensor, heads: Sequence[str]) -> Dict[str, torch.Tensor]:
    """Per-view outputs; embeddings L2-normalised per view (as `embed` gives them) before averaging."""
    if LOGITS not in heads:
        return {EMBEDDING: net.embed(images)}
    out = net(images)
    if not isinstance(out, Mapping) or out.get(LOGITS) is None:
        raise ValueError(f"{type(net).__name__} returns no 'logits': it is not a classifier")
    result = {LOGITS: out[LOGITS]}
    if EMBEDDING in heads:
        # One forward for both: zoo models' `embed` is the normalised "embedding" of `forward`.
        raw = out.get(EMBEDDING)
        result[EMBEDDING] = net.embed(images) if raw is None else F.normalize(raw.float(), dim=1)
    return result


def _device_of(net: torch.nn.Module, accelerator) -> torch.device:
    if accelerator is not None:
        return accelerator.device
    parameter = next(net.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _share(n: int, rank: int, world: int) -> list:
    """Items of process `rank`: every world-th position of the list wrapped to a multiple of world."""
    per_process = math.ceil(n / world)
    return [(rank + j * world) % n for j in range(per_process)]


def _reassemble(gathered: torch.Tensor, n: int, world: int) -> torch.Tensor:
    """Rows gathered process by process -> dataset order (position j * world + rank)."""
    per_process = gathered.shape[0] // world
    return gathered.view(world, per_process, -1).transpose(0, 1).reshape(world * per_process, -1)[:n]


def autocast_for(precision: str, device_type: str):
    """The autocast context of a mixed-precision setting ("no", "bf16", "fp16") on a device type."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fetched(loader: DataLoader) -> Iterator:
    """The loader's batches. Without worker processes the main thread builds them, and their small
    tensor ops (stacking views, collating) gain nothing from intra-op threads while each parallel
    region can stall on a busy CPU for far longer than the work itself (docs/results.md): so batches
    are built with one thread and the model gets all of them."""
    iterator = iter(loader)
    while True:
        if loader.num_workers == 0:
            with _one_thread():
                batch = next(iterator, None)
        else:
            batch = next(iterator, None)
        if batch is None:
            return
        yield batch


def extract(
    model: torch.nn.Module,
    dataset: Dataset,
    *,
    heads: Sequence[str] = (EMBEDDING,),
    batch_size: int = 64,
    accelerator=None,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "embedding",
    precision: Optional[str] = None,
) -> Dict[str, np.ndarray]:
    """{head: (N, ...) float32 array in dataset order} for heads "embedding" and/or "logits".

    Embeddings come out L2-normalised; logits are the mean over TTA views. The model is put in
    eval mode and its previous mode restored afterwards (the trainer calls this mid-training).
    `precision` ("no", "bf16", "fp16") overrides the accelerator's mixed precision.
    """
    unknown = [h for h in heads if h not in HEADS]
    if unknown or not heads:
        raise ValueError(f"heads must be a non-empty subset of {HEADS}, got {list(heads)}")
    net = accelerator.unwrap_model(model) if accelerator is not None else model
    device = _device_of(net, accelerator)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    n = len(dataset)
    if n == 0:
        raise ValueError("cannot extract from an empty dataset")
    items = Subset(dataset, _share(n, rank, world)) if world > 1 else dataset
    loader = DataLoader(items, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    if precision is not None:
        autocast: Callable = partial(autocast_for, precision, device.type)
    else:
        autocast = accelerator.autocast if accelerator is not None else contextlib.nullcontext
    chunks: Dict[str, list] = {h: [] for h in heads}
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), autocast():
            for batch in tqdm(_fetched(loader), total=len(loader), desc=desc, unit="batch", leave=False,
                              disable=not progress or rank != 0):
                images = (batch["image"] if isinstance(batch, dict) else batch[0]).to(device, non_blocking=True)
                views = images.shape[1] if images.dim() == 5 else 1
                outputs = _heads_of(net, images.flatten(0, 1) if images.dim() == 5 else images, heads)
                for head, value in outputs.items():
                    value = value.float().view(-1, views, value.shape[-1]).mean(dim=1)
                    chunks[head].append(F.normalize(value, dim=1) if head == EMBEDDING else value)
    finally:
        net.train(was_training)
    result = {}
    for head, parts in chunks.items():
        local = torch.cat(parts)
        if world > 1:
            local = _reassemble(accelerator.gather(local.contiguous()), n, world)
        result[head] = local.cpu().numpy().astype(np.float32, copy=False)
    return result


def extract_embeddings(
    model: torch.nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    accelerator=None,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "embedding",
) -> np.ndarray:
    """(N, D) float32 L2-normalised embeddings in dataset order; TTA views averaged."""
    return extract(model, dataset, heads=(EMBEDDING,), batch_size=batch_size, accelerator=accelerator,
                   num_workers=num_workers, progress=progress, desc=desc)[EMBEDDING]


def nonfinite_rows(array: np.ndarray) -> np.ndarray:
    """Positions of the rows of an (N, ...) output holding a NaN or an infinity."""
    return np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))


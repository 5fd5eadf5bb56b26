"""Exact squared distances between byte descriptors (SIFT's), as one matrix product.

OpenCV's SIFT descriptors are non-negative integers (0-255, kept as bytes), so every squared distance
is an integer below 2^24: exact in float32 whatever the order of the sums. Two products compute them
and give the same integers: float32 (on any device; rounded back to integers where float32 products
are not full precision, as with TF32), and the bytes less 128 as int8 with int32 sums
(`torch._int_mm`, CPU only). Which of the two is faster depends on the CPU (int8 is much faster where
it has VNNI or AMX, and may be missing from a build), so `fastest_products` times them; the caller
keeps the choice (matchers.batched_nn).

A product takes rows (R, D) uint8 and their byte sums (R,), columns (C, D) uint8, their squared norms
(C,) float32 (+inf for padding) and their byte sums (C,), and returns a table (R, C) and row offsets
(R,) float32 whose sum is |column|^2 - 2 row . column (a squared distance less the row's norm). The
table is float32 with +inf in padding columns, or int32 within 2^22 of INT_PADDING there. A row's
offset is the same for all its columns, so nearest neighbours along a row can be found in the table
alone.
"""
from __future__ import annotations

import time
from typing import Callable, Tuple

import numpy as np
import torch

Products = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, torch.device],
                    Tuple[torch.Tensor, np.ndarray]]
INT_PADDING = 1 << 30  # far above any squared distance (< 2^24), with room for the terms added to it

TRIAL_SHAPE = (384, 6144)  # rows x columns of the trial product: a hub of 384 keypoints, 12 partners of 512

_SCALES = (65536.0, 256.0, 1.0)
_BIAS = 128  # bytes less 128 are int8


def as_bytes(descriptors: np.ndarray) -> np.ndarray:
    """SIFT descriptors as uint8: OpenCV's are integers 0-255 in float32 (older caches hold float16)."""
    descriptors = np.asarray(descriptors)
    if descriptors.dtype == np.uint8:
        return descriptors
    return np.rint(descriptors).clip(0, 255).astype(np.uint8)


def norms_and_sums(descriptors: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(M,) float32 squared norms (integers below 2^24) and (M,) int64 byte sums of (M, D) uint8."""
    wide = descriptors.astype(np.int32)
    return np.einsum("md,md->m", wide, wide).astype(np.float32), wide.sum(1, dtype=np.int64)


def exact_float32_products(device: torch.device) -> bool:
    """Whether float32 matrix products here are full float32 (no TF32 or bfloat16 shortcuts)."""
    if device.type == "cuda":
        return not torch.backends.cuda.matmul.allow_tf32
    return torch.get_float32_matmul_precision() == "highest"


def _with_scales(rows: torch.Tensor) -> torch.Tensor:
    """(R, D) -> (R, D + 3): the rows and the byte scales of the columns' squared norms."""
    return torch.cat([rows, rows.new_tensor(_SCALES).expand(len(rows), -1)], 1)


def _with_norm_bytes(columns: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """(C, D) -> (C, D + 3): -2 times the columns and the three bytes of their squared norms (an
    integer below 2^24; +inf, padding, stays +inf in the top byte)."""
    finite = torch.isfinite(norms)
    whole = torch.where(finite, norms, torch.zeros_like(norms))
    top = torch.where(finite, torch.floor(whole / 65536), norms)
    rest = whole - 65536 * torch.floor(whole / 65536)
    middle = torch.floor(rest / 256)
    return torch.cat([-2 * columns, torch.stack([top, middle, rest - 256 * middle], 1)], 1)


def float_products(exact: bool) -> Products:
    """The product in float32: the column's squared norm rides in it as three more dimensions, its
    bytes: [r, 2^16, 2^8, 1] . [-2c, bytes of |c|^2] (each factor has at most 8 significant bits, so
    reduced-precision inputs such as TF32 keep it exact; every sum is an integer below 2^24). Rounded
    when float32 products are not full precision here (`exact` False)."""
    def product(rows: np.ndarray, _row_sums: np.ndarray, columns: np.ndarray, norms: np.ndarray,
                _column_sums: np.ndarray, device: torch.device) -> Tuple[torch.Tensor, np.ndarray]:
        r = torch.from_numpy(rows.astype(np.float32)).to(device)
        c = torch.from_numpy(columns.astype(np.float32)).to(device)
        base = _with_scales(r) @ _with_norm_bytes(c, torch.from_numpy(norms).to(device)).T
        return (base if exact else base.round_()), np.zeros(len(rows), np.float32)
    return product


def int8_products(rows: np.ndarray, row_sums: np.ndarray, columns: np.ndarray, norms: np.ndarray,
                  column_sums: np.ndarray, device: torch.device) -> Tuple[torch.Tensor, np.ndarray]:
    """The product in int8 with int32 sums (exact). With r = r' + 128 and c = c' + 128 over D dimensions,
    |c|^2 - 2 r.c = (|c|^2 - 256 sum(c') - 2 128^2 D) - 2 r'.c' - 256 sum(r'); every term is an integer
    of magnitude below 2^24, so float32 sums of them are exact. The last term is the row offset, left
    out of the table: only the few distances the ratio test reads need it."""
    dims = rows.shape[1]
    r = torch.from_numpy((rows ^ 0x80).view(np.int8))  # the byte less 128
    c = torch.from_numpy((columns ^ 0x80).view(np.int8))
    finite = np.isfinite(norms)
    column_term = (np.where(finite, norms, 0).astype(np.int64) - 2 * _BIAS * (column_sums - _BIAS * dims)
                   - 2 * _BIAS * _BIAS * dims)
    column_term[~finite] = INT_PADDING
    row_term = -2 * _BIAS * (row_sums - _BIAS * dims)
    base = torch._int_mm(r, c.T)  # c.T: column-major, int_mm's fast layout
    # The column term less twice the product in one pass written over the product: cheaper than two
    # in-place passes over the table.
    column_term = torch.from_numpy(column_term.astype(np.int32))[None]
    return torch.add(column_term, base, alpha=-2, out=base), row_term.astype(np.float32)


def fastest_products(exact: bool) -> Products:
    """The faster of the int8 and float32 products on this CPU, in the torch threads now set; float32
    where torch has no int8 product or this build lacks its kernel. Each candidate is timed 5 times,
    in turn (a burst of other work slows both alike), after a warm-up, and the best time of each
    counts. A short trial: the caller runs it once per process and keeps the answer."""
    candidates = {"float32": float_products(exact)}
    if hasattr(torch, "_int_mm"):
        candidates["int8"] = int8_products
    if len(candidates) == 1:
        return candidates["float32"]
    rng = np.random.default_rng(0)
    rows, columns = (rng.integers(0, 160, (n, 128), dtype=np.uint8) for n in TRIAL_SHAPE)
    row_sums, (column_norms, column_sums) = norms_and_sums(rows)[1], norms_and_sums(columns)
    seconds = {}
    for name, product in candidates.items():
        try:
            product(rows, row_sums, columns, column_norms, column_sums, torch.device("cpu"))
        except RuntimeError:  # an int8 kernel this build lacks
            continue
        seconds[name] = np.inf
    for _ in range(5):
        for name in seconds:
            start = time.perf_counter()
            candidates[name](rows, row_sums, columns, column_norms, column_sums, torch.device("cpu"))
            seconds[name] = min(seconds[name], time.perf_counter() - start)
    return candidates[min(seconds, key=seconds.get)]

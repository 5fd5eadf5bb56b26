"""Mutual nearest neighbours passing Lowe's ratio test, one image's byte descriptors against many.

`mutual_ratio_matches` returns exactly what OpenCV's brute-force matcher and the ratio test give one
pair at a time (matchers.sift's `match`): one exact product per chunk of partners
(matchers.byte_distances) gives every squared distance as an integer; distances are their float32
square roots, as OpenCV computes them, and the ratio test compares them in float64 as `match` does.
Ties cannot differ either: a tie between the best two fails the ratio test on both paths, and the
reverse nearest neighbour is the lowest index on both. Confidences agree to float32 rounding (1e-7).

What the kernel keeps between calls lives in one object, `PROCESS_STATE` (see `ProcessState`).
"""
from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from functools import partial
from typing import Dict, Iterator, List, NamedTuple, Sequence, Tuple

import numpy as np
import torch

from matchers.base import no_matches
from matchers.byte_distances import Products, as_bytes, fastest_products, float_products, norms_and_sums

CHUNK_CELLS = 8_000_000  # distance-matrix cells per batched product (32 MB of float32)


class Statistics(NamedTuple):
    """One image's descriptors as the batched product takes them."""

    bytes: np.ndarray  # (M, D) uint8
    norms: np.ndarray  # (M,) float32 squared norms (integers below 2^24)
    sums: np.ndarray  # (M,) int64 sums of the bytes


class ProcessState:
    """The kernel's process-wide state, shared by every SIFT matcher and thread of the process.

    One instance, `PROCESS_STATE`, is made when this module is imported and lives as long as the
    process; tests make their own. It holds:
    - each live descriptor array's statistics (squared norms and byte sums), keyed by the array's id
      with a weak reference to it: an image is matched against many hubs (KeypointStore keeps its
      features in memory between pairs), so they are computed once per array and dropped when the
      array dies. Only what is derived is kept (the array itself would never die). Descriptor arrays
      are never written after extraction.
    - the CPU product chosen by timing (`cpu_products`), per (torch threads, exact) and for the rest
      of the process, with the lock that lets one thread time while the others wait.
    - torch's intra-op thread count while any thread is inside `torch_threads`, and the count to
      restore when the last one leaves.
    """

    def __init__(self):
        self._statistics: Dict[int, Tuple[weakref.ref, np.ndarray, np.ndarray]] = {}
        self._products: Dict[Tuple[int, bool], Products] = {}
        self._trial_lock = threading.Lock()
        self._threads_lock = threading.Lock()
        self._threads_users = 0
        self._threads_before = 1

    def __len__(self) -> int:
        """How many descriptor arrays' statistics are held."""
        return len(self._statistics)

    def statistics(self, descriptors: np.ndarray) -> Statistics:
        """The array's bytes, squared norms and byte sums; computed on its first call while it lives."""
        as_uint8 = as_bytes(descriptors)
        key = id(descriptors)
        entry = self._statistics.get(key)
        if entry is None or entry[0]() is not descriptors:
            entry = (weakref.ref(descriptors, partial(self._forget, key)), *norms_and_sums(as_uint8))
            self._statistics[key] = entry
        return Statistics(as_uint8, entry[1], entry[2])

    def _forget(self, key: int, reference: weakref.ref) -> None:
        """A descriptor array's statistics dropped with it. The check: the array's id may already belong
        to a newer entry when another thread computed statistics for the same array at once."""
        entry = self._statistics.get(key)
        if entry is not None and entry[0] is reference:
            self._statistics.pop(key, None)

    def cpu_products(self, threads: int, exact: bool) -> Products:
        """The faster exact product on this CPU (`fastest_products`), timed on the first call. One thread
        times while the others wait: the pair engine's threads all start matching at once, and trials
        timed side by side on shared cores time each other's work and can pick the slower product."""
        with self._trial_lock:
            key = (threads, exact)
            if key not in self._products:
                self._products[key] = fastest_products(exact)
            return self._products[key]

    @contextmanager
    def torch_threads(self, threads: int) -> Iterator[None]:
        """torch's intra-op threads set to `threads` while inside. It is a process-wide setting and
        several threads of the pair engine may be inside at once: the first in sets it, the last out
        restores it."""
        with self._threads_lock:
            if self._threads_users == 0:
                self._threads_before = torch.get_num_threads()
                torch.set_num_threads(threads)
            self._threads_users += 1
        try:
            yield
        finally:
            with self._threads_lock:
                self._threads_users -= 1
                if self._threads_users == 0:
                    torch.set_num_threads(self._threads_before)


PROCESS_STATE = ProcessState()


def mutual_ratio_matches(hub: np.ndarray, others: Sequence[np.ndarray], ratio: float, *, flipped: bool,
                         device: torch.device, threads: int, exact: bool) -> List[Tuple[np.ndarray, np.ndarray]]:
    """For each of `others` (descriptor arrays), the (M, 2) index pairs and (M,) confidences of the
    mutual nearest neighbours between it and `hub` that pass the ratio test, indices into the hub
    first (flipped=False) or into the other array first (flipped=True); as `match` one pair at a time.

    On a CPU the product is the one `PROCESS_STATE` chose by timing, in `threads` torch threads; on
    another device it is float32 (`exact`: whether float32 products there are full precision)."""
    if device.type != "cpu":
        return _in_chunks(hub, others, ratio, flipped, device, float_products(exact))
    with PROCESS_STATE.torch_threads(threads):
        return _in_chunks(hub, others, ratio, flipped, device, PROCESS_STATE.cpu_products(threads, exact))


@torch.inference_mode()
def _in_chunks(hub_descriptors: np.ndarray, others: Sequence[np.ndarray], ratio: float, flipped: bool,
               device: torch.device, products: Products) -> List[Tuple[np.ndarray, np.ndarray]]:
    """The partners in chunks of at most CHUNK_CELLS distances; fewer than two keypoints: no matches."""
    out: List[Tuple[np.ndarray, np.ndarray]] = [no_matches() for _ in others]
    hub = PROCESS_STATE.statistics(hub_descriptors)
    todo = [j for j, other in enumerate(others) if len(other) >= 2]
    if len(hub.bytes) < 2 or not todo:
        return out
    widest = max(len(others[j]) for j in todo)
    per_chunk = max(1, CHUNK_CELLS // (len(hub.bytes) * widest))
    for start in range(0, len(todo), per_chunk):
        chunk = todo[start:start + per_chunk]
        descriptors = [PROCESS_STATE.statistics(others[j]) for j in chunk]
        results = _mutual_ratio_batch(hub, descriptors, ratio, flipped, device, products)
        for j, found in zip(chunk, results, strict=True):
            out[j] = found
    return out


def _padded(descriptors: Sequence[Statistics]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(J, M, D) uint8 descriptors, zero-padded; (J, M) float32 squared norms, +inf in the padding;
    (J, M) int64 sums of the bytes."""
    widest = max(len(d.bytes) for d in descriptors)
    padded = np.zeros((len(descriptors), widest, descriptors[0].bytes.shape[1]), np.uint8)
    norms = np.full((len(descriptors), widest), np.inf, np.float32)
    sums = np.zeros((len(descriptors), widest), np.int64)
    for j, d in enumerate(descriptors):
        padded[j, :len(d.bytes)], norms[j, :len(d.bytes)], sums[j, :len(d.bytes)] = d
    return padded, norms, sums


def _nearest(table: torch.Tensor) -> torch.Tensor:
    """Each row's column of smallest value (last dimension). On a CPU numpy's argmin is several
    times faster than torch's; ties do not matter here (they fail the ratio test)."""
    if table.device.type == "cpu":
        return torch.from_numpy(table.numpy().argmin(axis=-1))
    return torch.argmin(table, dim=-1)


def _mutual_ratio_batch(hub: Statistics, others: Sequence[Statistics], ratio: float, flipped: bool,
                        device: torch.device, products: Products) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Mutual nearest neighbours passing the ratio test between `hub` (N keypoints) and each of `others`,
    seen from the hub (flipped=False) or from each other image (flipped=True).

    Rows are each pair's first image, columns its second. One matrix product (the hub against the
    chunk's stacked descriptors) gives every row's squared distances less a term of the row's own (its
    norm and the product's row offset: `row_terms`, added back where distances are needed); a pass of
    argmin and one of amin give each row's nearest and second nearest column; the reverse check (is
    the row its column's nearest row?) only runs for the rows that pass the ratio test, on their
    columns."""
    many, many_norms, many_sums = _padded(others)  # (J, M, D), (J, M), (J, M)
    count, widest = many_norms.shape
    hub, hub_norms, hub_sums = hub
    stacked = many.reshape(count * widest, -1)
    if flipped:  # rows: the other images' keypoints; columns: the hub's. Laid out (J, M, N).
        base, offsets = products(stacked, many_sums.reshape(-1), hub, hub_norms, hub_sums, device)
        base = base.view(count, widest, -1)
        row_terms = torch.from_numpy(many_norms + offsets.reshape(count, widest)).to(device)
    else:  # rows: the hub's keypoints; columns: each other image's. Laid out (N, J, M).
        base, offsets = products(hub, hub_sums, stacked, many_norms.reshape(-1), many_sums.reshape(-1), device)
        base = base.view(len(hub), count, widest)
        row_terms = torch.from_numpy(hub_norms + offsets).to(device)[None].expand(count, -1)
    excluded = float("inf") if base.is_floating_point() else torch.iinfo(base.dtype).max
    nearest = _nearest(base)[..., None]
    best = torch.gather(base, 2, nearest)
    base.scatter_(2, nearest, excluded)
    second = base.amin(dim=2)
    base.scatter_(2, nearest, best)  # restored, for the reverse check
    best, nearest = best[..., 0], nearest[..., 0]
    if not flipped:  # to (J, N)
        best, second, nearest = best.T, second.T, nearest.T
    # Squared distances (exact integers for SIFT), their float32 roots as OpenCV's, compared in float64.
    # A table's values become float32 with the row terms; padding never needs its own +inf: a partner has
    # at least two keypoints, so no row's best or second is a padding column, and a padding row's term
    # is +inf.
    best, second = (torch.stack([best, second]) + row_terms).clamp_(min=0).sqrt_().double()
    passed = (best < ratio * second) & torch.isfinite(second)
    pair, row = torch.nonzero(passed, as_tuple=True)
    col = nearest[pair, row]
    # Each candidate's column against every row of its pair: argmin is the lowest index on ties, as OpenCV's.
    column = (base[pair, :, col] if flipped else base[:, pair, col].T) + row_terms[pair]
    mutual = torch.argmin(column, dim=1) == row
    confidence = (1.0 - best[passed] / second[passed].clamp(min=1e-6)).float()[mutual].cpu().numpy()
    pair, row, col = pair[mutual].cpu().numpy(), row[mutual].cpu().numpy(), col[mutual].cpu().numpy()
    matches = np.stack([row, col], axis=1).astype(np.int64)
    bounds = np.searchsorted(pair, np.arange(count + 1))
    return [(matches[start:stop], confidence[start:stop]) if start < stop else no_matches()
            for start, stop in zip(bounds[:-1], bounds[1:])]

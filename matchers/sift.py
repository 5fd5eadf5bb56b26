"""SIFT + Lowe's ratio test (OpenCV): the weight-free matcher, for machines without the LightGlue
weights and as a fast baseline (about 10x the pairs per second of ALIKED + LightGlue on a CPU).

`match` is OpenCV's brute-force matcher, one pair at a time. `match_many` matches one image against
many in one pass: one matrix product per chunk of partners (torch, on the matcher's device, a GPU
when there is one) gives every squared distance, and the mutual nearest neighbour and ratio tests
are tensor operations. It returns exactly what `match` returns: OpenCV's SIFT descriptors are
non-negative integers (0-255, stored as bytes), so squared distances are integers below 2^24, exact
in float32 whatever the order of the sums (rounded where float32 products are not full precision:
TF32 or bfloat16 settings); distances are their float32 square roots, as OpenCV computes them, and
the ratio test compares them in float64 as `match` does. Ties cannot differ either: a tie between
the best two fails the ratio test on both paths, and the reverse nearest neighbour is the lowest
index on both. Confidences agree to float32 rounding (1e-7).

The product itself, on a CPU, is whichever of two exact ways ran faster in a short trial when the
process first matched (`_fastest_cpu_products`, timed by one thread while the others wait; both give
the same integers): the bytes less 128 as int8 with int32 sums (`torch._int_mm`), or float32. int8
won on both CPUs measured (3.4x on an AMD EPYC with AVX512-VNNI; 1.6x on an Intel Xeon with AMX);
float32 stays for a build or CPU whose int8 kernel is missing or slow. On a GPU the product is
float32. float32 with bfloat16 inputs (oneDNN, exact here too) was a third candidate and won a
trial of one repeated shape on the Intel Xeon, but lost in eval.py: every hub brings a new shape,
and oneDNN compiles a kernel per shape (about 3 ms, as long as the product), so eval.py on the
DogFaceNet-dev test part took 39 s with it and 32.5 s with int8, the same matches (docs/results.md).
"""
from __future__ import annotations

import threading
import time
import weakref
from contextlib import contextmanager
from functools import cache, partial
from typing import Callable, Dict, Iterator, List, NamedTuple, Sequence, Tuple

import cv2
import numpy as np
import torch

from core.errors import ConfigError
from matchers.base import MATCHERS, Features, Matcher, no_matches

CHUNK_CELLS = 8_000_000  # distance-matrix cells per batched product (32 MB of float32)


@MATCHERS.register("sift")
class SiftMatcher(Matcher):
    """Keypoints of OpenCV's SIFT on the grey image; a match is a mutual nearest neighbour whose
    distance is below `ratio` times the second nearest (Lowe's test)."""

    thread_safe = True

    def __init__(self, max_keypoints: int = 512, device=None, ratio: float = 0.8, threads: int = 1,
                 batched: bool = True):
        super().__init__(max_keypoints, device)
        if not 0 < ratio <= 1:
            raise ConfigError(f"sift ratio must be in (0, 1], got {ratio}")
        if threads < 1:
            raise ConfigError(f"sift threads must be at least 1, got {threads}")
        self.ratio = float(ratio)
        # torch threads of the batched products on a CPU: one is 2-3x faster than two when the cores are
        # shared with other work (OpenMP threads wait on each other); matches do not depend on it.
        self.threads = int(threads)
        # batched=False: match_many loops over `match` (OpenCV, one pair at a time), the path before
        # batching; the same matches, kept to measure against (rerank.matcher_args={batched: false}).
        self.batched = bool(batched)
        self._local = threading.local()  # one OpenCV SIFT per thread: extraction runs in a pool (thread_safe)
        # Read once, here: whether float32 products round (TF32, or a user's float32 matmul precision).
        self._exact = _exact_products(self.device)

    def settings(self):
        return {"ratio": self.ratio}

    def extract(self, image: np.ndarray) -> Features:
        grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        if not hasattr(self._local, "sift"):
            self._local.sift = cv2.SIFT_create(nfeatures=self.max_keypoints)
        keypoints, descriptors = self._local.sift.detectAndCompute(grey, None)
        keypoints = keypoints[:self.max_keypoints]  # SIFT keeps ties at the cut-off: a few more than asked
        if descriptors is None or not keypoints:
            keypoints, descriptors = (), np.zeros((0, 128), np.float32)
        h, w = image.shape[:2]
        return {"keypoints": np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2),
                "descriptors": _bytes(descriptors[:len(keypoints)]),
                "image_size": np.array([w, h], np.float32)}

    def match(self, features0: Features, features1: Features) -> Tuple[np.ndarray, np.ndarray]:
        d0 = features0["descriptors"].astype(np.float32)
        d1 = features1["descriptors"].astype(np.float32)
        if len(d0) < 2 or len(d1) < 2:
            return no_matches()
        matcher = cv2.BFMatcher(cv2.NORM_L2)
        forward = matcher.knnMatch(d0, d1, k=2)
        backward = {m[0].queryIdx: m[0].trainIdx for m in matcher.knnMatch(d1, d0, k=1) if m}
        pairs, confidence = [], []
        for best, second in (m for m in forward if len(m) == 2):
            if best.distance < self.ratio * second.distance and backward.get(best.trainIdx) == best.queryIdx:
                pairs.append((best.queryIdx, best.trainIdx))
                confidence.append(1.0 - best.distance / max(second.distance, 1e-6))
        if not pairs:
            return no_matches()
        return np.array(pairs, np.int64), np.array(confidence, np.float32)

    def match_many(self, features0: Features, others: Sequence[Features], *,
                   flipped: bool = False) -> List[Tuple[np.ndarray, np.ndarray]]:
        if not self.batched:
            return super().match_many(features0, others, flipped=flipped)
        if self.device.type != "cpu":
            return self._match_many(features0, others, flipped, _float_products(self._exact))
        with _cpu_products(self.threads):
            return self._match_many(features0, others, flipped, _fastest_cpu_products(self.threads, self._exact))

    @torch.inference_mode()
    def _match_many(self, features0: Features, others: Sequence[Features],
                    flipped: bool, products: Products) -> List[Tuple[np.ndarray, np.ndarray]]:
        out: List[Tuple[np.ndarray, np.ndarray]] = [no_matches() for _ in others]
        hub = _statistics(features0["descriptors"])
        todo = [j for j, other in enumerate(others) if len(other["descriptors"]) >= 2]
        if len(hub.bytes) < 2 or not todo:
            return out
        widest = max(len(others[j]["descriptors"]) for j in todo)
        per_chunk = max(1, CHUNK_CELLS // (len(hub.bytes) * widest))
        for start in range(0, len(todo), per_chunk):
            chunk = todo[start:start + per_chunk]
            descriptors = [_statistics(others[j]["descriptors"]) for j in chunk]
            results = _mutual_ratio_batch(hub, descriptors, self.ratio, flipped, self.device, products)
            for j, found in zip(chunk, results, strict=True):
                out[j] = found
        return out


_TRIAL_SHAPE = (384, 6144)  # rows x columns of the trial product: a hub of 384 keypoints, 12 partners of 512


_trial_lock = threading.Lock()


def _fastest_cpu_products(threads: int, exact: bool) -> Products:
    """The faster of the int8 and float32 products on this CPU, timed once per process; float32 where
    torch has no int8 product. One thread times while the others wait: the pair engine's threads all
    start matching at once, and trials timed side by side on shared cores picked float32 (2x slower)."""
    with _trial_lock:
        return _timed_choice(threads, exact)


@cache
def _timed_choice(threads: int, exact: bool) -> Products:
    """Each candidate timed 5 times, in turn (a burst of other work slows both alike), after a
    warm-up; the best time of each counts (about 0.1 s in all)."""
    candidates = {"float32": _float_products(exact)}
    if hasattr(torch, "_int_mm"):
        candidates["int8"] = _int8_products
    if len(candidates) == 1:
        return candidates["float32"]
    rng = np.random.default_rng(0)
    rows, columns = (rng.integers(0, 160, (n, 128), dtype=np.uint8) for n in _TRIAL_SHAPE)
    row_sums, (column_norms, column_sums) = _norms_and_sums(rows)[1], _norms_and_sums(columns)
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


_settings_lock = threading.Lock()
_settings_users = 0
_settings_before = 1


@contextmanager
def _cpu_products(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to `threads` while inside. It is a process-wide setting and
    several threads of the pair engine may be inside at once: the first in sets it, the last out
    restores it."""
    global _settings_users, _settings_before
    with _settings_lock:
        if _settings_users == 0:
            _settings_before = torch.get_num_threads()
            torch.set_num_threads(threads)
        _settings_users += 1
    try:
        yield
    finally:
        with _settings_lock:
            _settings_users -= 1
            if _settings_users == 0:
                torch.set_num_threads(_settings_before)


def _exact_products(device: torch.device) -> bool:
    """Whether float32 matrix products here are full float32 (no TF32 or bfloat16 shortcuts)."""
    if device.type == "cuda":
        return not torch.backends.cuda.matmul.allow_tf32
    return torch.get_float32_matmul_precision() == "highest"


def _bytes(descriptors: np.ndarray) -> np.ndarray:
    """SIFT descriptors as uint8: OpenCV's are integers 0-255 in float32 (older caches hold float16)."""
    descriptors = np.asarray(descriptors)
    if descriptors.dtype == np.uint8:
        return descriptors
    return np.rint(descriptors).clip(0, 255).astype(np.uint8)


class Statistics(NamedTuple):
    """One image's descriptors as the batched product takes them."""

    bytes: np.ndarray  # (M, D) uint8
    norms: np.ndarray  # (M,) float32 squared norms (integers below 2^24)
    sums: np.ndarray  # (M,) int64 sums of the bytes


# id of a descriptor array -> (a weak reference to it, its squared norms and byte sums). An image's norms
# cost as much to compute as a fifth of its share of a batched product (18 us for 157 keypoints), and an
# image is matched against many hubs: they are computed once per array and kept while it lives
# (KeypointStore keeps an image's features in memory between pairs). Only what is derived is kept (the
# array itself would never die). Descriptor arrays are never written after extraction.
_known: Dict[int, Tuple[weakref.ref, np.ndarray, np.ndarray]] = {}


def _statistics(descriptors: np.ndarray) -> Statistics:
    as_bytes = _bytes(descriptors)
    key = id(descriptors)
    entry = _known.get(key)
    if entry is None or entry[0]() is not descriptors:
        entry = (weakref.ref(descriptors, partial(_forget, key)), *_norms_and_sums(as_bytes))
        _known[key] = entry
    return Statistics(as_bytes, entry[1], entry[2])


def _forget(key: int, reference: weakref.ref) -> None:
    """A descriptor array's statistics dropped with it. The check: the array's id may already belong to
    a newer entry when another thread computed statistics for the same array at once."""
    entry = _known.get(key)
    if entry is not None and entry[0] is reference:
        _known.pop(key, None)


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


def _norms_and_sums(descriptors: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    wide = descriptors.astype(np.int32)
    return np.einsum("md,md->m", wide, wide).astype(np.float32), wide.sum(1, dtype=np.int64)


# A product: (rows (R, D) uint8 and their byte sums (R,), columns (C, D) uint8, their squared norms (C,)
# float32, +inf for padding, and their byte sums (C,)) -> a table (R, C) and row offsets (R,) float32 whose
# sum is |column|^2 - 2 row . column (a squared distance less the row's norm). The table is float32 with
# +inf in padding columns, or int32 within 2^22 of INT_PADDING there. A row's offset is the same for all its
# columns, so nearest neighbours along a row can be found in the table alone.
Products = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, torch.device],
                    Tuple[torch.Tensor, np.ndarray]]
INT_PADDING = 1 << 30  # far above any squared distance (< 2^24), with room for the terms added to it

_SCALES = (65536.0, 256.0, 1.0)


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


def _float_products(exact: bool) -> Products:
    """The product in float32: the column's squared norm rides in it as three more dimensions, its
    bytes: [r, 2^16, 2^8, 1] . [-2c, bytes of |c|^2] (each factor has at most 8 significant bits, so
    reduced-precision inputs such as TF32 keep it exact; every sum is an integer below 2^24). Rounded
    when float32 products are not full precision here."""
    def product(rows: np.ndarray, _row_sums: np.ndarray, columns: np.ndarray, norms: np.ndarray,
                _column_sums: np.ndarray, device: torch.device) -> Tuple[torch.Tensor, np.ndarray]:
        r = torch.from_numpy(rows.astype(np.float32)).to(device)
        c = torch.from_numpy(columns.astype(np.float32)).to(device)
        base = _with_scales(r) @ _with_norm_bytes(c, torch.from_numpy(norms).to(device)).T
        return (base if exact else base.round_()), np.zeros(len(rows), np.float32)
    return product


_BIAS = 128  # bytes less 128 are int8


def _int8_products(rows: np.ndarray, row_sums: np.ndarray, columns: np.ndarray, norms: np.ndarray,
                   column_sums: np.ndarray, device: torch.device) -> Tuple[torch.Tensor, np.ndarray]:
    """The product in int8 with int32 sums (exact). With r = r' + 128 and c = c' + 128 over D dimensions,
    |c|^2 - 2 r.c = (|c|^2 - 256 sum(c') - 2 128^2 D) - 2 r'.c' - 256 sum(r'); every term is an integer
    of magnitude below 2^24, so float32 sums of them are exact. The last term is the row offset (adding
    it to the whole table was a tenth of the product's time)."""
    dims = rows.shape[1]
    r = torch.from_numpy((rows ^ 0x80).view(np.int8))  # the byte less 128
    c = torch.from_numpy((columns ^ 0x80).view(np.int8))
    finite = np.isfinite(norms)
    column_term = (np.where(finite, norms, 0).astype(np.int64) - 2 * _BIAS * (column_sums - _BIAS * dims)
                   - 2 * _BIAS * _BIAS * dims)
    column_term[~finite] = INT_PADDING
    row_term = -2 * _BIAS * (row_sums - _BIAS * dims)
    base = torch._int_mm(r, c.T)  # c.T: column-major, int_mm's fast layout
    # column term - 2 base in one pass, written over the product (two in-place passes took 1.3x as long)
    column_term = torch.from_numpy(column_term.astype(np.int32))[None]
    return torch.add(column_term, base, alpha=-2, out=base), row_term.astype(np.float32)


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

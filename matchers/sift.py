"""SIFT + Lowe's ratio test (OpenCV): the weight-free matcher, for machines without the LightGlue
weights and as a fast baseline (about 10x the pairs per second of ALIKED + LightGlue on a CPU).

`match` is OpenCV's brute-force matcher, one pair at a time. `match_many` matches one image against
many in one pass: one matrix product per chunk of partners (torch, on the matcher's device, a GPU
when there is one) gives every squared distance, and the mutual nearest neighbour and ratio tests
are tensor operations. It returns exactly what `match` returns: OpenCV's SIFT descriptors are
non-negative integers (0-255), so squared distances are integers below 2^24, exact in float32
whatever the order of the sums (rounded where float32 products are not full precision: TF32 or
bfloat16 settings); distances are their float32 square roots, as OpenCV computes them, and the
ratio test compares them in float64 as `match` does. Ties cannot differ either: a tie between the
best two fails the ratio test on both paths, and the reverse nearest neighbour is the lowest index
on both. Confidences agree to float32 rounding (1e-7).
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache
from typing import Iterator, List, Sequence, Tuple

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
        self._sift = cv2.SIFT_create(nfeatures=self.max_keypoints)

    def settings(self):
        return {"ratio": self.ratio}

    def extract(self, image: np.ndarray) -> Features:
        grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        keypoints, descriptors = self._sift.detectAndCompute(grey, None)
        keypoints = keypoints[:self.max_keypoints]  # SIFT keeps ties at the cut-off: a few more than asked
        if descriptors is None or not keypoints:
            keypoints, descriptors = (), np.zeros((0, 128), np.float32)
        h, w = image.shape[:2]
        return {"keypoints": np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2),
                "descriptors": descriptors[:len(keypoints)].astype(np.float16),
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
            return self._match_many(features0, others, flipped, _exact_products(self.device))
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        exact = _exact_products(self.device)  # read before the products switch to bfloat16 inputs (exact here)
        try:
            with _bf16_products(bf16_cpu()):
                return self._match_many(features0, others, flipped, exact)
        finally:
            torch.set_num_threads(previous)

    @torch.inference_mode()
    def _match_many(self, features0: Features, others: Sequence[Features],
                    flipped: bool, exact: bool) -> List[Tuple[np.ndarray, np.ndarray]]:
        out: List[Tuple[np.ndarray, np.ndarray]] = [no_matches() for _ in others]
        hub = features0["descriptors"]
        todo = [j for j, other in enumerate(others) if len(other["descriptors"]) >= 2]
        if len(hub) < 2 or not todo:
            return out
        d0 = torch.from_numpy(np.ascontiguousarray(hub, dtype=np.float32)).to(self.device)
        widest = max(len(others[j]["descriptors"]) for j in todo)
        per_chunk = max(1, CHUNK_CELLS // (len(hub) * widest))
        for start in range(0, len(todo), per_chunk):
            chunk = todo[start:start + per_chunk]
            descriptors = [others[j]["descriptors"] for j in chunk]
            results = _mutual_ratio_batch(d0, descriptors, self.ratio, flipped, self.device, exact)
            for j, found in zip(chunk, results, strict=True):
                out[j] = found
        return out


@lru_cache(maxsize=1)
def bf16_cpu() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX-BF16; Linux's flags)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@contextmanager
def _bf16_products(enabled: bool) -> Iterator[None]:
    """oneDNN's float32 products with bfloat16 inputs and float32 sums and results, while inside (on
    a CPU with native bfloat16: about 1.5x the products per second of float32). Exact here: every
    input of `_mutual_ratio_batch`'s product is an integer of at most 8 significant bits (SIFT's
    0-255, -2 times them, the bytes of a squared norm and their powers of 2), which bfloat16 holds
    exactly, and every sum is an integer below 2^24, which float32 holds exactly."""
    matmul = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    if not enabled or matmul is None or not hasattr(matmul, "fp32_precision"):
        yield
        return
    previous = matmul.fp32_precision
    matmul.fp32_precision = "bf16"
    try:
        yield
    finally:
        matmul.fp32_precision = previous


def _exact_products(device: torch.device) -> bool:
    """Whether float32 matrix products here are full float32 (no TF32 or bfloat16 shortcuts)."""
    if device.type == "cuda":
        return not torch.backends.cuda.matmul.allow_tf32
    return torch.get_float32_matmul_precision() == "highest"


def _padded(descriptors: Sequence[np.ndarray], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(J, M, D) descriptors, zero-padded, and (J, M) squared norms, +inf in the padding."""
    widest = max(len(d) for d in descriptors)
    padded = np.zeros((len(descriptors), widest, descriptors[0].shape[1]), np.float32)
    lengths = np.array([len(d) for d in descriptors])
    for j, d in enumerate(descriptors):
        padded[j, :len(d)] = d
    norms = np.einsum("jmd,jmd->jm", padded, padded)
    norms[np.arange(widest)[None] >= lengths[:, None]] = np.inf
    return torch.from_numpy(padded).to(device), torch.from_numpy(norms).to(device)


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


def _nearest(table: torch.Tensor) -> torch.Tensor:
    """Each row's column of smallest value (last dimension). On a CPU numpy's argmin is several
    times faster than torch's; ties do not matter here (they fail the ratio test)."""
    if table.device.type == "cpu":
        return torch.from_numpy(table.numpy().argmin(axis=-1))
    return torch.argmin(table, dim=-1)


def _mutual_ratio_batch(hub: torch.Tensor, others: Sequence[np.ndarray], ratio: float, flipped: bool,
                        device: torch.device, exact: bool = True) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Mutual nearest neighbours passing the ratio test between `hub` (N, D) and each of `others`,
    seen from the hub (flipped=False) or from each other image (flipped=True).

    Rows are each pair's first image, columns its second. One matrix product (the hub against the
    chunk's stacked descriptors) gives every row's squared distances less its own norm; a pass of
    argmin and one of amin give each row's nearest and second nearest column; the reverse check (is
    the row its column's nearest row?) only runs for the rows that pass the ratio test, on their
    columns."""
    many, many_norms = _padded(others, device)  # (J, M, D), (J, M)
    count, widest = many_norms.shape
    hub_norms = (hub * hub).sum(1)
    stacked = many.reshape(count * widest, -1)
    # The column image's squared norm rides in the product as three more dimensions, its bytes:
    # [r, 2^16, 2^8, 1] . [-2c, bytes of |c|^2] (each factor 8 significant bits: exact in bfloat16).
    if flipped:  # rows: the other images' keypoints; columns: the hub's. Laid out (J, M, N).
        base = (_with_scales(stacked) @ _with_norm_bytes(hub, hub_norms).T).view(count, widest, -1)
        row_norms = many_norms
    else:  # rows: the hub's keypoints; columns: each other image's. Laid out (N, J, M).
        base = (_with_scales(hub) @ _with_norm_bytes(stacked, many_norms.reshape(-1)).T).view(len(hub), count, widest)
        row_norms = hub_norms[None].expand(count, -1)
    if not exact:
        base = base.round_()  # SIFT descriptors are integers: so are the exact products
    nearest = _nearest(base)[..., None]
    best = torch.gather(base, 2, nearest)
    base.scatter_(2, nearest, float("inf"))
    second = base.amin(dim=2)
    base.scatter_(2, nearest, best)  # restored, for the reverse check
    best, nearest = best[..., 0], nearest[..., 0]
    if not flipped:  # to (J, N)
        best, second, nearest = best.T, second.T, nearest.T
    # Squared distances (exact integers for SIFT), their float32 roots as OpenCV's, compared in float64.
    best = (best + row_norms).clamp(min=0).sqrt().double()
    second = (second + row_norms).clamp(min=0).sqrt().double()
    passed = (best < ratio * second) & torch.isfinite(second)
    pair, row = torch.nonzero(passed, as_tuple=True)
    col = nearest[pair, row]
    # Each candidate's column against every row of its pair: argmin is the lowest index on ties, as OpenCV's.
    column = (base[pair, :, col] if flipped else base[:, pair, col].T) + row_norms[pair]
    mutual = torch.argmin(column, dim=1) == row
    confidence = (1.0 - best / second.clamp(min=1e-6)).float()[passed][mutual].cpu().numpy()
    pair, row, col = pair[mutual].cpu().numpy(), row[mutual].cpu().numpy(), col[mutual].cpu().numpy()
    out = []
    bounds = np.searchsorted(pair, np.arange(count + 1))
    for j in range(count):
        if bounds[j] == bounds[j + 1]:
            out.append(no_matches())
            continue
        at = slice(bounds[j], bounds[j + 1])
        out.append((np.stack([row[at], col[at]], axis=1).astype(np.int64), confidence[at]))
    return out

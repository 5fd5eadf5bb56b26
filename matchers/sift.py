"""SIFT + Lowe's ratio test (OpenCV): the weight-free matcher, for machines without the LightGlue
weights and as a fast baseline (many times the pairs per second of ALIKED + LightGlue on a CPU).

`match` is OpenCV's brute-force matcher, one pair at a time. `match_many` matches one image against
many in one pass (matchers.batched_nn: one exact matrix product per chunk of partners, in torch on the
matcher's device, a GPU when there is one; the mutual nearest neighbour and ratio tests as tensor
operations) and returns exactly what `match` returns: OpenCV's SIFT descriptors are non-negative
integers, kept as bytes, so every squared distance is an exact integer on both paths.

The product itself, on a CPU, is whichever of two exact ways ran faster in a short trial when the
process first matched (matchers.byte_distances): the bytes less 128 as int8 with int32 sums
(`torch._int_mm`), faster than float32 on CPUs with VNNI or AMX, or float32, for a build or CPU
whose int8 kernel is missing or slow. On a GPU the product is float32. float32 with bfloat16 inputs
(oneDNN, exact here too) is not a candidate: it can win a trial of one repeated shape, but every hub
brings a new shape and oneDNN compiles a kernel per shape, which made eval.py slower than with int8
(docs/results.md has the figures).

`rootsift` is the same matcher on RootSIFT descriptors (Arandjelovic and Zisserman, CVPR 2012): each
descriptor divided by its sum (L1) and square-rooted, so that Euclidean distances between them are
the Hellinger kernel's, which weighs a bin's relative change rather than its size and lets a few
strong gradient bins (grass blades, text, hard shadows) dominate a match less. The roots are stored
as bytes, ROOT_SCALE times the root rounded: the batched int8 product matches them exactly as it
matches SIFT's (`match` and `match_many` give the same matches on the same bytes), at the same speed.
"""
from __future__ import annotations

import threading
from typing import List, Sequence, Tuple

import cv2
import numpy as np

from core.errors import ConfigError
from matchers.base import MATCHERS, Features, Matcher, no_matches
from matchers.batched_nn import mutual_ratio_matches
from matchers.byte_distances import as_bytes, exact_float32_products

ROOT_SCALE = 512  # a root is at most 1 and below 0.32 on real photos: bytes below 165, a 1/512 step


def root_bytes(descriptors: np.ndarray) -> np.ndarray:
    """(N, 128) uint8 RootSIFT of (N, 128) non-negative SIFT descriptors: sqrt(d / sum(d)) * ROOT_SCALE,
    rounded and kept within a byte; an all-zero descriptor stays zero."""
    values = np.asarray(descriptors, np.float64)
    sums = values.sum(axis=1, keepdims=True)
    roots = np.sqrt(values / np.where(sums > 0, sums, 1.0))
    return np.rint(roots * ROOT_SCALE).clip(0, 255).astype(np.uint8)


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
        # torch threads of the batched products on a CPU: one beats two when the cores are shared with
        # other work (OpenMP threads wait on each other); matches do not depend on it.
        self.threads = int(threads)
        # batched=False: match_many loops over `match` (OpenCV, one pair at a time), the path before
        # batching; the same matches, kept to measure against (rerank.matcher_args={batched: false}).
        self.batched = bool(batched)
        self._local = threading.local()  # one OpenCV SIFT per thread: extraction runs in a pool (thread_safe)
        # Read once, here: whether float32 products round (TF32, or a user's float32 matmul precision).
        self._exact = exact_float32_products(self.device)

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
                "descriptors": as_bytes(descriptors[:len(keypoints)]),
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
        return mutual_ratio_matches(features0["descriptors"], [other["descriptors"] for other in others],
                                    self.ratio, flipped=flipped, device=self.device, threads=self.threads,
                                    exact=self._exact)


@MATCHERS.register("rootsift")
class RootSiftMatcher(SiftMatcher):
    """SIFT's keypoints and matching on RootSIFT descriptors (Hellinger distances; module doc)."""

    def extract(self, image: np.ndarray) -> Features:
        found = super().extract(image)
        return {**found, "descriptors": root_bytes(found["descriptors"])}

"""SIFT + Lowe's ratio test (OpenCV): the weight-free matcher, for machines without the LightGlue
weights and as a fast baseline (about 10x the pairs per second of ALIKED + LightGlue on a CPU)."""
from __future__ import annotations

from typing import Tuple

import cv2
import numpy as np

from core.errors import ConfigError
from matchers.base import MATCHERS, Features, Matcher, no_matches


@MATCHERS.register("sift")
class SiftMatcher(Matcher):
    """Keypoints of OpenCV's SIFT on the grey image; a match is a mutual nearest neighbour whose
    distance is below `ratio` times the second nearest (Lowe's test)."""

    def __init__(self, max_keypoints: int = 512, device=None, ratio: float = 0.8):
        super().__init__(max_keypoints, device)
        if not 0 < ratio <= 1:
            raise ConfigError(f"sift ratio must be in (0, 1], got {ratio}")
        self.ratio = float(ratio)
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

"""Geometric verification of matches: which correspondences one rigid model explains (RANSAC).

A raw match count cannot tell the right individual from photos that share a background or a
texture (on real antelope photos, wrong best matches had as many matches as the right one);
inliers of one geometric model are far more specific. `fundamental` allows any rigid 3-D scene
(a body seen from another angle), `homography` one plane (a flank, a fin). OpenCV's MAGSAC++ is
seeded before every call, so a pair's inliers do not depend on which pairs ran before it (two
processes give the same answer as one).
"""
from __future__ import annotations

import cv2
import numpy as np

GEOMETRIES = ("fundamental", "homography")
MIN_POINTS = {"fundamental": 8, "homography": 4}
_CONFIDENCE = 0.999
_MAX_ITERATIONS = 2000


def ransac_inliers(points0: np.ndarray, points1: np.ndarray, geometry: str, threshold: float) -> np.ndarray:
    """(M,) bool: the correspondences (points0[i], points1[i]) consistent with the fitted model;
    all False when there are too few to fit one."""
    if geometry not in MIN_POINTS:
        raise ValueError(f"geometry must be one of {', '.join(GEOMETRIES)}, got {geometry!r}")
    count = len(points0)
    if count < MIN_POINTS[geometry]:
        return np.zeros(count, bool)
    p0 = np.ascontiguousarray(points0, dtype=np.float64).reshape(-1, 1, 2)
    p1 = np.ascontiguousarray(points1, dtype=np.float64).reshape(-1, 1, 2)
    for method in (cv2.USAC_MAGSAC, cv2.RANSAC):
        cv2.setRNGSeed(0)
        try:
            if geometry == "homography":
                model, mask = cv2.findHomography(p0, p1, method, threshold, maxIters=_MAX_ITERATIONS,
                                                 confidence=_CONFIDENCE)
            else:
                model, mask = cv2.findFundamentalMat(p0, p1, method, threshold, _CONFIDENCE, _MAX_ITERATIONS)
        except cv2.error:
            continue  # MAGSAC++ asserts on some degenerate point sets; plain RANSAC then decides
        if model is None or mask is None:
            break
        return mask.reshape(-1).astype(bool)[:count]
    return np.zeros(count, bool)

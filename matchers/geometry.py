"""Geometric verification of matches: which correspondences one model of the motion explains (RANSAC).

A raw match count cannot tell the right individual from photos that share a background or a
texture (on real antelope photos, wrong best matches had as many matches as the right one);
inliers of one geometric model are far more specific. Each model is a registered `Geometry`:
`fundamental` allows any rigid 3-D scene (a body seen from another angle), `homography` one plane
(a flank, a fin), `affine` a plane seen from afar (a parallelogram's worth of skew), and
`similarity` only a shift, a turn and a change of scale: the tightest, for flat patterns photographed
face-on (and the one a fixed camera's static background fits with the animal left out). OpenCV is
seeded before every call, so a pair's inliers do not depend on which pairs ran before it (two
processes give the same answer as one).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Optional, Tuple

import cv2
import numpy as np

from core.registry import Registry

GEOMETRIES = Registry("geometry", name_attribute="name")
_CONFIDENCE = 0.999
_MAX_ITERATIONS = 2000


class Geometry(ABC):
    """A model of how matched points move between two images, fitted robustly."""

    name = ""  # the registered name, set by GEOMETRIES.register
    min_points = 0  # fewer correspondences cannot fit the model
    methods: Tuple[int, ...] = (cv2.RANSAC,)  # robust estimators tried in turn (the next when one raises)

    @abstractmethod
    def fit(self, p0: np.ndarray, p1: np.ndarray, method: int, threshold: float) -> Tuple[Optional[np.ndarray],
                                                                                           Optional[np.ndarray]]:
        """(model, inlier mask) of (N, 1, 2) float64 points; (None, None) when no model is found."""


@GEOMETRIES.register("fundamental")
class Fundamental(Geometry):
    min_points = 8
    methods = (cv2.USAC_MAGSAC, cv2.RANSAC)  # MAGSAC++ asserts on some degenerate sets; plain RANSAC then decides

    def fit(self, p0, p1, method, threshold):
        return cv2.findFundamentalMat(p0, p1, method, threshold, _CONFIDENCE, _MAX_ITERATIONS)


@GEOMETRIES.register("homography")
class Homography(Geometry):
    min_points = 4
    methods = (cv2.USAC_MAGSAC, cv2.RANSAC)

    def fit(self, p0, p1, method, threshold):
        return cv2.findHomography(p0, p1, method, threshold, maxIters=_MAX_ITERATIONS, confidence=_CONFIDENCE)


@GEOMETRIES.register("affine")
class Affine(Geometry):
    min_points = 3

    def fit(self, p0, p1, method, threshold):
        return cv2.estimateAffine2D(p0, p1, method=method, ransacReprojThreshold=threshold, maxIters=_MAX_ITERATIONS,
                                    confidence=_CONFIDENCE)


@GEOMETRIES.register("similarity")
class Similarity(Geometry):
    min_points = 2

    def fit(self, p0, p1, method, threshold):
        return cv2.estimateAffinePartial2D(p0, p1, method=method, ransacReprojThreshold=threshold,
                                           maxIters=_MAX_ITERATIONS, confidence=_CONFIDENCE)


def min_points(geometry: str) -> int:
    """The fewest correspondences `geometry` can be fitted to."""
    return GEOMETRIES.get(geometry).min_points


def ransac_inliers(points0: np.ndarray, points1: np.ndarray, geometry: str, threshold: float) -> np.ndarray:
    """(M,) bool: the correspondences (points0[i], points1[i]) consistent with the fitted model;
    all False when there are too few to fit one."""
    model_of = GEOMETRIES.get(geometry)()
    count = len(points0)
    if count < model_of.min_points:
        return np.zeros(count, bool)
    p0 = np.ascontiguousarray(points0, dtype=np.float64).reshape(-1, 1, 2)
    p1 = np.ascontiguousarray(points1, dtype=np.float64).reshape(-1, 1, 2)
    for method in model_of.methods:
        cv2.setRNGSeed(0)
        try:
            model, mask = model_of.fit(p0, p1, method, threshold)
        except cv2.error:
            continue
        if model is None or mask is None:
            break
        return mask.reshape(-1).astype(bool)[:count]
    return np.zeros(count, bool)

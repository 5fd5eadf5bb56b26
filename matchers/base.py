"""The matcher interface: an image -> keypoints and descriptors, two images' features -> matches.

A matcher's features depend on the image and on `describe()` (name, settings, weights version):
that description is part of the keypoint cache's key, so changing any setting never reuses stale
features. Matching returns index pairs into the two keypoint arrays and a confidence per match;
geometric verification and scoring are the same for every matcher (matchers.geometry,
engine.matching), so a new matcher is one registered class with `extract` and `match`.
`match_many` matches one image against many at once; its default loops over `match`, and a matcher
that can batch (SIFT: one matrix product per chunk, in torch, on the matcher's device) overrides it
with the same results.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from core.errors import ConfigError, DataError
from core.registry import Registry

MATCHERS = Registry("matcher", name_attribute="name")

# Arrays of one image's features: keypoints (N, 2) float32 in pixels of the image the matcher saw,
# descriptors (N, D) float16 (half the cache bytes; matching runs in float32; SIFT's are uint8, the
# integers OpenCV computes), image_size (2,) = (w, h).
Features = Dict[str, np.ndarray]


class MatcherUnavailable(DataError):
    """A matcher cannot run here: its package is not installed, or its weights are missing or damaged."""


class Matcher(ABC):
    """Base class. `max_keypoints` bounds the keypoints per image; `device` is where it runs."""

    name = ""  # the registered name, set by MATCHERS.register
    version = 1  # bump when extraction changes, so cached features are not reused
    # extract and match_many may run in several threads at once, and gain from it (their work releases
    # the GIL: OpenCV); the keypoint store and the pair engine then use a pool (engine.matching.parallel).
    thread_safe = False

    def __init__(self, max_keypoints: int = 512, device: Optional[torch.device | str] = None):
        if max_keypoints < 8:
            raise ConfigError(f"max_keypoints must be at least 8 (a geometric model needs them), got {max_keypoints}")
        self.max_keypoints = int(max_keypoints)
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    def describe(self) -> Dict[str, Any]:
        """Everything that changes this matcher's features (the keypoint cache key)."""
        return {"name": self.name, "version": self.version, "max_keypoints": self.max_keypoints, **self.settings()}

    def settings(self) -> Dict[str, Any]:
        """Matcher-specific settings that change features or matches."""
        return {}

    def match_settings(self) -> Dict[str, Any]:
        """Settings that change matches but not features: part of the pair records' cache key
        (engine.matching.pairs), not of the keypoints'."""
        return {}

    @abstractmethod
    def extract(self, image: np.ndarray) -> Features:
        """Features of an (H, W, 3) uint8 RGB image."""

    @abstractmethod
    def match(self, features0: Features, features1: Features) -> Tuple[np.ndarray, np.ndarray]:
        """(M, 2) int indices (into features0, features1) of matched keypoints, and (M,) confidences."""

    def match_many(self, features0: Features, others: Sequence[Features], *,
                   flipped: bool = False) -> List[Tuple[np.ndarray, np.ndarray]]:
        """`match(features0, others[j])` for every j (with `flipped`: `match(others[j], features0)`,
        indices into others[j] first), in one call. Overrides must return exactly what `match` does."""
        return [self.match(other, features0) if flipped else self.match(features0, other) for other in others]


def build_matcher(name: str, args: Optional[Mapping[str, Any]] = None, *, max_keypoints: int,
                  device: Optional[torch.device | str] = None) -> Matcher:
    """The matcher `name` with its specific `args` (rerank.matcher_args)."""
    return MATCHERS.build(name, args, max_keypoints=max_keypoints, device=device)


def no_matches() -> Tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)


def image_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().div_(255).to(device)

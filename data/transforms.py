"""Image transforms (albumentations): training augmentation, eval, test-time views, orientation.

Every transform takes the loader's RGB uint8 array (shorter side = size) and returns a float
tensor normalised with the config's mean and std.

Rotation convention: positive degrees turn the image counter-clockwise, as in PIL's
``Image.rotate``, ``np.rot90``, OpenCV and torchvision, so orientation rules copied from public
pipelines keep their signs. Example rule: ``{SalamanderID2025: {right: -90, left: 90}}``.
"""
from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING, Callable, Dict, Mapping, Sequence

import cv2
import numpy as np
import torch

from core.errors import ConfigError
from core.schema import AugmentConfig
from core.suggest import did_you_mean

if TYPE_CHECKING:
    import albumentations as A


def _albumentations() -> ModuleType:
    """albumentations, imported when a transform is built (an eval.py whose embeddings are all
    cached builds none, and saves the import). It asks PyPI for its latest version on every import, a 2-second wait and a
    warning on every run of an offline machine (a GPU cluster node, say): told not to, unless the
    user set it."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations
    import albumentations.pytorch  # noqa: F401  (ToTensorV2)

    return albumentations


# Views each TTA name contributes; the evaluation averages the embeddings of all of them.
TTA_VIEWS = {"identity": 1, "hflip": 1, "fivecrop": 5}
# Five-crop windows cover this fraction of the height and of the width.
FIVECROP_FRACTION = 0.875


class AlbumentationsTransform:
    """Compose wrapper: numpy image -> tensor, with augmentation randomness tied to torch's seed.

    albumentations keeps its own generator, which forked DataLoader workers would inherit as
    identical copies (same augmentations in every worker, repeated every epoch). Reseeding it
    from ``torch.initial_seed()``, which PyTorch sets per worker and per epoch, gives each
    worker its own stream and makes runs reproducible from the training seed.
    """

    def __init__(self, compose: A.Compose):
        self.compose = compose
        self._seeded_from: int | None = None

    def set_random_seed(self, seed: int) -> None:
        """Seed explicitly (e.g. per sample, so a resumed run replays its augmentations); holds
        until torch's seed changes."""
        self.compose.set_random_seed(seed % 2**32)
        self._seeded_from = torch.initial_seed()

    def __getstate__(self) -> dict:
        # A copy sent to a worker (or unpickled elsewhere) reseeds on its first call.
        return {**self.__dict__, "_seeded_from": None}

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        if torch.initial_seed() != self._seeded_from:
            self.set_random_seed(torch.initial_seed())
        return self.compose(image=image)["image"]


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"augment.{name} must be a probability in [0, 1], got {value}")


def _check_range(name: str, values: Sequence[float], low: float, high: float) -> tuple:
    if len(values) != 2 or not (low < values[0] <= values[1] <= high):
        raise ConfigError(f"augment.{name} must be [min, max] with {low} < min <= max <= {high}, got {values}")
    return (float(values[0]), float(values[1]))


def _normalise(mean: Sequence[float], std: Sequence[float]) -> list:
    A = _albumentations()  # noqa: N806 (the module's usual name)
    return [A.Normalize(mean=tuple(mean), std=tuple(std)), A.pytorch.ToTensorV2()]


def build_train_transform(aug: AugmentConfig, size: int, mean: Sequence[float],
                          std: Sequence[float]) -> Callable[[np.ndarray], torch.Tensor]:
    """Resize + RandomResizedCrop + flip + (CLAHE | ColorJitter) + Rotate + (MotionBlur | Downscale) + ToGray.

    A probability of 0 leaves the op out.
    """
    for name in ("hflip", "color", "rotate_p", "blur", "gray"):
        _check_probability(name, getattr(aug, name))
    if aug.rotate < 0:
        raise ConfigError(f"augment.rotate must be >= 0 degrees, got {aug.rotate}")
    A = _albumentations()  # noqa: N806 (the module's usual name)
    # Resize first, as the eval transform does: crops of an elongated animal (a 2:1 flank) then
    # cover the same body parts the model sees at evaluation, instead of a square middle piece.
    ops: list = [A.Resize(size, size),
                 A.RandomResizedCrop(size=(size, size), scale=_check_range("scale", aug.scale, 0.0, 1.0),
                                     ratio=_check_range("ratio", aug.ratio, 0.0, float("inf")))]
    if aug.hflip > 0:
        ops.append(A.HorizontalFlip(p=aug.hflip))
    if aug.color > 0:
        # Small hue shifts only: coat colour is part of an animal's identity.
        ops.append(A.OneOf([A.CLAHE(clip_limit=2.0, p=1.0),
                            A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03, p=1.0)],
                           p=aug.color))
    if aug.rotate > 0 and aug.rotate_p > 0:
        ops.append(A.Rotate(limit=aug.rotate, border_mode=cv2.BORDER_CONSTANT, fill=0, p=aug.rotate_p))
    if aug.blur > 0:
        ops.append(A.OneOf([A.MotionBlur(blur_limit=(3, 7), p=1.0),
                            A.Downscale(scale_range=(0.5, 0.75), p=1.0)], p=aug.blur))
    if aug.gray > 0:
        ops.append(A.ToGray(p=aug.gray))
    return AlbumentationsTransform(A.Compose(ops + _normalise(mean, std)))


def build_eval_transform(size: int, mean: Sequence[float],
                         std: Sequence[float]) -> Callable[[np.ndarray], torch.Tensor]:
    """Resize to size x size (no randomness) + normalise."""
    A = _albumentations()  # noqa: N806 (the module's usual name)
    return AlbumentationsTransform(A.Compose([A.Resize(size, size, interpolation=cv2.INTER_AREA)]
                                             + _normalise(mean, std)))


def num_tta_views(views: Sequence[str]) -> int:
    """Number of images the TTA transform produces per input."""
    if not views:
        raise ConfigError(f"tta needs at least one view; valid: {', '.join(TTA_VIEWS)}")
    for view in views:
        if view not in TTA_VIEWS:
            raise ConfigError(f"unknown TTA view '{view}'{did_you_mean(view, TTA_VIEWS)}")
    return sum(TTA_VIEWS[view] for view in views)


def five_crops(image: np.ndarray, fraction: float = FIVECROP_FRACTION) -> list:
    """Top-left, top-right, bottom-left, bottom-right and centre crops of `fraction` of each side."""
    h, w = image.shape[:2]
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    top, left = (h - ch) // 2, (w - cw) // 2
    corners = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw), (top, left)]
    return [image[y:y + ch, x:x + cw] for y, x in corners]


class TTATransform:
    """numpy image -> (V, 3, size, size): the views in config order; fivecrop adds five."""

    def __init__(self, views: Sequence[str], size: int, mean: Sequence[float], std: Sequence[float]):
        self.num_views = num_tta_views(views)
        self.views = list(views)
        self.eval_transform = build_eval_transform(size, mean, std)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        base: torch.Tensor | None = None
        out = []
        for view in self.views:
            if view == "fivecrop":
                out.extend(self.eval_transform(np.ascontiguousarray(crop)) for crop in five_crops(image))
                continue
            base = self.eval_transform(image) if base is None else base
            # Flipping the resized tensor is exact and cheaper than resizing a flipped image.
            out.append(base if view == "identity" else torch.flip(base, dims=[-1]))
        return torch.stack(out)


def build_tta_transform(views: Sequence[str], size: int, mean: Sequence[float],
                        std: Sequence[float]) -> Callable[[np.ndarray], torch.Tensor]:
    return TTATransform(views, size, mean, std)


def rotation_for(rules: Mapping[str, Mapping[str, float]] | None, dataset: str | None,
                 orientation: str | None) -> float:
    """Degrees (counter-clockwise) that the rules assign to this dataset and orientation; 0 if none."""
    if not rules or dataset is None or orientation is None:
        return 0.0
    return float(rules.get(dataset, {}).get(orientation, 0.0))


def check_orientation_rules(rules: Dict[str, Dict[str, float]] | None) -> None:
    """Reject rules that are not {dataset: {orientation: number}} with a message naming the entry."""
    for dataset, by_orientation in (rules or {}).items():
        if not isinstance(by_orientation, Mapping):
            raise ConfigError(f"data.orientation_rules.{dataset} must map orientation -> degrees, "
                              f"got {by_orientation!r}")
        for orientation, degrees in by_orientation.items():
            if isinstance(degrees, bool) or not isinstance(degrees, (int, float)):
                raise ConfigError(f"data.orientation_rules.{dataset}.{orientation} must be a number of "
                                  f"degrees, got {degrees!r}")


def rotate_image(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate counter-clockwise by `degrees`. Multiples of 90 are exact (np.rot90); other angles
    enlarge the canvas so no corner is cut off, filling the new area with black."""
    turns = degrees / 90.0
    if abs(turns - round(turns)) < 1e-9:
        k = int(round(turns)) % 4
        return image if k == 0 else np.ascontiguousarray(np.rot90(image, k))
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), degrees, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    new_w, new_h = int(round(h * sin + w * cos)), int(round(h * cos + w * sin))
    matrix[0, 2] += new_w / 2.0 - w / 2.0
    matrix[1, 2] += new_h / 2.0 - h / 2.0
    return cv2.warpAffine(image, matrix, (new_w, new_h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)

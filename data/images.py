"""Image loading: any file a user brings -> an RGB uint8 array whose shorter side is `size`.

Real data has 3,500-px phone photos, EXIF rotation, grey-scale, CMYK and palette images, and
`.png` files that are JPEG (PIL identifies the format from the content, not the name). Decoding
a 3,500-px photo to train at 224 px wastes most of the time, so:

* JPEGs are decoded at 1/2, 1/4 or 1/8 scale with ``Image.draft`` when the (cropped) target is
  at least twice smaller; libjpeg then skips most of the inverse DCT work.
* the resized result is cached on disk, keyed by (absolute path, file size, mtime, size, crop),
  so each photo is decoded once, not every epoch. The cache stores ``.npy`` files: reading one
  back is far cheaper than decoding a JPEG or a PNG (docs/results.md), and it is lossless. The
  price is disk space: about 3 * size * size * aspect bytes per image (220 KB at 224 px).

Bounding boxes are ``[x, y, w, h]`` in pixels of the full-resolution image as displayed, i.e.
after its EXIF orientation is applied (what an annotator saw).
"""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

import numpy as np
from PIL import ExifTags, Image, ImageOps

from core.array_cache import ArrayCache
from core.errors import DataError
from core.files import file_identity
from core.paths import resolve_cache_setting

# Bump when the decoding or resizing changes, so old cache entries are not reused.
CACHE_VERSION = 1
# EXIF orientations 5-8 include a 90-degree turn: width and height swap when applied.
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
# Transparent pixels are laid over the ImageNet mean colour, which normalises to about zero.
_ALPHA_BACKGROUND = (124, 116, 104)
# PIL's two-step resize (box reduce, then bicubic) is visually indistinguishable from a full
# bicubic resize at a gap of 3 and several times faster on large images.
_REDUCING_GAP = 3.0
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def resolve_cache_dir(value: str | None) -> str | None:
    """Config value -> image cache folder: "" = default, "none" (or None) = caching off."""
    return resolve_cache_setting(value, "images")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB (alpha composited, 16/32-bit scaled to 8 bits, CMYK converted)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        values = np.asarray(img, dtype=np.float32)
        # 16-bit files use the full 0..65535 range; 32-bit ones have no fixed range.
        top = 65535.0 if img.mode.startswith("I;16") else max(float(values.max()), 255.0)
        grey = np.clip(values * (255.0 / top), 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if "A" in img.getbands() or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


class ImageLoader:
    """Load, orient, crop and resize images so the shorter side is exactly `size` pixels.

    Crops smaller than `size` are upscaled, so the transforms always get at least `size`.
    With `fit="long"` (keypoint matchers) the longer side is `size` instead, and smaller images are
    never upscaled: detail that is not in the photo cannot help a matcher, and costs it time.
    `cache_dir` follows the config convention ("" = default dir, None/"none" = off).
    `draft=False` always decodes JPEGs at full scale (for benchmarks and comparisons).
    """

    def __init__(self, size: int, cache_dir: str | None = None, crop_to_bbox: bool = True,
                 bbox_padding: float = 0.1, draft: bool = True, fit: str = "short"):
        if size < 1:
            raise ValueError(f"image size must be positive, got {size}")
        if fit not in ("short", "long"):
            raise ValueError(f"fit must be 'short' or 'long', got {fit!r}")
        self.size = int(size)
        self.fit = fit
        self.cache_dir = resolve_cache_dir(cache_dir) if cache_dir is not None else None
        self.crop_to_bbox = crop_to_bbox
        self.bbox_padding = float(bbox_padding)
        self.draft = draft
        # Parallel DataLoader workers and processes never see a half-written entry (atomic
        # renames), and the last writer simply wins.
        self._cache = ArrayCache(self.cache_dir, what="image")

    def load(self, path: str, bbox: Sequence[float] | None = None) -> np.ndarray:
        """(H, W, 3) uint8 RGB with min(H, W) == size."""
        crop = self._padded_box(bbox) if (self.crop_to_bbox and bbox is not None) else None
        key = self._cache_key(path, crop) if self._cache.enabled else None
        if key is not None:
            cached = self._cache.load(key)
            # A damaged or foreign entry is decoded again and overwritten.
            if cached is not None and cached.ndim == 3 and cached.dtype == np.uint8:
                return cached
        image = self._decode(path, crop)
        if key is not None:
            self._cache.save(key, image)
        return image

    def box_in_crop(self, path: str, bbox: Sequence[float] | None) -> tuple | None:
        """Where the box itself lies in the image `load` returns for it (the box grown by its padding,
        clipped to the photo): (left, top, right, bottom) as fractions of that image's width and
        height; None when nothing is cropped. Reads the file's header only."""
        if not (self.crop_to_bbox and bbox is not None):
            return None
        try:
            with Image.open(path) as img:
                width, height = img.size
                if img.getexif().get(ExifTags.Base.Orientation, 1) in _SWAPPING_ORIENTATIONS:
                    width, height = height, width
        except _DECODE_ERRORS as err:
            raise DataError(f"cannot read image {path}: {err}") from err
        left, top, right, bottom = _clip_box(self._padded_box(bbox), width, height, path)
        x, y, w, h = (float(v) for v in bbox)
        span_x, span_y = right - left, bottom - top
        return ((x - left) / span_x, (y - top) / span_y, (x + w - left) / span_x, (y + h - top) / span_y)

    def _padded_box(self, bbox: Sequence[float]) -> tuple:
        """[x, y, w, h] -> (left, top, right, bottom) grown by `bbox_padding` of w and h per side."""
        x, y, w, h = (float(v) for v in bbox)
        pad_x, pad_y = w * self.bbox_padding, h * self.bbox_padding
        return (x - pad_x, y - pad_y, x + w + pad_x, y + h + pad_y)

    def _cache_key(self, path: str, crop: tuple | None) -> str:
        try:
            identity = file_identity(path)
        except OSError as err:
            raise DataError(f"cannot read image {path}: {err.strerror or err}") from err
        crop_key = None if crop is None else tuple(round(v, 3) for v in crop)
        fit = () if self.fit == "short" else (self.fit,)  # keys of short-side entries stay as they were
        return hashlib.sha1(repr((CACHE_VERSION, *identity, self.size, crop_key, self.draft, *fit)).encode()).hexdigest()

    def _decode(self, path: str, crop: tuple | None) -> np.ndarray:
        try:
            with Image.open(path) as img:
                orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
                raw_w, raw_h = img.size
                full_w, full_h = (raw_h, raw_w) if orientation in _SWAPPING_ORIENTATIONS else (raw_w, raw_h)
                box = _clip_box(crop, full_w, full_h, path)
                fitted = min if self.fit == "short" else max
                reduction = fitted(box[2] - box[0], box[3] - box[1]) / self.size
                scale = 1.0
                if self.draft and reduction >= 2:
                    # draft() picks the largest JPEG scale (1/2, 1/4, 1/8) that stays at least this
                    # big; it returns None for other formats. The scale is uniform, so the EXIF
                    # turn applied afterwards does not change it.
                    drafted = img.draft("RGB", (math.ceil(raw_w / reduction), math.ceil(raw_h / reduction)))
                    if drafted is not None:
                        scale = raw_w / drafted[1][2]
                ImageOps.exif_transpose(img, in_place=True)
                # The box is in full-resolution pixels. The drafted image is ceil(W / scale) wide,
                # its last column a partial block, so divide by the exact scale, not by the sizes.
                box = tuple(v / scale for v in box)
                img = img if img.mode in ("RGB", "L") else _to_rgb(img)
                out = img.resize(self._target_size(box), Image.Resampling.BICUBIC, box=box,
                                 reducing_gap=_REDUCING_GAP)
                return np.array(_to_rgb(out))  # writable, like the cached arrays
        except DataError:
            raise
        except _DECODE_ERRORS as err:
            raise DataError(f"cannot read image {path}: {err}") from err

    def _target_size(self, box: tuple) -> tuple:
        w, h = box[2] - box[0], box[3] - box[1]
        if self.fit == "long":
            scale = min(1.0, self.size / max(w, h))
            return (max(1, round(w * scale)), max(1, round(h * scale)))
        scale = self.size / min(w, h)
        return (max(self.size, round(w * scale)), max(self.size, round(h * scale)))


def _clip_box(crop: tuple | None, width: int, height: int, path: str) -> tuple:
    """Crop box clipped to the image, or the whole image when there is no crop."""
    if crop is None:
        return (0.0, 0.0, float(width), float(height))
    left, top = max(0.0, crop[0]), max(0.0, crop[1])
    right, bottom = min(float(width), crop[2]), min(float(height), crop[3])
    if right - left < 1 or bottom - top < 1:
        raise DataError(f"bbox {list(crop)} (with padding) lies outside image {path} ({width}x{height})")
    return (left, top, right, bottom)


"""Camera sites for the synthetic generator's scene mode: the failure of camera-trap photos.

A camera trap photographs whichever animal walks past, always in front of the same ground, rocks
and vegetation, and stamps every frame with the same overlay (a brand bar, the site's name, the
time). Photos of *different* individuals at one site therefore share most of their keypoints, and
a matcher that counts them ranks the wrong animal first. With `data.synthetic.sites` set, each
individual lives at one or two of its species' sites, and each of its photos is taken at one of
them: the camera barely moves between photos (a few pixels), the animal's pose, scale and place
change, and so do the light and the time in the overlay.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from data.synthetic_draw import SEED_SITE, SEED_SITE_PICK, ellipse, jitter, smooth_noise
from data.synthetic_photo import background

SECOND_SITE = 0.5  # share of individuals seen at two sites (the others at one)
SITE_SHIFT = (6, 4)  # px a site's camera may move between photos: its ground is built this much larger
BAR_H = 22  # px of the overlay bar along the bottom of the frame
_ROCKS = (3, 6)  # large textured rocks per site
_TUFTS = (10, 22)  # grass tufts in front of the animals, along the bottom


@dataclass(frozen=True)
class Site:
    ground: np.ndarray  # (H + shift, W + shift, 3) float32: ground and rocks, behind the animals
    front: np.ndarray  # (H, W, 4) float32 premultiplied RGBA: vegetation in front of the animals
    name: str  # printed in the overlay


def individual_sites(seed: int, individual: int, sites: int) -> tuple[int, ...]:
    """The one or two sites (of its species' `sites`) where an individual is photographed."""
    rng = np.random.default_rng([seed, SEED_SITE_PICK, individual])
    first = int(rng.integers(sites))
    if sites < 2 or rng.random() >= SECOND_SITE:
        return (first,)
    return (first, (first + 1 + int(rng.integers(sites - 1))) % sites)


def photo_site(seed: int, individual: int, k: int, sites: int) -> int:
    """The site of photo `k` of an individual: one of its own sites."""
    own = individual_sites(seed, individual, sites)
    return own[int(np.random.default_rng([seed, SEED_SITE_PICK, individual, k]).integers(len(own)))]


def _rock(img: np.ndarray, rng: np.random.Generator, width: int, height: int) -> None:
    """A boulder: a shaded polygon with cracks and lichen spots, the kind of texture SIFT keys on."""
    centre = np.array([rng.uniform(0.05, 0.95) * width, rng.uniform(0.35, 0.95) * height])
    radius = rng.uniform(30, 80)
    angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(7, 12))))
    radii = radius * rng.uniform(0.6, 1.0, len(angles)) * np.array([1.0, 0.7])[:, None]
    outline = (centre + np.stack([np.cos(angles) * radii[0], np.sin(angles) * radii[1]], 1)).astype(np.int32)
    mask = np.zeros(img.shape[:2], np.uint8)
    cv2.fillPoly(mask, [outline], 255, cv2.LINE_AA)
    tone = jitter(rng, (128, 122, 112), 0.25)
    shade = 1 + 0.35 * smooth_noise(rng, (6, 8), (width, height))
    alpha = (mask.astype(np.float32) / 255)[..., None]
    img *= 1 - alpha
    img += alpha * np.clip(tone * shade[..., None], 0, 255)
    for _ in range(int(rng.integers(3, 8))):  # cracks
        start = centre + rng.uniform(-0.6, 0.6, 2) * radius
        end = start + rng.uniform(-0.5, 0.5, 2) * radius
        cv2.line(img, tuple(int(v) for v in start), tuple(int(v) for v in end), tuple(float(c) for c in tone * 0.45),
                 int(rng.integers(1, 3)), cv2.LINE_AA)
    for _ in range(int(rng.integers(6, 16))):  # lichen
        spot = centre + rng.uniform(-0.7, 0.7, 2) * radius * (1.0, 0.6)
        if mask[int(np.clip(spot[1], 0, height - 1)), int(np.clip(spot[0], 0, width - 1))]:
            ellipse(img, spot, rng.uniform(2, 7, 2), rng.uniform(0, 180), tuple(float(c) for c in jitter(rng, (170, 168, 120), 0.2)))


def _front(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Grass tufts and a bush along the bottom, premultiplied RGBA: they hide part of any animal there."""
    colour = np.zeros((height, width, 3), np.float32)
    alpha = np.zeros((height, width), np.float32)
    for _ in range(int(rng.integers(*_TUFTS))):
        root = np.array([rng.uniform(0, width), height - BAR_H - rng.uniform(0, 12)])
        blade_colour = tuple(float(c) for c in jitter(rng, (90, 124, 54), 0.3))
        for _ in range(int(rng.integers(4, 10))):
            tip = root + (rng.uniform(-30, 30), -rng.uniform(25, 90))
            bend = (root + tip) / 2 + (rng.uniform(-10, 10), 0)
            pts = np.array([root, bend, tip], np.int32)
            thickness = int(rng.integers(2, 4))
            cv2.polylines(colour, [pts], False, blade_colour, thickness, cv2.LINE_AA)
            cv2.polylines(alpha, [pts], False, 1.0, thickness, cv2.LINE_AA)
    corner = rng.uniform(0, 1) < 0.5
    bush = np.array([20.0 if corner else width - 20.0, height - BAR_H - 30.0])
    for _ in range(int(rng.integers(20, 40))):  # leaves of a bush in one bottom corner
        leaf = bush + rng.uniform(-60, 60, 2) * (1.0, 0.8)
        leaf_colour = tuple(float(c) for c in jitter(rng, (60, 96, 40), 0.3))
        axes, angle = rng.uniform(5, 14, 2), rng.uniform(0, 180)
        ellipse(colour, leaf, axes, angle, leaf_colour)
        ellipse(alpha, leaf, axes, angle, 1.0)
    return np.dstack([colour * alpha[..., None], alpha * 255])


@functools.lru_cache(maxsize=64)
def site(seed: int, group: int, index: int, size: tuple[int, int]) -> Site:
    """Site `index` of species group `group` for frames of `size` (width, height); read-only arrays."""
    width, height = size
    rng = np.random.default_rng([seed, SEED_SITE, group, index])
    ground = background(rng, (width + SITE_SHIFT[0], height + SITE_SHIFT[1])).astype(np.float32)
    for _ in range(int(rng.integers(*_ROCKS))):
        _rock(ground, rng, width + SITE_SHIFT[0], height + SITE_SHIFT[1])
    front = _front(rng, width, height)
    ground.flags.writeable = False
    front.flags.writeable = False
    return Site(ground, front, f"SITE {group + 1}{index:02d}")


def site_view(rng: np.random.Generator, place: Site, size: tuple[int, int]) -> np.ndarray:
    """A frame-sized float32 cut of the site's ground, the camera moved by a few pixels."""
    dx, dy = int(rng.integers(SITE_SHIFT[0] + 1)), int(rng.integers(SITE_SHIFT[1] + 1))
    return place.ground[dy:dy + size[1], dx:dx + size[0]].copy()


def in_front(frame: np.ndarray, place: Site) -> None:
    """The site's vegetation laid over the float32 frame, in place."""
    frame *= 1 - place.front[..., 3:] / 255
    frame += place.front[..., :3]


def overlay(photo: np.ndarray, rng: np.random.Generator, place: Site) -> None:
    """The camera's stamp, in place: a dark bar with the brand, the site and this photo's time and
    temperature, as camera traps print them (the same on every photo of a site but the time)."""
    height, width = photo.shape[:2]
    photo[height - BAR_H:] = (18, 18, 18)
    baseline = height - 6
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(photo, "TRAILCAM PRO", (6, baseline), font, 0.45, (235, 235, 235), 1, cv2.LINE_AA)
    cv2.putText(photo, place.name, (140, baseline), font, 0.45, (235, 235, 235), 1, cv2.LINE_AA)
    stamp = (f"{int(rng.integers(1, 29)):02d}/{int(rng.integers(1, 13)):02d}/20{int(rng.integers(15, 24))} "
             f"{int(rng.integers(24)):02d}:{int(rng.integers(60)):02d}:{int(rng.integers(60)):02d}  "
             f"{int(rng.integers(2, 34))}C")
    cv2.putText(photo, stamp, (width - 250, baseline), font, 0.45, (235, 235, 235), 1, cv2.LINE_AA)
    cv2.rectangle(photo, (width - 40, 6), (width - 8, 22), (235, 235, 235), 1)  # the battery sign
    cv2.rectangle(photo, (width - 38, 8), (width - 38 + int(rng.integers(4, 28)), 20), (235, 235, 235), -1)

"""The synthetic generator's photos: one sprite placed in a cluttered scene and photographed.

Every photo is a new view of the sprite: perspective warp, rotation and scale, a random place in a
cluttered frame, occluding grass or a branch, lighting, blur, noise. Pixel-space nearest
neighbours therefore do poorly while keypoint matching and trained embedders can find the pattern.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from data.synthetic_draw import ellipse, jitter, smooth_noise

FRAME_W, FRAME_H = 384, 288

_SCENES = (  # pairs of ground colours: grass, forest floor, rock, sand, snow-and-mud
    ((82, 112, 52), (132, 140, 70)),
    ((92, 70, 46), (60, 74, 40)),
    ((118, 116, 110), (84, 86, 80)),
    ((188, 168, 124), (150, 128, 92)),
    ((208, 210, 214), (110, 96, 80)),
)
_YY, _XX = np.mgrid[0:FRAME_H, 0:FRAME_W].astype(np.float32)
_XX = _XX / FRAME_W - 0.5
_YY = _YY / FRAME_H - 0.5


def _background(rng: np.random.Generator) -> np.ndarray:
    near, far = (jitter(rng, c, 0.15) for c in _SCENES[rng.integers(len(_SCENES))])
    size = (FRAME_W, FRAME_H)
    mix = np.clip(0.5 + 0.6 * smooth_noise(rng, (3, 4), size), 0, 1)[..., None]
    img = near * (1 - mix) + far * mix
    img += (22 * smooth_noise(rng, (24, 32), size) + 9 * smooth_noise(rng, (72, 96), size))[..., None]
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(15, 40))):  # clutter: stones, twigs, leaves and spot-like blobs
        kind = rng.integers(4)
        colour = tuple(float(c) for c in np.clip((near if rng.random() < 0.5 else far) * rng.uniform(0.4, 1.4), 0, 255))
        x, y = rng.uniform(0, FRAME_W), rng.uniform(0, FRAME_H)
        if kind == 0:
            ellipse(img, (x, y), rng.uniform(4, 28, 2), rng.uniform(0, 180), colour)
        elif kind == 1:
            end = (int(x + rng.uniform(-80, 80)), int(y + rng.uniform(-80, 80)))
            cv2.line(img, (int(x), int(y)), end, colour, int(rng.integers(1, 5)), cv2.LINE_AA)
        elif kind == 2:
            corners = np.array([(x, y)] * 4) + rng.uniform(-20, 20, (4, 2))
            cv2.fillPoly(img, [corners.astype(np.int32)], colour, cv2.LINE_AA)
        else:
            ellipse(img, (x, y), rng.uniform(2, 8, 2), rng.uniform(0, 180), (40, 32, 24))
    sigma = rng.uniform(0, 2.5)  # depth of field
    return cv2.GaussianBlur(img, (0, 0), sigma) if sigma > 0.4 else img


def _placement(rng: np.random.Generator, w: int, h: int, max_rotation: float) -> np.ndarray:
    """Homography from the sprite to a random view of it inside the frame."""
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    scale = rng.uniform(0.42, 0.82) * FRAME_W / w
    angle = math.radians(rng.uniform(-max_rotation, max_rotation))
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    perspective = rng.uniform(-0.09, 0.09, (4, 2)) * (w, h)  # each corner moves on its own
    pts = ((src - (w / 2, h / 2) + perspective) * scale) @ rotation.T
    span = pts.max(0) - pts.min(0)
    pts *= min(1.0, (FRAME_W - 10) / span[0], (FRAME_H - 10) / span[1])  # 1 px slack for rounding
    low, high = pts.min(0), pts.max(0)
    offset = rng.uniform((4 - low[0], 4 - low[1]), (FRAME_W - 4 - high[0], FRAME_H - 4 - high[1]))
    return cv2.getPerspectiveTransform(src, (pts + offset).astype(np.float32))


def _occlude(img: np.ndarray, rng: np.random.Generator, box: tuple[int, int, int, int]) -> None:
    """Grass in front of the lower body, or a branch across it."""
    x, y, w, h = box
    kind = rng.random()
    if kind < 0.25:
        for _ in range(int(rng.integers(6, 18))):
            root = (rng.uniform(x - 10, x + w + 10), y + h + rng.uniform(0, 10))
            tip = (root[0] + rng.uniform(-25, 25), y + h - rng.uniform(0.15, 0.55) * h)
            bend = ((root[0] + tip[0]) / 2 + rng.uniform(-8, 8), (root[1] + tip[1]) / 2)
            colour = tuple(float(c) for c in jitter(rng, (96, 132, 58), 0.3))
            pts = np.array([root, bend, tip], np.int32)
            cv2.polylines(img, [pts], False, colour, int(rng.integers(2, 5)), cv2.LINE_AA)
    elif kind < 0.4:
        start = (x + rng.uniform(-0.2, 0.4) * w, y + rng.uniform(0, 1) * h)
        end = (x + rng.uniform(0.6, 1.2) * w, y + rng.uniform(0, 1) * h)
        colour = tuple(float(c) for c in jitter(rng, (84, 62, 40), 0.25))
        middle = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + rng.uniform(-15, 15))
        cv2.polylines(img, [np.array([start, middle, end], np.int32)], False, colour,
                      int(rng.integers(5, 12)), cv2.LINE_AA)
        for _ in range(int(rng.integers(1, 4))):
            t = rng.uniform(0.2, 0.9)
            fork = (start[0] + t * (end[0] - start[0]), start[1] + t * (end[1] - start[1]))
            twig = (fork[0] + rng.uniform(-30, 30), fork[1] + rng.uniform(-35, 35))
            cv2.line(img, (int(fork[0]), int(fork[1])), (int(twig[0]), int(twig[1])), colour, 3, cv2.LINE_AA)


def _lighting(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour cast and a light gradient across the frame, then brightness, contrast and gamma."""
    angle = rng.uniform(0, 2 * math.pi)
    gradient = 1 + rng.uniform(0, 0.3) * (_XX * math.cos(angle) + _YY * math.sin(angle))
    cast = rng.uniform(0.94, 1.06, 3).astype(np.float32)
    lit = np.clip(img.astype(np.float32) * gradient[..., None] * cast, 0, 255).astype(np.uint8)
    levels = np.arange(256, dtype=np.float32) / 255
    curve = (levels ** rng.uniform(0.85, 1.2) - 0.5) * rng.uniform(0.85, 1.15) + 0.5 + rng.uniform(-0.07, 0.07)
    return cv2.LUT(lit, np.clip(curve * 255, 0, 255).astype(np.uint8))


def _camera(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Defocus or motion blur, then sensor noise."""
    kind = rng.random()
    if kind < 0.4:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.3))
    elif kind < 0.55:
        length = int(rng.integers(3, 8))
        kernel = np.zeros((length, length), np.float32)
        angle = rng.uniform(0, math.pi)
        c = (length - 1) / 2
        dx, dy = c * math.cos(angle), c * math.sin(angle)
        cv2.line(kernel, (int(round(c - dx)), int(round(c - dy))), (int(round(c + dx)), int(round(c + dy))), 1.0)
        img = cv2.filter2D(img, -1, kernel / kernel.sum())
    noise = rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(1.5, 7)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def render_photo(sprite: np.ndarray, rng: np.random.Generator, max_rotation: float) -> tuple[np.ndarray, list[int]]:
    """One RGB photo of a premultiplied RGBA sprite and the [x, y, w, h] box around the animal."""
    h, w = sprite.shape[:2]
    warped = cv2.warpPerspective(sprite, _placement(rng, w, h, max_rotation), (FRAME_W, FRAME_H), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    alpha = warped[..., 3:].astype(np.float32) / 255
    frame = _background(rng).astype(np.float32) * (1 - alpha) + warped[..., :3]
    frame = np.clip(frame, 0, 255).astype(np.uint8)
    box = cv2.boundingRect((warped[..., 3] > 127).astype(np.uint8))
    _occlude(frame, rng, box)
    return _camera(_lighting(frame, rng), rng), [int(v) for v in box]


"""The built-in synthetic re-identification dataset, written in AnimalCLEF 2025 format.

Each individual is an animal-like sprite whose species fixes the body shape and whose identity
lives in its coat: a tint of the species colour and a pattern style shared by both flanks (how
many spots and how large, how much yellow, how many scutes), and the exact layout of the marks,
a different one on each flank, as on real animals. Pattern elements are large enough to survive
a 64-px thumbnail of the animal, so a small CNN can learn them. Each sprite is rendered once at a
resolution where local keypoints survive, then every photo is a new view of it: perspective
warp, rotation and scale, a random place in a cluttered frame, occluding grass or a branch,
lighting, blur, noise and JPEG. Pixel-space nearest neighbours therefore do poorly while
keypoint matching and trained embedders can find the pattern.

Every random draw comes from a generator seeded by (seed, purpose, individual, photo), so the
files are byte-identical for the same arguments whatever the number of worker processes.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from core.errors import ConfigError
from core.paths import cache_base

try:
    import fcntl
except ImportError:  # no advisory locks (Windows): the atomic rename alone keeps results whole
    fcntl = None

FRAME_W, FRAME_H = 384, 288
SPRITE_W, SPRITE_H = 400, 200
JPEG_QUALITY = 90
GENERATOR_VERSION = 2
MARKER = "SYNTHETIC_COMPLETE.json"  # written last: its presence means the dataset is whole
NEW_FRACTION = 0.2  # of each group's individuals, seen only in the query split
QUERY_FRACTION = 0.2  # of a known individual's photos (its latest ones) put in the query split
CSV_COLUMNS = ["image_id", "identity", "path", "date", "orientation", "species", "split", "dataset", "bbox"]

# Seed purposes, so that no two kinds of draw ever share a random stream.
_PLAN, _BODY, _COAT, _PHOTO = 0, 1, 2, 3
_SIDES = ("left", "right")

Colour = tuple[float, float, float]


# ----------------------------------------------------------------------------- sprite helpers


def _jitter(rng: np.random.Generator, rgb: Colour, spread: float) -> np.ndarray:
    """A colour near `rgb`: one brightness factor plus a small per-channel tint."""
    value = rng.uniform(1 - spread, 1 + spread)
    tint = rng.uniform(1 - spread / 3, 1 + spread / 3, 3)
    return np.clip(np.asarray(rgb, np.float32) * value * tint, 0, 255).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, cells: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Zero-mean noise with features about size/cells wide: a small random grid upsampled."""
    grid = rng.standard_normal(cells).astype(np.float32)
    return cv2.resize(grid, size, interpolation=cv2.INTER_CUBIC)


def _fur(rng: np.random.Generator, amplitude: float, streak: int) -> np.ndarray:
    """Fine grain of hair or skin, smeared along the body axis."""
    grain = rng.standard_normal((SPRITE_H, SPRITE_W)).astype(np.float32)
    return cv2.blur(grain, (streak, 1)) * amplitude


def _roundness(mask: np.ndarray, depth: float) -> np.ndarray:
    """Shading factor that darkens the silhouette towards its outline, so the body reads as 3-D."""
    dist = cv2.distanceTransform((mask > 127).astype(np.uint8), cv2.DIST_L2, 5)
    return 0.6 + 0.4 * np.clip(dist / depth, 0, 1) ** 0.6


def _paint(rgb: np.ndarray, layer: np.ndarray, colour: np.ndarray) -> None:
    """Blend `colour` into `rgb` where the 0..255 coverage `layer` is set."""
    alpha = (layer.astype(np.float32) / 255)[..., None]
    rgb *= 1 - alpha
    rgb += alpha * colour


def _voronoi_labels(points: np.ndarray) -> np.ndarray:
    """Label of the nearest of `points` for every sprite pixel (cells of a Voronoi diagram)."""
    seeds = np.full((SPRITE_H, SPRITE_W), 255, np.uint8)
    xy = np.round(points).astype(int)
    seeds[np.clip(xy[:, 1], 0, SPRITE_H - 1), np.clip(xy[:, 0], 0, SPRITE_W - 1)] = 0
    _, labels = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    return labels


def _cell_edges(labels: np.ndarray) -> np.ndarray:
    edges = np.zeros(labels.shape, np.uint8)
    edges[:, 1:] |= (labels[:, 1:] != labels[:, :-1]).astype(np.uint8)
    edges[1:, :] |= (labels[1:, :] != labels[:-1, :]).astype(np.uint8)
    return cv2.dilate(edges * 255, np.ones((2, 2), np.uint8))


def _points_in(mask: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    """Up to `count` uniform points inside the mask (rejection sampling in its bounding box)."""
    x, y, w, h = cv2.boundingRect((mask > 127).astype(np.uint8))
    xy = rng.uniform((x, y), (x + w, y + h), (count * 3, 2))
    inside = mask[xy[:, 1].astype(int), xy[:, 0].astype(int)] > 127
    return xy[inside][:count]


def _limb(mask: np.ndarray, points: list[tuple[float, float]], thickness: int) -> None:
    pts = [(int(round(x)), int(round(y))) for x, y in points]
    for a, b in itertools.pairwise(pts):
        cv2.line(mask, a, b, 255, thickness, cv2.LINE_AA)


def _ellipse(img: np.ndarray, centre, axes, angle: float, colour, thickness: int = -1) -> None:
    cv2.ellipse(img, (int(round(centre[0])), int(round(centre[1]))),
                (max(1, int(round(axes[0]))), max(1, int(round(axes[1])))),
                angle, 0, 360, colour, thickness, cv2.LINE_AA)


# ----------------------------------------------------------------------------- species


def _lynx(body: np.random.Generator, coat: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A bob-tailed spotted cat: spots and rosettes over a tawny coat with a paler belly."""
    length, height, head = body.uniform(0.94, 1.06, 3)
    legs = body.uniform(-6, 6, 4)
    base, belly = _jitter(body, (190, 150, 105), 0.15), _jitter(body, (226, 208, 178), 0.05)
    spot = _jitter(body, (62, 42, 28), 0.1)
    mask = np.zeros((SPRITE_H, SPRITE_W), np.uint8)
    _ellipse(mask, (185, 95), (118 * length, 44 * height), 0, 255)
    _ellipse(mask, (282, 78), (40, 28), -35, 255)
    _ellipse(mask, (318, 64), (32 * head, 30 * head), 0, 255)
    _ellipse(mask, (346, 76), (17 * head, 12 * head), 0, 255)
    for ear in ([(298, 44), (306, 12), (318, 38)], [(320, 36), (334, 10), (342, 42)]):
        cv2.fillPoly(mask, [np.array(ear, np.int32)], 255, cv2.LINE_AA)
    bottom = 95 + 44 * height - 18
    for x, dx in zip((108, 128, 238, 258), legs, strict=True):
        _limb(mask, [(x, bottom), (x + dx, 183)], 17)
        _ellipse(mask, (x + dx + 3, 185), (11, 7), 0, 255)
    _limb(mask, [(74, 82), (50, 68)], 14)

    rgb = np.empty((SPRITE_H, SPRITE_W, 3), np.float32)
    rgb[:] = base
    belly_layer = np.clip((np.arange(SPRITE_H, dtype=np.float32) - 100) / 40, 0, 1)[:, None] * 200
    _paint(rgb, np.broadcast_to(belly_layer, mask.shape), belly)
    # The individual's style, the same on both flanks: how many spots, how large, how many rosettes.
    count, size, rosettes = int(body.integers(14, 56)), body.uniform(5, 15), body.uniform(0, 0.6)
    spots = np.zeros(mask.shape, np.uint8)
    for (x, y) in _points_in(mask, coat, count):
        a, b = size * coat.uniform(0.7, 1.3), size * coat.uniform(0.5, 0.9)
        strength = int(coat.uniform(170, 255))
        if coat.random() < rosettes:  # rosette: an open ring of dark marks
            _ellipse(spots, (x, y), (a + 3, b + 3), coat.uniform(0, 180), strength, 5)
        else:
            _ellipse(spots, (x, y), (a, b), coat.uniform(0, 180), strength)
    _paint(rgb, spots, spot)
    marks = np.zeros(mask.shape, np.uint8)  # species marks every lynx shares
    _limb(marks, [(60, 74), (48, 67)], 14)
    for tuft in ([(306, 12), (305, 3)], [(334, 10), (335, 1)]):
        _limb(marks, tuft, 3)
        _limb(mask, tuft, 3)
    _ellipse(marks, (328, 58), (5, 4), 0, 255)
    _ellipse(marks, (360, 72), (5, 4), 0, 255)
    _paint(rgb, marks, np.array((20, 16, 12), np.float32))
    rgb = rgb * _roundness(mask, 20)[..., None] + _fur(coat, 10, 5)[..., None]
    return rgb, mask


def _salamander(body: np.random.Generator, coat: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A fire-salamander-like body: yellow blotches of organic shape on glossy black skin."""
    length, height, head = body.uniform(0.94, 1.06, 3)
    base, blotch = _jitter(body, (38, 33, 30), 0.1), _jitter(body, (236, 186, 38), 0.12)
    mask = np.zeros((SPRITE_H, SPRITE_W), np.uint8)
    _ellipse(mask, (205, 100), (108 * length, 28 * height), 0, 255)
    _ellipse(mask, (318, 98), (36 * head, 25 * head), 0, 255)
    wave = body.uniform(4, 10)
    for t in np.linspace(0, 1, 40):  # a tapering, gently curved tail
        x = 110 - 100 * t
        y = 102 + wave * math.sin(3.2 * t + 0.5) * t
        _ellipse(mask, (x, y), (22 * (1 - t) + 3, 22 * (1 - t) + 3), 0, 255)
    for x, sign in ((145, -1), (165, 1), (262, -1), (282, 1)):
        _limb(mask, [(x, 110), (x + 14 * sign, 140), (x + 22 * sign, 150)], 10)

    # Blotches a head wide or more: coarse enough to survive a 64-px thumbnail.
    cells = body.uniform(0.6, 1.4)  # the individual's blotch size
    field = (_smooth_noise(coat, (max(2, round(7 * cells)), max(4, round(16 * cells))), (SPRITE_W, SPRITE_H))
             + 0.4 * _smooth_noise(coat, (14, 32), (SPRITE_W, SPRITE_H)))
    threshold = np.quantile(field[mask > 127], body.uniform(0.4, 0.8))  # the individual's share of yellow
    blotches = (np.clip((field - threshold) / 0.08, 0, 1) * 255).astype(np.uint8)
    for (x, y) in _points_in(mask, coat, int(coat.integers(4, 10))):
        _ellipse(blotches, (x, y), (coat.uniform(4, 8), coat.uniform(4, 8)), 0, 255)
    rgb = np.empty((SPRITE_H, SPRITE_W, 3), np.float32)
    rgb[:] = base
    _paint(rgb, blotches, blotch)
    marks = np.zeros(mask.shape, np.uint8)
    _ellipse(marks, (330, 88), (7, 6), 0, 255)
    _paint(rgb, marks, np.array((10, 10, 10), np.float32))
    rgb = rgb * _roundness(mask, 14)[..., None] + _fur(coat, 5, 2)[..., None]
    return rgb, mask


def _turtle(body: np.random.Generator, coat: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A sea-turtle-like body: shell of scutes with streaks, head and flippers of small scales."""
    length, height, head = body.uniform(0.94, 1.06, 3)
    shell_colour, skin_colour = _jitter(body, (116, 84, 48), 0.15), _jitter(body, (150, 132, 98), 0.08)
    plastron_colour = _jitter(body, (212, 192, 140), 0.05)
    shell = np.zeros((SPRITE_H, SPRITE_W), np.uint8)
    _ellipse(shell, (190, 128), (128 * length, 86 * height), 0, 255)
    shell[128:] = 0
    plastron = np.zeros_like(shell)
    _ellipse(plastron, (190, 128), (120 * length, 13), 0, 255)
    skin = np.zeros_like(shell)
    _ellipse(skin, (300, 124), (34, 15), -10, 255)
    _ellipse(skin, (340, 116), (31 * head, 21 * head), -8, 255)
    _ellipse(skin, (262, 150), (50, 13), 32, 255)
    _ellipse(skin, (100, 142), (34, 11), -28, 255)
    mask = np.maximum(np.maximum(shell, plastron), skin)

    rgb = np.empty((SPRITE_H, SPRITE_W, 3), np.float32)
    rgb[:] = skin_colour
    scute_seeds = _points_in(shell, coat, int(body.integers(8, 24)))
    scutes = _voronoi_labels(scute_seeds)
    contrast, streakiness = body.uniform(0.1, 0.45), int(body.integers(0, 4))
    tones = coat.uniform(1 - contrast, 1 + contrast, scutes.max() + 1).astype(np.float32)
    in_shell = shell > 127
    rgb[in_shell] = shell_colour * tones[scutes[in_shell]][:, None]
    streaks = np.zeros(shell.shape, np.uint8)
    for (x, y) in scute_seeds:
        for _ in range(int(coat.integers(0, 2 * streakiness + 1))):
            angle, reach = coat.uniform(0, 2 * math.pi), coat.uniform(14, 34)
            end = (int(x + reach * math.cos(angle)), int(y + reach * math.sin(angle)))
            cv2.line(streaks, (int(x), int(y)), end, int(coat.uniform(180, 255)), 5, cv2.LINE_AA)
    _paint(rgb, np.minimum(streaks, shell), np.array((52, 34, 20), np.float32))
    _paint(rgb, np.minimum(_cell_edges(scutes), shell), np.array((218, 196, 140), np.float32))
    grid = np.stack(np.meshgrid(np.arange(0, SPRITE_W, 11.0), np.arange(0, SPRITE_H, 11.0)), -1).reshape(-1, 2)
    scale_seeds = grid + coat.uniform(-4.5, 4.5, grid.shape)
    scales = _voronoi_labels(scale_seeds)
    scale_tones = coat.uniform(0.75, 1.2, scales.max() + 1).astype(np.float32)
    in_skin = (skin > 127) & ~in_shell
    rgb[in_skin] *= scale_tones[scales[in_skin]][:, None]
    _paint(rgb, np.minimum(_cell_edges(scales), skin), np.array((58, 46, 32), np.float32))
    _paint(rgb, np.where(in_shell, 0, plastron).astype(np.uint8), plastron_colour)
    marks = np.zeros(mask.shape, np.uint8)
    _ellipse(marks, (352, 108), (5, 4), 0, 255)
    _paint(rgb, marks, np.array((12, 10, 8), np.float32))
    rgb = rgb * _roundness(mask, 22)[..., None] + _fur(coat, 4, 2)[..., None]
    return rgb, mask


@dataclass(frozen=True)
class Group:
    dataset: str
    species: str
    render: Callable[[np.random.Generator, np.random.Generator], tuple[np.ndarray, np.ndarray]]
    max_rotation: float  # degrees either way: walkers stay upright, salamanders lie at any angle


GROUPS = (
    Group("SynthLynx", "lynx", _lynx, 25),
    Group("SynthSalamander", "salamander", _salamander, 45),
    Group("SynthTurtle", "loggerhead turtle", _turtle, 30),
)


def _sprite(group: Group, seed: int, individual: int, side: str) -> np.ndarray:
    """Premultiplied RGBA uint8 image of one flank, cropped to the animal, facing towards that side."""
    body = np.random.default_rng([seed, _BODY, individual])  # same shape and colour on both flanks
    coat = np.random.default_rng([seed, _COAT, individual, _SIDES.index(side)])
    rgb, mask = group.render(body, coat)
    mask = cv2.GaussianBlur(mask, (3, 3), 0)  # anti-aliased outline
    rgb = cv2.GaussianBlur(np.clip(rgb, 0, 255), (3, 3), 0.6)
    premultiplied = (rgb * (mask[..., None] / 255.0)).astype(np.uint8)
    rgba = np.dstack([premultiplied, mask])
    x, y, w, h = cv2.boundingRect((mask > 0).astype(np.uint8))
    rgba = rgba[max(0, y - 4): y + h + 4, max(0, x - 4): x + w + 4]
    # Sprites face right; the left flank is seen with the animal facing left.
    return np.ascontiguousarray(rgba[:, ::-1] if side == "left" else rgba)


# ----------------------------------------------------------------------------- photos

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
    near, far = (_jitter(rng, c, 0.15) for c in _SCENES[rng.integers(len(_SCENES))])
    size = (FRAME_W, FRAME_H)
    mix = np.clip(0.5 + 0.6 * _smooth_noise(rng, (3, 4), size), 0, 1)[..., None]
    img = near * (1 - mix) + far * mix
    img += (22 * _smooth_noise(rng, (24, 32), size) + 9 * _smooth_noise(rng, (72, 96), size))[..., None]
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(15, 40))):  # clutter: stones, twigs, leaves and spot-like blobs
        kind = rng.integers(4)
        colour = tuple(float(c) for c in np.clip((near if rng.random() < 0.5 else far) * rng.uniform(0.4, 1.4), 0, 255))
        x, y = rng.uniform(0, FRAME_W), rng.uniform(0, FRAME_H)
        if kind == 0:
            _ellipse(img, (x, y), rng.uniform(4, 28, 2), rng.uniform(0, 180), colour)
        elif kind == 1:
            end = (int(x + rng.uniform(-80, 80)), int(y + rng.uniform(-80, 80)))
            cv2.line(img, (int(x), int(y)), end, colour, int(rng.integers(1, 5)), cv2.LINE_AA)
        elif kind == 2:
            corners = np.array([(x, y)] * 4) + rng.uniform(-20, 20, (4, 2))
            cv2.fillPoly(img, [corners.astype(np.int32)], colour, cv2.LINE_AA)
        else:
            _ellipse(img, (x, y), rng.uniform(2, 8, 2), rng.uniform(0, 180), (40, 32, 24))
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
            colour = tuple(float(c) for c in _jitter(rng, (96, 132, 58), 0.3))
            pts = np.array([root, bend, tip], np.int32)
            cv2.polylines(img, [pts], False, colour, int(rng.integers(2, 5)), cv2.LINE_AA)
    elif kind < 0.4:
        start = (x + rng.uniform(-0.2, 0.4) * w, y + rng.uniform(0, 1) * h)
        end = (x + rng.uniform(0.6, 1.2) * w, y + rng.uniform(0, 1) * h)
        colour = tuple(float(c) for c in _jitter(rng, (84, 62, 40), 0.25))
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


# ----------------------------------------------------------------------------- the dataset plan


@dataclass(frozen=True)
class _Photo:
    image_id: int
    k: int  # index of the photo in the individual's life, which seeds its view
    orientation: str
    split: str
    date: str
    path: str


@dataclass(frozen=True)
class _Individual:
    index: int
    group: int
    identity: str
    photos: tuple[_Photo, ...]


def _plan(seed: int, individuals: int, images_per_individual: int) -> list[_Individual]:
    """Who is who: groups, new individuals, dates, flanks, splits, shuffled image ids and paths."""
    rng = np.random.default_rng([seed, _PLAN])
    members = [list(range(g, individuals, len(GROUPS))) for g in range(len(GROUPS))]
    new: set[int] = set()
    for group_members in members:
        if len(group_members) >= 2:  # keep at least one known individual per group
            count = min(len(group_members) - 1, max(1, round(NEW_FRACTION * len(group_members))))
            new.update(int(i) for i in rng.choice(group_members, count, replace=False))
    m = images_per_individual
    image_ids = rng.permutation(individuals * m)  # ids carry no hint of identity
    n_query = 0 if m == 1 else min(m - 1, max(1, round(QUERY_FRACTION * m)))
    plan = []
    for index in range(individuals):
        group = index % len(GROUPS)
        first = date(2015, 1, 1) + timedelta(days=int(rng.integers(0, 6 * 365)))
        days = np.cumsum(rng.integers(1, 90, m))
        sides = rng.integers(0, 2, m)
        photos = []
        for k in range(m):
            split = "query" if index in new or k >= m - n_query else "database"
            image_id = int(image_ids[index * m + k])
            photos.append(_Photo(image_id, k, _SIDES[sides[k]], split,
                                 (first + timedelta(days=int(days[k]))).isoformat(),
                                 f"images/{GROUPS[group].dataset}/{split}/{image_id:06d}.jpg"))
        identity = f"{GROUPS[group].dataset}_{GROUPS[group].species.split()[-1]}_{index // len(GROUPS):04d}"
        plan.append(_Individual(index, group, identity, tuple(photos)))
    return plan


def _render_individual(task: tuple[int, _Individual, str]) -> list[list[int]]:
    """Write every photo of one individual; return their boxes in photo order."""
    seed, individual, root = task
    group = GROUPS[individual.group]
    sprites: dict[str, np.ndarray] = {}
    boxes = []
    for photo in individual.photos:
        if photo.orientation not in sprites:
            sprites[photo.orientation] = _sprite(group, seed, individual.index, photo.orientation)
        rng = np.random.default_rng([seed, _PHOTO, individual.index, photo.k])
        rgb, box = render_photo(sprites[photo.orientation], rng, group.max_rotation)
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {photo.path}")
        Path(root, photo.path).write_bytes(encoded.tobytes())
        boxes.append(box)
    return boxes


def _single_threaded_cv2() -> None:
    cv2.setNumThreads(1)  # parallelism comes from `workers`; OpenCV's own threads would oversubscribe


@contextlib.contextmanager
def _cv2_threads(count: int) -> Iterator[None]:
    previous = cv2.getNumThreads()
    cv2.setNumThreads(count)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


def _marker(seed: int, individuals: int, images_per_individual: int) -> dict:
    return {"generator": "reidzoo.synthetic", "version": GENERATOR_VERSION, "seed": seed,
            "individuals": individuals, "images_per_individual": images_per_individual}


def _is_complete(root: Path, expected: dict) -> bool:
    try:
        return (root / "metadata.csv").is_file() and json.loads((root / MARKER).read_text()) == expected
    except (OSError, ValueError):
        return False


def _check_arguments(seed: int, **counts: int) -> None:
    for name, value in {"seed": seed, **counts}.items():
        lowest = 0 if name == "seed" else 1
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lowest:
            raise ConfigError(f"synthetic dataset: {name} must be an integer >= {lowest}, got {value!r}")


def generate(out: str | Path, *, seed: int = 0, individuals: int = 120, images_per_individual: int = 12,
             workers: int = 1, progress: bool = True) -> Path:
    """Write the synthetic dataset to `out` (metadata.csv + images/) and return its path.

    The dataset is built in a temporary folder next to `out` and renamed into place, so an
    interrupted run never leaves half a dataset. An existing synthetic dataset at `out` is
    replaced; any other non-empty folder is refused.
    """
    _check_arguments(seed, individuals=individuals, images_per_individual=images_per_individual, workers=workers)
    out = Path(out).expanduser().absolute()
    if out.exists() and not (out / MARKER).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not a synthetic dataset written by this generator; "
                          "choose a new or empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    plan = _plan(seed, individuals, images_per_individual)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's private 0700 would follow the rename and lock other users out
        for folder in sorted({Path(photo.path).parent for individual in plan for photo in individual.photos}):
            (tmp / folder).mkdir(parents=True)
        tasks = [(seed, individual, str(tmp)) for individual in plan]
        bar = tqdm(total=individuals * images_per_individual, desc="synthetic images", unit="img",
                   disable=not progress)
        results = []
        with _cv2_threads(1), bar, contextlib.ExitStack() as stack:
            rendered: Iterator[list[list[int]]] = map(_render_individual, tasks)
            if workers > 1:
                context = multiprocessing.get_context("spawn")  # fork is unsafe once torch holds threads
                pool = stack.enter_context(context.Pool(workers, initializer=_single_threaded_cv2))
                rendered = pool.imap(_render_individual, tasks, chunksize=4)  # in order: same files
            for boxes in rendered:
                results.append(boxes)
                bar.update(len(boxes))
        rows = []
        for individual, boxes in zip(plan, results, strict=True):
            group = GROUPS[individual.group]
            for photo, box in zip(individual.photos, boxes, strict=True):
                rows.append({"image_id": photo.image_id, "identity": individual.identity, "path": photo.path,
                             "date": photo.date, "orientation": photo.orientation, "species": group.species,
                             "split": photo.split, "dataset": group.dataset,
                             "bbox": json.dumps(box)})
        table = pd.DataFrame(rows, columns=CSV_COLUMNS).sort_values("image_id")
        table.to_csv(tmp / "metadata.csv", index=False, lineterminator="\n")
        (tmp / MARKER).write_text(json.dumps(_marker(seed, individuals, images_per_individual), indent=1) + "\n")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder to `out`, setting aside a previous dataset there first."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, old / "dataset")
    try:
        os.rename(tmp, out)
    except OSError:
        if not (out / MARKER).is_file():  # someone else's complete dataset may have won a race
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- the cache


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_synthetic(root: str = "", *, seed: int = 0, individuals: int = 120,
                     images_per_individual: int = 12) -> Path:
    """Path of a complete synthetic dataset for these arguments, generated on first use.

    `root` "" means the cache (`cache_base()/synthetic/s{seed}-n{individuals}-m{images}`).
    Several processes may call this at once (e.g. the ranks of a distributed launch): one
    generates under a file lock while the others wait and then reuse its result.
    """
    _check_arguments(seed, individuals=individuals, images_per_individual=images_per_individual)
    in_cache = not root
    target = (cache_base() / "synthetic" / f"s{seed}-n{individuals}-m{images_per_individual}" if in_cache
              else Path(root).expanduser()).absolute()
    expected = _marker(seed, individuals, images_per_individual)
    if _is_complete(target, expected):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.parent / f".{target.name}.lock"):
        if _is_complete(target, expected):
            return target
        if in_cache and target.exists():  # a leftover of an older layout or a manual deletion
            shutil.rmtree(target)
        print(f"generating the synthetic dataset ({individuals} individuals x {images_per_individual} images) "
              f"into {target}", file=sys.stderr, flush=True)
        generate(target, seed=seed, individuals=individuals, images_per_individual=images_per_individual)
    return target

"""The synthetic generator's species: one animal-like sprite per individual and flank.

The species fixes the body shape; the identity lives in the coat: a tint of the species colour and
a pattern style shared by both flanks (how many spots and how large, how much yellow, how many
scutes), and the exact layout of the marks, a different one on each flank, as on real animals.
Pattern elements are large enough to survive a 64-px thumbnail of the animal, so a small CNN can
learn them; each sprite is painted at a resolution where local keypoints survive.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from data.synthetic_draw import (
    SEED_BODY,
    SEED_COAT,
    SPRITE_H,
    SPRITE_W,
    cell_edges,
    ellipse,
    fur,
    jitter,
    limb,
    paint,
    points_in,
    roundness,
    smooth_noise,
    voronoi_labels,
)

SIDES = ("left", "right")


def _finish(rgb: np.ndarray, mask: np.ndarray, marks: np.ndarray, mark_colour: tuple[int, int, int], *,
            shading_depth: int, grain: tuple[float, int], coat: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint the marks every animal of the species shares (eyes, ear tips), shade the body round
    towards its outline, add the fine grain of hair or skin (amplitude, streak length)."""
    paint(rgb, marks, np.array(mark_colour, np.float32))
    amplitude, streak = grain
    return rgb * roundness(mask, shading_depth)[..., None] + fur(coat, amplitude, streak)[..., None], mask


def _lynx(body: np.random.Generator, coat: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A bob-tailed spotted cat: spots and rosettes over a tawny coat with a paler belly."""
    length, height, head = body.uniform(0.94, 1.06, 3)
    legs = body.uniform(-6, 6, 4)
    base, belly = jitter(body, (190, 150, 105), 0.15), jitter(body, (226, 208, 178), 0.05)
    spot = jitter(body, (62, 42, 28), 0.1)
    mask = np.zeros((SPRITE_H, SPRITE_W), np.uint8)
    ellipse(mask, (185, 95), (118 * length, 44 * height), 0, 255)
    ellipse(mask, (282, 78), (40, 28), -35, 255)
    ellipse(mask, (318, 64), (32 * head, 30 * head), 0, 255)
    ellipse(mask, (346, 76), (17 * head, 12 * head), 0, 255)
    for ear in ([(298, 44), (306, 12), (318, 38)], [(320, 36), (334, 10), (342, 42)]):
        cv2.fillPoly(mask, [np.array(ear, np.int32)], 255, cv2.LINE_AA)
    bottom = 95 + 44 * height - 18
    for x, dx in zip((108, 128, 238, 258), legs, strict=True):
        limb(mask, [(x, bottom), (x + dx, 183)], 17)
        ellipse(mask, (x + dx + 3, 185), (11, 7), 0, 255)
    limb(mask, [(74, 82), (50, 68)], 14)

    rgb = np.empty((SPRITE_H, SPRITE_W, 3), np.float32)
    rgb[:] = base
    belly_layer = np.clip((np.arange(SPRITE_H, dtype=np.float32) - 100) / 40, 0, 1)[:, None] * 200
    paint(rgb, np.broadcast_to(belly_layer, mask.shape), belly)
    # The individual's style, the same on both flanks: how many spots, how large, how many rosettes.
    count, size, rosettes = int(body.integers(14, 56)), body.uniform(5, 15), body.uniform(0, 0.6)
    spots = np.zeros(mask.shape, np.uint8)
    for (x, y) in points_in(mask, coat, count):
        a, b = size * coat.uniform(0.7, 1.3), size * coat.uniform(0.5, 0.9)
        strength = int(coat.uniform(170, 255))
        if coat.random() < rosettes:  # rosette: an open ring of dark marks
            ellipse(spots, (x, y), (a + 3, b + 3), coat.uniform(0, 180), strength, 5)
        else:
            ellipse(spots, (x, y), (a, b), coat.uniform(0, 180), strength)
    paint(rgb, spots, spot)
    marks = np.zeros(mask.shape, np.uint8)  # species marks every lynx shares
    limb(marks, [(60, 74), (48, 67)], 14)
    for tuft in ([(306, 12), (305, 3)], [(334, 10), (335, 1)]):
        limb(marks, tuft, 3)
        limb(mask, tuft, 3)
    ellipse(marks, (328, 58), (5, 4), 0, 255)
    ellipse(marks, (360, 72), (5, 4), 0, 255)
    return _finish(rgb, mask, marks, (20, 16, 12), shading_depth=20, grain=(10, 5), coat=coat)


def _salamander(body: np.random.Generator, coat: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A fire-salamander-like body: yellow blotches of organic shape on glossy black skin."""
    length, height, head = body.uniform(0.94, 1.06, 3)
    base, blotch = jitter(body, (38, 33, 30), 0.1), jitter(body, (236, 186, 38), 0.12)
    mask = np.zeros((SPRITE_H, SPRITE_W), np.uint8)
    ellipse(mask, (205, 100), (108 * length, 28 * height), 0, 255)
    ellipse(mask, (318, 98), (36 * head, 25 * head), 0, 255)
    wave = body.uniform(4, 10)
    for t in np.linspace(0, 1, 40):  # a tapering, gently curved tail
        x = 110 - 100 * t
        y = 102 + wave * math.sin(3.2 * t + 0.5) * t
        ellipse(mask, (x, y), (22 * (1 - t) + 3, 22 * (1 - t) + 3), 0, 255)
    for x, sign in ((145, -1), (165, 1), (262, -1), (282, 1)):
        limb(mask, [(x, 110), (x + 14 * sign, 140), (x + 22 * sign, 150)], 10)

    # Blotches a head wide or more: coarse enough to survive a 64-px thumbnail.
    cells = body.uniform(0.6, 1.4)  # the individual's blotch size
    field = (smooth_noise(coat, (max(2, round(7 * cells)), max(4, round(16 * cells))), (SPRITE_W, SPRITE_H))
             + 0.4 * smooth_noise(coat, (14, 32), (SPRITE_W, SPRITE_H)))
    threshold = np.quantile(field[mask > 127], body.uniform(0.4, 0.8))  # the individual's share of yellow
    blotches = (np.clip((field - threshold) / 0.08, 0, 1) * 255).astype(np.uint8)
    for (x, y) in points_in(mask, coat, int(coat.integers(4, 10))):
        ellipse(blotches, (x, y), (coat.uniform(4, 8), coat.uniform(4, 8)), 0, 255)
    rgb = np.empty((SPRITE_H, SPRITE_W, 3), np.float32)
    rgb[:] = base
    paint(rgb, blotches, blotch)
    marks = np.zeros(mask.shape, np.uint8)
    ellipse(marks, (330, 88), (7, 6), 0, 255)
    return _finish(rgb, mask, marks, (10, 10, 10), shading_depth=14, grain=(5, 2), coat=coat)


def _turtle(body: np.random.Generator, coat: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A sea-turtle-like body: shell of scutes with streaks, head and flippers of small scales."""
    length, height, head = body.uniform(0.94, 1.06, 3)
    shell_colour, skin_colour = jitter(body, (116, 84, 48), 0.15), jitter(body, (150, 132, 98), 0.08)
    plastron_colour = jitter(body, (212, 192, 140), 0.05)
    shell = np.zeros((SPRITE_H, SPRITE_W), np.uint8)
    ellipse(shell, (190, 128), (128 * length, 86 * height), 0, 255)
    shell[128:] = 0
    plastron = np.zeros_like(shell)
    ellipse(plastron, (190, 128), (120 * length, 13), 0, 255)
    skin = np.zeros_like(shell)
    ellipse(skin, (300, 124), (34, 15), -10, 255)
    ellipse(skin, (340, 116), (31 * head, 21 * head), -8, 255)
    ellipse(skin, (262, 150), (50, 13), 32, 255)
    ellipse(skin, (100, 142), (34, 11), -28, 255)
    mask = np.maximum(np.maximum(shell, plastron), skin)

    rgb = np.empty((SPRITE_H, SPRITE_W, 3), np.float32)
    rgb[:] = skin_colour
    scute_seeds = points_in(shell, coat, int(body.integers(8, 24)))
    scutes = voronoi_labels(scute_seeds)
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
    paint(rgb, np.minimum(streaks, shell), np.array((52, 34, 20), np.float32))
    paint(rgb, np.minimum(cell_edges(scutes), shell), np.array((218, 196, 140), np.float32))
    grid = np.stack(np.meshgrid(np.arange(0, SPRITE_W, 11.0), np.arange(0, SPRITE_H, 11.0)), -1).reshape(-1, 2)
    scale_seeds = grid + coat.uniform(-4.5, 4.5, grid.shape)
    scales = voronoi_labels(scale_seeds)
    scale_tones = coat.uniform(0.75, 1.2, scales.max() + 1).astype(np.float32)
    in_skin = (skin > 127) & ~in_shell
    rgb[in_skin] *= scale_tones[scales[in_skin]][:, None]
    paint(rgb, np.minimum(cell_edges(scales), skin), np.array((58, 46, 32), np.float32))
    paint(rgb, np.where(in_shell, 0, plastron).astype(np.uint8), plastron_colour)
    marks = np.zeros(mask.shape, np.uint8)
    ellipse(marks, (352, 108), (5, 4), 0, 255)
    return _finish(rgb, mask, marks, (12, 10, 8), shading_depth=22, grain=(4, 2), coat=coat)


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


def sprite(group: Group, seed: int, individual: int, side: str) -> np.ndarray:
    """Premultiplied RGBA uint8 image of one flank, cropped to the animal, facing towards that side."""
    body = np.random.default_rng([seed, SEED_BODY, individual])  # same shape and colour on both flanks
    coat = np.random.default_rng([seed, SEED_COAT, individual, SIDES.index(side)])
    rgb, mask = group.render(body, coat)
    mask = cv2.GaussianBlur(mask, (3, 3), 0)  # anti-aliased outline
    rgb = cv2.GaussianBlur(np.clip(rgb, 0, 255), (3, 3), 0.6)
    premultiplied = (rgb * (mask[..., None] / 255.0)).astype(np.uint8)
    rgba = np.dstack([premultiplied, mask])
    x, y, w, h = cv2.boundingRect((mask > 0).astype(np.uint8))
    rgba = rgba[max(0, y - 4): y + h + 4, max(0, x - 4): x + w + 4]
    # Sprites face right; the left flank is seen with the animal facing left.
    return np.ascontiguousarray(rgba[:, ::-1] if side == "left" else rgba)


"""Drawing primitives shared by the synthetic generator's sprites and scenery, and its seed purposes.

Every function draws with the generator it is given and nothing else, so the caller's choice of
random stream alone decides the pixels.
"""
from __future__ import annotations

import itertools

import cv2
import numpy as np

SPRITE_W, SPRITE_H = 400, 200  # the canvas every sprite is painted on, before cropping

# Seed purposes, so that no two kinds of draw ever share a random stream: a generator is seeded by
# (seed, purpose, individual, ...). Changing these numbers changes every generated file.
SEED_PLAN, SEED_BODY, SEED_COAT, SEED_PHOTO = 0, 1, 2, 3
SEED_SCENE, SEED_SCENE_PICK = 4, 5  # scene mode: the shared backgrounds; each photo's pick of them
SEED_SITE, SEED_SITE_PICK = 6, 7  # scene mode with sites: each site's scenery; each individual's and photo's site

Colour = tuple[float, float, float]


def jitter(rng: np.random.Generator, rgb: Colour, spread: float) -> np.ndarray:
    """A colour near `rgb`: one brightness factor plus a small per-channel tint."""
    value = rng.uniform(1 - spread, 1 + spread)
    tint = rng.uniform(1 - spread / 3, 1 + spread / 3, 3)
    return np.clip(np.asarray(rgb, np.float32) * value * tint, 0, 255).astype(np.float32)


def smooth_noise(rng: np.random.Generator, cells: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Zero-mean noise with features about size/cells wide: a small random grid upsampled."""
    grid = rng.standard_normal(cells).astype(np.float32)
    return cv2.resize(grid, size, interpolation=cv2.INTER_CUBIC)


def fur(rng: np.random.Generator, amplitude: float, streak: int) -> np.ndarray:
    """Fine grain of hair or skin, smeared along the body axis."""
    grain = rng.standard_normal((SPRITE_H, SPRITE_W)).astype(np.float32)
    return cv2.blur(grain, (streak, 1)) * amplitude


def roundness(mask: np.ndarray, depth: float) -> np.ndarray:
    """Shading factor that darkens the silhouette towards its outline, so the body reads as 3-D."""
    dist = cv2.distanceTransform((mask > 127).astype(np.uint8), cv2.DIST_L2, 5)
    return 0.6 + 0.4 * np.clip(dist / depth, 0, 1) ** 0.6


def paint(rgb: np.ndarray, layer: np.ndarray, colour: np.ndarray) -> None:
    """Blend `colour` into `rgb` where the 0..255 coverage `layer` is set."""
    alpha = (layer.astype(np.float32) / 255)[..., None]
    rgb *= 1 - alpha
    rgb += alpha * colour


def voronoi_labels(points: np.ndarray) -> np.ndarray:
    """Label of the nearest of `points` for every sprite pixel (cells of a Voronoi diagram)."""
    seeds = np.full((SPRITE_H, SPRITE_W), 255, np.uint8)
    xy = np.round(points).astype(int)
    seeds[np.clip(xy[:, 1], 0, SPRITE_H - 1), np.clip(xy[:, 0], 0, SPRITE_W - 1)] = 0
    _, labels = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    return labels


def cell_edges(labels: np.ndarray) -> np.ndarray:
    """0/255 lines, about 2 px wide, where neighbouring pixels carry different labels."""
    edges = np.zeros(labels.shape, np.uint8)
    edges[:, 1:] |= (labels[:, 1:] != labels[:, :-1]).astype(np.uint8)
    edges[1:, :] |= (labels[1:, :] != labels[:-1, :]).astype(np.uint8)
    return cv2.dilate(edges * 255, np.ones((2, 2), np.uint8))


def points_in(mask: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    """Up to `count` uniform points inside the mask (rejection sampling in its bounding box)."""
    x, y, w, h = cv2.boundingRect((mask > 127).astype(np.uint8))
    xy = rng.uniform((x, y), (x + w, y + h), (count * 3, 2))
    inside = mask[xy[:, 1].astype(int), xy[:, 0].astype(int)] > 127
    return xy[inside][:count]


def limb(mask: np.ndarray, points: list[tuple[float, float]], thickness: int) -> None:
    """Fill a thick anti-aliased polyline (a leg, a tail, an ear tuft) into `mask`."""
    pts = [(int(round(x)), int(round(y))) for x, y in points]
    for a, b in itertools.pairwise(pts):
        cv2.line(mask, a, b, 255, thickness, cv2.LINE_AA)


def ellipse(img: np.ndarray, centre, axes, angle: float, colour, thickness: int = -1) -> None:
    """cv2.ellipse with float centre and axes (axes of at least 1 px); filled unless `thickness` > 0."""
    cv2.ellipse(img, (int(round(centre[0])), int(round(centre[1]))),
                (max(1, int(round(axes[0]))), max(1, int(round(axes[1])))),
                angle, 0, 360, colour, thickness, cv2.LINE_AA)


"""The synthetic generator's photos: one sprite placed in a cluttered scene and photographed.

Every photo is a new view of the sprite: perspective warp, rotation and scale, a random place in a
cluttered frame, occluding grass or a branch, lighting, blur, noise. Pixel-space nearest
neighbours therefore do poorly while keypoint matching and trained embedders can find the pattern.
The scenery, pose, compositing and camera helpers work for any frame size; scene mode
(`data.synthetic_scene`) reuses them for its larger frames.
"""
from __future__ import annotations

import functools
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
EDGE = 4  # px an animal's box keeps from the frame's border


def background(rng: np.random.Generator, size: tuple[int, int] = (FRAME_W, FRAME_H)) -> np.ndarray:
    """Cluttered ground of `size` (width, height); texture grain and clutter density per pixel are those
    of a photo frame whatever the size, so a larger ground shows a wider view, not a magnified one."""
    width, height = size
    near, far = (jitter(rng, c, 0.15) for c in _SCENES[rng.integers(len(_SCENES))])

    def cells(rows: int, columns: int) -> tuple[int, int]:
        return max(1, round(rows * height / FRAME_H)), max(1, round(columns * width / FRAME_W))

    mix = np.clip(0.5 + 0.6 * smooth_noise(rng, cells(3, 4), size), 0, 1)[..., None]
    img = near * (1 - mix) + far * mix
    img += (22 * smooth_noise(rng, cells(24, 32), size) + 9 * smooth_noise(rng, cells(72, 96), size))[..., None]
    img = np.clip(img, 0, 255).astype(np.uint8)
    area = width * height / (FRAME_W * FRAME_H)
    for _ in range(int(rng.integers(round(15 * area), round(40 * area)))):  # stones, twigs, leaves, spot-like blobs
        kind = rng.integers(4)
        colour = tuple(float(c) for c in np.clip((near if rng.random() < 0.5 else far) * rng.uniform(0.4, 1.4), 0, 255))
        x, y = rng.uniform(0, width), rng.uniform(0, height)
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


def sprite_corners(sprite: np.ndarray) -> np.ndarray:
    """The sprite's corners in pixels, clockwise from the top left: the source of its homography."""
    h, w = sprite.shape[:2]
    return np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)


def pose(rng: np.random.Generator, sprite: np.ndarray, scale: float, max_rotation: float) -> np.ndarray:
    """Where the sprite's corners go in a random view of it at `scale`, centred on the origin."""
    h, w = sprite.shape[:2]
    angle = math.radians(rng.uniform(-max_rotation, max_rotation))
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    perspective = rng.uniform(-0.09, 0.09, (4, 2)) * (w, h)  # each corner moves on its own
    return ((sprite_corners(sprite) - (w / 2, h / 2) + perspective) * scale) @ rotation.T


def fitting_scale(span: np.ndarray, size: tuple[int, int]) -> float:
    """The largest scale at which a box of `span` still fits EDGE px inside a frame of `size`."""
    return min((size[0] - 2 * EDGE - 2) / span[0], (size[1] - 2 * EDGE - 2) / span[1])  # 1 px slack for rounding


def random_offset(rng: np.random.Generator, low: np.ndarray, high: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A shift that puts the span [low, high] at a random place at least EDGE px inside the frame."""
    return rng.uniform(EDGE - low, np.subtract(size, EDGE) - high)


def _placement(rng: np.random.Generator, sprite: np.ndarray, max_rotation: float) -> np.ndarray:
    """Homography from the sprite to a random view of it inside the frame."""
    scale = rng.uniform(0.42, 0.82) * FRAME_W / sprite.shape[1]
    pts = pose(rng, sprite, scale, max_rotation)
    span = pts.max(0) - pts.min(0)
    pts *= min(1.0, fitting_scale(span, (FRAME_W, FRAME_H)))
    offset = random_offset(rng, pts.min(0), pts.max(0), (FRAME_W, FRAME_H))
    return cv2.getPerspectiveTransform(sprite_corners(sprite), (pts + offset).astype(np.float32))


def warp(sprite: np.ndarray, homography: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """The premultiplied RGBA sprite seen through `homography`, on a transparent canvas the size of `frame`."""
    return cv2.warpPerspective(sprite, homography, (frame.shape[1], frame.shape[0]), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def alpha_box(warped: np.ndarray) -> list[int]:
    """[x, y, w, h] around the warped sprite's mostly opaque pixels: the animal's box."""
    return [int(v) for v in cv2.boundingRect((warped[..., 3] > 127).astype(np.uint8))]


def composite(frame: np.ndarray, warped: np.ndarray) -> None:
    """Lay the warped premultiplied sprite over the float32 `frame`, in place."""
    frame *= 1 - warped[..., 3:].astype(np.float32) / 255
    frame += warped[..., :3]


def occlude(img: np.ndarray, rng: np.random.Generator, box: list[int]) -> None:
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


@functools.lru_cache(maxsize=4)
def _unit_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates as fractions of the frame, from -0.5 to 0.5: (x, y)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    return xx / width - 0.5, yy / height - 0.5


def lighting(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour cast and a light gradient across the frame, then brightness, contrast and gamma."""
    angle = rng.uniform(0, 2 * math.pi)
    xx, yy = _unit_grid(*img.shape[:2])
    gradient = 1 + rng.uniform(0, 0.3) * (xx * math.cos(angle) + yy * math.sin(angle))
    cast = rng.uniform(0.94, 1.06, 3).astype(np.float32)
    lit = np.clip(img.astype(np.float32) * gradient[..., None] * cast, 0, 255).astype(np.uint8)
    levels = np.arange(256, dtype=np.float32) / 255
    curve = (levels ** rng.uniform(0.85, 1.2) - 0.5) * rng.uniform(0.85, 1.15) + 0.5 + rng.uniform(-0.07, 0.07)
    return cv2.LUT(lit, np.clip(curve * 255, 0, 255).astype(np.uint8))


def camera(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
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
    homography = _placement(rng, sprite, max_rotation)
    frame = background(rng).astype(np.float32)
    warped = warp(sprite, homography, frame)
    composite(frame, warped)
    frame = np.clip(frame, 0, 255).astype(np.uint8)
    box = alpha_box(warped)
    occlude(frame, rng, box)
    return camera(lighting(frame, rng), rng), box


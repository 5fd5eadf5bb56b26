"""The synthetic generator's scene mode: small animals in wide, shared scenes, for detectors.

A scene photo is 640 x 480. Its ground is one of a handful of cluttered backgrounds that the whole
dataset shares (built once per seed, then shifted and mirrored a little per photo), so a matcher
that keys on the background instead of the animal is caught out. The animal's box covers 5-30 % of
the frame, anywhere inside it. About a third of the photos show a second animal of the same
species, an individual outside the dataset, beside the first (their boxes overlap with IoU < 0.1).
Each animal gets its own occluders, then the frame gets the lighting and camera of normal photos
(`data.synthetic_photo`). Boxes go out as YOLO label files, one per image (`yolo_labels`).
With `sites`, the shared backgrounds give way to camera sites (`data.synthetic_sites`): each
individual is photographed at one or two fixed scenes, vegetation in front and an overlay stamped
on every frame.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import PurePosixPath

import cv2
import numpy as np

from data.synthetic_draw import SEED_SCENE, SEED_SCENE_PICK
from data.synthetic_photo import (
    alpha_box,
    background,
    camera,
    composite,
    fitting_scale,
    lighting,
    occlude,
    pose,
    random_offset,
    sprite_corners,
    warp,
)
from data.synthetic_sites import in_front, overlay, photo_site, site, site_view
from data.synthetic_species import GROUPS, SIDES, Group, sprite

SCENE_W, SCENE_H = 640, 480
BACKGROUNDS = 6  # per dataset: few enough that every background recurs across many individuals
AREA = (0.05, 0.30)  # share of the frame an animal's box covers
SECOND_ANIMAL = 0.3  # share of photos that try to fit in a second animal
STRANGERS = 8  # individuals outside the dataset, per species, that may join a photo
MAX_IOU = 0.1  # between two animals' boxes, so that each box clearly belongs to one animal
_SHIFT = (48, 36)  # px a shared background may move between photos: it is built this much larger
_TRIES = 30  # places tried for a second animal before the photo goes without it


@dataclass(frozen=True)
class SceneCast:
    background: int  # which of the BACKGROUNDS shared backgrounds, or with `at_site` which site of the species
    stranger: tuple[int, str] | None  # the second animal (individual index, flank), or None
    at_site: bool = False  # the background is a camera site (data.synthetic_sites)


def scene_cast(seed: int, individual: int, k: int, individuals: int, sites: int = 0) -> SceneCast:
    """Background and second animal of photo `k` of an individual, in a dataset of `individuals`
    (with `sites`, each species photographed at that many camera sites).

    A function of its arguments alone, so that tools and tests can tell which background a photo
    shows. Second animals are individuals `individuals`, `individuals + 1`, ...: never in the dataset.
    """
    rng = np.random.default_rng([seed, SEED_SCENE_PICK, individual, k])
    index = int(rng.integers(BACKGROUNDS))
    if sites:
        index = photo_site(seed, individual, k, sites)
    stranger = None
    if rng.random() < SECOND_ANIMAL:
        stranger = (individuals + int(rng.integers(STRANGERS)), SIDES[rng.integers(len(SIDES))])
    return SceneCast(index, stranger, bool(sites))


@functools.lru_cache(maxsize=BACKGROUNDS)
def shared_background(seed: int, index: int) -> np.ndarray:
    """Shared background `index` of the dataset with this seed, larger than the frame; read-only."""
    img = background(np.random.default_rng([seed, SEED_SCENE, index]), (SCENE_W + _SHIFT[0], SCENE_H + _SHIFT[1]))
    img.flags.writeable = False  # cached: one photo must not paint on the next one's background
    return img


@functools.lru_cache(maxsize=len(GROUPS) * STRANGERS * len(SIDES))
def _stranger(group: Group, seed: int, individual: int, side: str) -> np.ndarray:
    return sprite(group, seed, individual, side)  # cached: the same few strangers recur in many photos


def _view(rng: np.random.Generator, ground: np.ndarray) -> np.ndarray:
    """A frame-sized, float32 cut of the shared background, shifted and maybe mirrored."""
    dx, dy = int(rng.integers(_SHIFT[0] + 1)), int(rng.integers(_SHIFT[1] + 1))
    cut = ground[dy:dy + SCENE_H, dx:dx + SCENE_W]
    return (cut[:, ::-1] if rng.random() < 0.5 else cut).astype(np.float32)


def _scene_pose(rng: np.random.Generator, animal: np.ndarray, max_rotation: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random view of the sprite, scaled so that its box covers a random share of the frame.

    Returns the sprite's corners and the low and high corners of the animal's box, centred on the
    origin. The box comes from the convex hull of the opaque pixels (a homography maps hulls to
    hulls), so it is the warped alpha mask's box to within a pixel or so, not the looser box of
    the warped sprite rectangle.
    """
    share = rng.uniform(*AREA)
    corners = pose(rng, animal, 1.0, max_rotation)
    hull = cv2.convexHull(cv2.findNonZero((animal[..., 3] > 127).astype(np.uint8))).astype(np.float32)
    homography = cv2.getPerspectiveTransform(sprite_corners(animal), corners.astype(np.float32))
    outline = cv2.perspectiveTransform(hull, homography)[:, 0]
    low, high = outline.min(0), outline.max(0)
    span = high - low
    scale = min(math.sqrt(share * SCENE_W * SCENE_H / (span[0] * span[1])), fitting_scale(span, (SCENE_W, SCENE_H)))
    return corners * scale, low * scale, high * scale


def box_iou(a: list[int], b: list[int]) -> float:
    """Intersection over union of two [x, y, w, h] boxes."""
    overlap_w = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    overlap_h = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    overlap = overlap_w * overlap_h
    return overlap / (a[2] * a[3] + b[2] * b[3] - overlap)


def _place(rng: np.random.Generator, animals: list[np.ndarray], max_rotation: float,
           frame: np.ndarray) -> list[tuple[np.ndarray, list[int]]]:
    """Each animal warped into the frame with its box, the first one anywhere; every later one where
    its box overlaps the earlier ones' with IoU < MAX_IOU, or left out when no try finds such a place."""
    placed: list[tuple[np.ndarray, list[int]]] = []
    for animal in animals:
        corners, low, high = _scene_pose(rng, animal, max_rotation)
        for _ in range(_TRIES):
            offset = random_offset(rng, low, high, (SCENE_W, SCENE_H))
            warped = warp(animal, cv2.getPerspectiveTransform(sprite_corners(animal), (corners + offset).astype(np.float32)),
                          frame)
            box = alpha_box(warped)
            if all(box_iou(box, other) < MAX_IOU for _, other in placed):
                placed.append((warped, box))
                break
    return placed


def render_scene(animal: np.ndarray, cast: SceneCast, rng: np.random.Generator, group: Group,
                 seed: int) -> tuple[np.ndarray, list[list[int]]]:
    """One RGB scene photo of a premultiplied RGBA sprite of `group`, and the [x, y, w, h] box of every
    animal in it, this one first. `cast` says which shared background and which second animal."""
    place = site(seed, GROUPS.index(group), cast.background, (SCENE_W, SCENE_H)) if cast.at_site else None
    frame = site_view(rng, place, (SCENE_W, SCENE_H)) if place else _view(rng, shared_background(seed, cast.background))
    animals = [animal] if cast.stranger is None else [animal, _stranger(group, seed, *cast.stranger)]
    placed = _place(rng, animals, group.max_rotation, frame)
    for warped, _ in reversed(placed):  # the identified animal in front
        composite(frame, warped)
    if place:
        in_front(frame, place)
    photo = np.clip(frame, 0, 255).astype(np.uint8)
    boxes = [box for _, box in placed]
    for box in boxes:
        occlude(photo, rng, box)
    photo = camera(lighting(photo, rng), rng)
    if place:
        overlay(photo, rng, place)
    return photo, boxes


def label_path(image_path: str) -> str:
    """The YOLO label file of an image: images/<dataset>/<split>/<id>.jpg -> labels/<dataset>/<split>/<id>.txt,
    ultralytics' convention, so that a detector trainer finds the labels from the image paths."""
    parts = PurePosixPath(image_path).with_suffix(".txt").parts
    return str(PurePosixPath("labels", *parts[1:]))


def yolo_labels(boxes: list[list[int]]) -> str:
    """One `0 cx cy w h` line per [x, y, w, h] box of a scene photo, normalised to the frame (class 0: animal)."""
    return "".join(f"0 {(x + w / 2) / SCENE_W:.6f} {(y + h / 2) / SCENE_H:.6f} {w / SCENE_W:.6f} {h / SCENE_H:.6f}\n"
                   for x, y, w, h in boxes)

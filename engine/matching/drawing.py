"""Two images side by side with their keypoint correspondences drawn (for report.html): geometric
inliers green, other matches red; with keypoint weightings, an inlier's green fades to grey as its
weight falls, and an inlier weighing nothing (dropped: background, a confuser) is drawn as a grey
line with a cross at each end."""
from __future__ import annotations

from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

INLIER, OUTLIER, DROPPED = (40, 200, 60), (230, 60, 40), (150, 150, 150)
MAX_LINES = 150  # more lines only hide the images


def _colour(inlier: bool, weight: float) -> tuple:
    if not inlier:
        return OUTLIER
    return tuple(int(round(d + (i - d) * weight)) for i, d in zip(INLIER, DROPPED, strict=True))


def draw_matches(image0: np.ndarray, image1: np.ndarray, points0: np.ndarray, points1: np.ndarray,
                 inlier: np.ndarray, height: int = 180, weights: Optional[np.ndarray] = None) -> np.ndarray:
    """(H, W0 + W1, 3) uint8: both images scaled to `height`, lines between matched points (green =
    geometric inlier, red = other match); `weights` (0-1 per match) fade inliers to grey, and mark
    those weighing 0 with crosses."""
    weights = np.ones(len(inlier)) if weights is None else np.clip(np.asarray(weights, np.float64), 0, 1)
    scales, tiles = [], []
    for image in (image0, image1):
        scale = height / image.shape[0]
        scales.append(scale)
        tiles.append(Image.fromarray(image).resize((max(1, round(image.shape[1] * scale)), height)))
    canvas = Image.new("RGB", (tiles[0].width + tiles[1].width, height))
    canvas.paste(tiles[0], (0, 0))
    canvas.paste(tiles[1], (tiles[0].width, 0))
    draw = ImageDraw.Draw(canvas)
    order = np.argsort(~inlier, kind="stable")[:MAX_LINES]  # inliers first
    for i in order[::-1]:  # inliers drawn last, on top
        x0, y0 = points0[i] * scales[0]
        x1, y1 = points1[i] * scales[1]
        x1 += tiles[0].width
        colour = _colour(bool(inlier[i]), float(weights[i]))
        draw.line([(x0, y0), (x1, y1)], fill=colour, width=1)
        if inlier[i] and weights[i] == 0:
            for x, y in ((x0, y0), (x1, y1)):
                draw.line([(x - 2, y - 2), (x + 2, y + 2)], fill=DROPPED, width=1)
                draw.line([(x - 2, y + 2), (x + 2, y - 2)], fill=DROPPED, width=1)
    return np.asarray(canvas)

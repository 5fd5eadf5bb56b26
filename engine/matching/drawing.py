"""Two images side by side with their keypoint correspondences drawn (for report.html)."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

INLIER, OUTLIER = (40, 200, 60), (230, 60, 40)
MAX_LINES = 150  # more lines only hide the images


def draw_matches(image0: np.ndarray, image1: np.ndarray, points0: np.ndarray, points1: np.ndarray,
                 inlier: np.ndarray, height: int = 180) -> np.ndarray:
    """(H, W0 + W1, 3) uint8: both images scaled to `height`, lines between matched points (green =
    geometric inlier, red = other match)."""
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
        draw.line([(x0, y0), (x1 + tiles[0].width, y1)], fill=INLIER if inlier[i] else OUTLIER, width=1)
    return np.asarray(canvas)

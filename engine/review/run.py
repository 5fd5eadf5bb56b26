"""An eval.py run folder opened for review: its review.npz checked, its images indexed by row.

The folder must be eval.py's own (its manifest.json marker) and hold a review.npz of a task and
submission kind the review knows; every image it names must lie under the folder eval.py recorded
as the images' root, so an edited file cannot make the server read elsewhere.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

import numpy as np

from core.errors import DataError
from core.ownership import EVAL, MARKER_FILES, marker_tool
from data.format_base import IMAGE_EXTENSIONS
from engine.outputs.review_file import REVIEW_FILE, ReviewData, load_review
from engine.outputs.submission import CLUSTERS

REVIEWABLE = ("animalclef", CLUSTERS)  # humpback's five guesses per query are not reviewed


@dataclass
class ReviewRun:
    folder: Path
    data: ReviewData
    row_of: Dict[str, int]  # image_id -> row

    @property
    def task(self) -> str:
        return self.data.settings.task

    @property
    def images(self):
        return self.data.images

    def anchors(self) -> np.ndarray:
        """The identity code of every image whose identity the run knew (-1: none): database images,
        and task=cluster's train images when they anchored the clusters."""
        images = self.data.images
        known = images["identity"].to_numpy(dtype=str) != ""
        if self.task == "cluster" and not self.data.settings.anchors:
            known[:] = False
        keys = (images["dataset"] + "\x1f" + images["identity"]).to_numpy(dtype=object)
        codes = np.full(len(images), -1, np.int64)
        _, codes[known] = np.unique(keys[known], return_inverse=True)
        return codes


def _check_paths(data: ReviewData, where: Path) -> None:
    # Compared as written, '..' folded away: a dataset's own symbolic links (a folder of links to the
    # photos) are its owner's choice, a path that climbs out of the folder is not.
    roots = [os.path.normpath(os.path.abspath(r)) for r in data.settings.image_roots]
    for path in data.images["path"]:
        plain = os.path.normpath(os.path.abspath(path))
        inside = any(plain == r or plain.startswith(r.rstrip(os.sep) + os.sep) for r in roots)
        if not inside or Path(plain).suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(f"{where} names an image outside the folder its run read images from, or not an "
                            f"image file: {path}")


def open_run(folder) -> ReviewRun:
    """The run folder `folder` ready to review (DataError / a clear message for anything else)."""
    folder = Path(folder).expanduser().absolute()
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder: give the output_dir of an eval.py run")
    if marker_tool(folder, MARKER_FILES[EVAL]) != EVAL:
        raise DataError(f"{folder} is not an eval.py run folder (no manifest.json of eval.py in it)")
    data = load_review(folder / REVIEW_FILE)
    if data.settings.kind not in REVIEWABLE:
        raise DataError(f"{folder} wrote a {data.settings.kind} submission: review works on "
                        f"{' and '.join(REVIEWABLE)} runs")
    _check_paths(data, folder / REVIEW_FILE)
    ids = data.images["image_id"].tolist()
    row_of = {image_id: row for row, image_id in enumerate(ids)}
    if len(row_of) != len(ids):
        raise DataError(f"{folder / REVIEW_FILE} names an image id twice")
    return ReviewRun(folder, data, row_of)

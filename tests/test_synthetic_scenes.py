"""Scene mode of the synthetic generator: boxes, YOLO labels, shared backgrounds, determinism, and
that the normal mode is left as it was."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from data import synthetic
from data.synthetic import ensure_synthetic, generate
from data.synthetic_scene import (
    AREA,
    BACKGROUNDS,
    MAX_IOU,
    SCENE_H,
    SCENE_W,
    box_iou,
    label_path,
    scene_cast,
    shared_background,
    yolo_labels,
)
from data.table import parse_bbox

TINY = {"seed": 0, "individuals": 6, "images_per_individual": 3, "progress": False}
# The scale is set from the convex hull of the sprite's opaque pixels, the written box is that of the
# warped alpha mask: they differ by about a pixel per side, a few percent of the smallest boxes' area.
AREA_TOLERANCE = 0.05


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _boxes(root: Path, image_path: str) -> list[list[float]]:
    """The image's YOLO label lines as [x, y, w, h] in pixels."""
    boxes = []
    for line in (root / label_path(image_path)).read_text().splitlines():
        label, cx, cy, w, h = line.split()
        assert label == "0"
        boxes.append([(float(cx) - float(w) / 2) * SCENE_W, (float(cy) - float(h) / 2) * SCENE_H,
                      float(w) * SCENE_W, float(h) * SCENE_H])
    return boxes


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("scenes") / "a", scenes=True, **TINY)


@pytest.fixture(scope="module")
def table(scenes: Path) -> pd.DataFrame:
    return pd.read_csv(scenes / "metadata.csv")


def test_every_image_has_a_label_file_and_the_frame_size(scenes: Path, table: pd.DataFrame) -> None:
    assert len(table) == 18
    labels = {str(p.relative_to(scenes)) for p in (scenes / "labels").rglob("*.txt")}
    assert labels == {label_path(path) for path in table["path"]}
    assert label_path("images/SynthLynx/query/000012.jpg") == "labels/SynthLynx/query/000012.txt"
    for path in table["path"]:
        with Image.open(scenes / path) as img:
            assert img.size == (SCENE_W, SCENE_H)


def test_boxes_lie_inside_the_frame_and_cover_5_to_30_percent_of_it(scenes: Path, table: pd.DataFrame) -> None:
    low, high = AREA[0] * (1 - AREA_TOLERANCE), AREA[1] * (1 + AREA_TOLERANCE)
    for path in table["path"]:
        for x, y, w, h in _boxes(scenes, path):
            assert x >= 0 and y >= 0 and x + w <= SCENE_W + 1e-3 and y + h <= SCENE_H + 1e-3, path
            assert low <= w * h / (SCENE_W * SCENE_H) <= high, path


def test_the_first_label_is_the_bbox_column_and_a_second_animal_stays_beside_it(scenes: Path,
                                                                                table: pd.DataFrame) -> None:
    pairs = 0
    for row in table.itertuples():
        bbox = parse_bbox(row.bbox)
        lines = (scenes / label_path(row.path)).read_text().splitlines(keepends=True)
        assert lines[0] == yolo_labels([bbox]), "the identified animal comes first"
        assert 1 <= len(lines) <= 2
        if len(lines) == 2:
            pairs += 1
            assert box_iou(bbox, _boxes(scenes, row.path)[1]) < MAX_IOU
    assert 0 < pairs < len(table), "some photos, not all, show a second animal"


def test_second_animals_are_never_individuals_of_the_dataset() -> None:
    casts = [scene_cast(0, individual, k, 6) for individual in range(6) for k in range(50)]
    strangers = [cast.stranger for cast in casts if cast.stranger is not None]
    assert 0.2 < len(strangers) / len(casts) < 0.4
    assert all(index >= 6 and side in ("left", "right") for index, side in strangers)


def test_backgrounds_are_few_shared_and_deterministic(table: pd.DataFrame) -> None:
    used = {scene_cast(0, individual, k, 6).background for individual in range(6) for k in range(3)}
    assert 1 < len(used) <= BACKGROUNDS
    build = shared_background.__wrapped__  # the uncached function: built afresh, it must be the same
    assert np.array_equal(build(0, 1), shared_background(0, 1))
    assert shared_background(0, 1).shape[:2] > (SCENE_H, SCENE_W), "room to shift it between photos"
    assert not np.array_equal(shared_background(0, 1), shared_background(0, 2))
    assert not np.array_equal(shared_background(0, 1), shared_background(1, 1)), "another seed, other scenes"


def test_same_arguments_same_bytes_whatever_the_workers(scenes: Path, tmp_path: Path) -> None:
    assert _files(generate(tmp_path / "again", scenes=True, workers=2, **TINY)) == _files(scenes)


def test_normal_mode_keeps_its_marker_folder_and_layout(tmp_path: Path, monkeypatch, scenes: Path) -> None:
    assert json.loads((scenes / synthetic.MARKER).read_text())["scenes"] is True
    monkeypatch.setenv("REIDZOO_CACHE", str(tmp_path / "cache"))
    args = {"seed": 5, "individuals": 2, "images_per_individual": 1}
    plain = ensure_synthetic(**args)
    assert plain == (tmp_path / "cache" / "synthetic" / "s5-n2-m1").absolute()
    assert json.loads((plain / synthetic.MARKER).read_text()) == {
        "generator": "reidzoo.synthetic", "version": synthetic.GENERATOR_VERSION, "seed": 5,
        "individuals": 2, "images_per_individual": 1}
    assert not (plain / "labels").exists()
    with Image.open(plain / pd.read_csv(plain / "metadata.csv")["path"][0]) as img:
        assert img.size != (SCENE_W, SCENE_H)
    scene = ensure_synthetic(**args, scenes=True)
    assert scene == plain.with_name("s5-n2-m1-scenes") and (scene / "labels").is_dir()
    assert ensure_synthetic(**args) == plain, "the normal dataset stays valid next to the scene one"

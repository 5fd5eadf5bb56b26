"""Scene mode of the synthetic generator: boxes, YOLO labels, shared backgrounds, determinism, and
that the normal mode is left as it was."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.errors import ConfigError
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
from data.synthetic_sites import BAR_H, SITE_SHIFT, individual_sites, photo_site, site
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


# ----------------------------------------------------------------------------- camera sites


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("sites") / "a", scenes=True, sites=2, **TINY)


def test_each_individual_lives_at_one_or_two_sites_and_sites_are_shared() -> None:
    for individual in range(30):
        own = individual_sites(0, individual, 4)
        assert 1 <= len(own) <= 2 and len(set(own)) == len(own) and all(0 <= s < 4 for s in own)
        assert {scene_cast(0, individual, k, 30, sites=4).background for k in range(20)} <= set(own)
    counts = [len(individual_sites(0, i, 4)) for i in range(200)]
    assert 0.3 < counts.count(2) / len(counts) < 0.7, "about half the individuals at two sites"
    assert all(scene_cast(0, i, 0, 30, sites=4).at_site for i in range(5))
    assert not scene_cast(0, 0, 0, 30).at_site, "without sites: the shared backgrounds"


def test_photos_of_one_site_share_scenery_and_overlay_but_not_the_time(sites: Path) -> None:
    by_site: dict = {}
    for individual in synthetic._plan(0, TINY["individuals"], TINY["images_per_individual"]):
        for photo in individual.photos:
            where = (individual.group, photo_site(0, individual.index, photo.k, 2))
            by_site.setdefault(where, []).append(np.asarray(Image.open(sites / photo.path).convert("L"), np.float32))
    shared = [photos for photos in by_site.values() if len(photos) >= 2]
    assert shared, "some site has several photos"
    for photos in shared:
        bar_a, bar_b = photos[0][-BAR_H:], photos[1][-BAR_H:]
        assert np.abs(bar_a[:, :240] - bar_b[:, :240]).mean() < 3, "the same brand and site name (up to JPEG noise)"
        assert np.abs(bar_a[:, -250:-40] - bar_b[:, -250:-40]).mean() > 3, "another time"
        top = slice(0, 40)  # sky-side ground, rarely covered by an animal: the same scenery, other light
        assert np.corrcoef(photos[0][top].ravel(), photos[1][top].ravel())[0, 1] > 0.5
    (first, *_), (second, *_) = list(by_site.values())[:2]
    assert np.corrcoef(first[:40].ravel(), second[:40].ravel())[0, 1] < 0.5, "another site, other scenery"


def test_sites_go_into_the_marker_and_cache_name_and_need_scene_mode(tmp_path: Path, monkeypatch, sites: Path) -> None:
    assert json.loads((sites / synthetic.MARKER).read_text())["sites"] == 2
    monkeypatch.setenv("REIDZOO_CACHE", str(tmp_path / "cache"))
    found = ensure_synthetic(seed=5, individuals=2, images_per_individual=1, scenes=True, sites=3)
    assert found.name == "s5-n2-m1-scenes-sites3"
    with pytest.raises(ConfigError, match="scenes"):
        ensure_synthetic(seed=5, individuals=2, images_per_individual=1, sites=3)
    assert site(0, 0, 1, (SCENE_W, SCENE_H)).ground.shape[:2] == (SCENE_H + SITE_SHIFT[1], SCENE_W + SITE_SHIFT[0])
    assert not np.array_equal(site(0, 0, 1, (SCENE_W, SCENE_H)).ground, site(0, 1, 1, (SCENE_W, SCENE_H)).ground), \
        "each species its own sites"


def test_a_config_with_sites_but_no_scenes_is_refused_in_one_line() -> None:
    from core.config import load_config
    from core.schema import DataConfig

    with pytest.raises(ConfigError, match="data.synthetic.scenes"):
        load_config(DataConfig, None, ["synthetic.sites=3"])
    assert load_config(DataConfig, None, ["synthetic.sites=3", "synthetic.scenes=true"]).synthetic.sites == 3

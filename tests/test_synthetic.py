"""The built-in synthetic dataset: format, determinism, caching, workers, and that keypoints match."""
from __future__ import annotations

import json
import os
import random
import shutil
import threading
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.errors import ConfigError
from data import synthetic
from data.synthetic import ensure_synthetic, generate
from data.synthetic_photo import FRAME_H, FRAME_W, render_photo
from data.synthetic_species import GROUPS, Group, sprite
from data.table import parse_bbox

TINY = {"individuals": 6, "images_per_individual": 4}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synthetic") / "a", seed=0, progress=False, **TINY)


def test_format_is_animalclef_with_bbox(tiny: Path) -> None:
    table = pd.read_csv(tiny / "metadata.csv")
    assert list(table.columns) == synthetic.CSV_COLUMNS
    assert len(table) == 24 and table["image_id"].is_unique and table["image_id"].dtype.kind == "i"
    assert table.notna().all().all(), "every column is filled, query identities included"
    assert set(table["split"]) == {"database", "query"}
    assert set(table["orientation"]) <= {"left", "right"}
    assert table["dataset"].nunique() >= 2 and table["species"].nunique() >= 2
    for row in table.itertuples():
        assert row.path.startswith("images/") and ".." not in row.path
        with Image.open(tiny / row.path) as img:
            assert img.format == "JPEG" and img.size == (FRAME_W, FRAME_H)
            img.load()
        x, y, w, h = parse_bbox(row.bbox)
        assert w > 20 and h > 20 and x >= 0 and y >= 0
        assert x + w <= FRAME_W and y + h <= FRAME_H


def test_open_set_splits_and_dates(tiny: Path) -> None:
    table = pd.read_csv(tiny / "metadata.csv")
    known = set(table.loc[table["split"] == "database", "identity"])
    new = set(table["identity"]) - known
    assert new, "some individuals must appear only in the query split"
    for dataset, rows in table.groupby("dataset"):
        assert set(rows["identity"]) & new and set(rows["identity"]) & known, dataset
    for identity, rows in table.groupby("identity"):
        assert rows["dataset"].nunique() == 1 and rows["species"].nunique() == 1
        dates = pd.to_datetime(rows["date"])
        assert dates.is_unique, identity
        if identity in known:
            query, database = dates[rows["split"] == "query"], dates[rows["split"] == "database"]
            assert len(query) == 1 and len(database) == 3
            assert query.min() > database.max(), "a known individual's query photos are its latest"


def test_same_seed_same_bytes_other_seed_differs(tiny: Path, tmp_path: Path) -> None:
    again = generate(tmp_path / "again", seed=0, progress=False, **TINY)
    assert _files(again) == _files(tiny)
    other = _files(generate(tmp_path / "other", seed=1, progress=False, **TINY))
    assert other["metadata.csv"] != _files(tiny)["metadata.csv"]
    assert not set(_files(tiny).items()) & set(other.items()), "no file may be the same under another seed"


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.dataset)
def test_a_photo_depends_only_on_its_seeds(group: Group) -> None:
    """No global random state, no earlier draw and no OpenCV thread count reaches the pixels."""
    def photo() -> tuple[np.ndarray, list[int]]:
        return render_photo(sprite(group, 4, 1, "right"), np.random.default_rng([4, 1]), group.max_rotation)

    first, first_box = photo()
    np.random.seed(123)
    random.seed(123)
    render_photo(sprite(group, 4, 2, "left"), np.random.default_rng([4, 2]), group.max_rotation)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        again, again_box = photo()
    finally:
        cv2.setNumThreads(threads)
    assert np.array_equal(first, again) and first_box == again_box
    other_flank, _ = render_photo(sprite(group, 4, 1, "left"), np.random.default_rng([4, 1]), group.max_rotation)
    assert not np.array_equal(first, other_flank)


def test_workers_give_identical_output(tmp_path: Path) -> None:
    args = {"seed": 3, "individuals": 3, "images_per_individual": 2, "progress": False}
    one = generate(tmp_path / "one", workers=1, **args)
    two = generate(tmp_path / "two", workers=2, **args)
    assert _files(one) == _files(two)


def test_refuses_foreign_folder_and_replaces_its_own(tmp_path: Path) -> None:
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "keep.jpg").write_bytes(b"mine")
    with pytest.raises(ConfigError, match="not a synthetic dataset"):
        generate(foreign, individuals=2, images_per_individual=1, progress=False)
    assert (foreign / "keep.jpg").read_bytes() == b"mine"
    with pytest.raises(ConfigError, match="individuals"):
        generate(tmp_path / "x", individuals=0, progress=False)
    out = generate(tmp_path / "ds", individuals=2, images_per_individual=1, progress=False)
    generate(out, individuals=3, images_per_individual=1, progress=False)
    assert len(pd.read_csv(out / "metadata.csv")) == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "no temporary folder left"


def test_a_dataset_another_writer_finished_first_is_kept(tmp_path: Path, monkeypatch) -> None:
    """If the same dataset lands at `out` while ours is staged, ours is dropped, not an error."""
    args = {"seed": 4, "individuals": 2, "images_per_individual": 1, "progress": False}
    theirs = generate(tmp_path / "theirs", **args)
    out = (tmp_path / "race").absolute()
    real_replace = os.replace

    def other_writer_wins(src, dst):
        if Path(dst) == out and not out.exists():
            shutil.copytree(theirs, out)
            (out / "written-by-the-other-writer").touch()
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", other_writer_wins)
    assert generate(out, **args) == out
    assert (out / "written-by-the-other-writer").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["race", "theirs"], "no staging folder left"

    shutil.rmtree(out)  # a dataset with other arguments is not ours to keep: the failed swap is an error
    with pytest.raises(OSError):
        generate(out, **{**args, "individuals": 3})


def test_ensure_synthetic_caches_and_repairs(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("REIDZOO_CACHE", str(tmp_path / "cache"))
    args = {"seed": 5, "individuals": 3, "images_per_individual": 2}
    root = ensure_synthetic(**args)
    assert root == (tmp_path / "cache" / "synthetic" / "s5-n3-m2").absolute()
    assert "generating" in capsys.readouterr().err
    marker = root / synthetic.MARKER
    stamp = marker.stat().st_mtime_ns
    assert ensure_synthetic(**args) == root
    assert "generating" not in capsys.readouterr().err and marker.stat().st_mtime_ns == stamp

    marker.unlink()  # an interrupted or damaged dataset: regenerated, not trusted
    assert ensure_synthetic(**args) == root
    assert "generating" in capsys.readouterr().err and marker.is_file()
    assert len(pd.read_csv(root / "metadata.csv")) == 6


def test_concurrent_callers_generate_once(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("REIDZOO_CACHE", str(tmp_path))
    results: list[Path] = []
    callers = [threading.Thread(target=lambda: results.append(
        ensure_synthetic(seed=2, individuals=3, images_per_individual=2))) for _ in range(2)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert len(results) == 2 and results[0] == results[1]
    assert capsys.readouterr().err.count("generating") == 1


def _good_matches(a: np.ndarray, b: np.ndarray) -> int:
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(a, b, k=2)
    return sum(1 for p in pairs if len(p) == 2 and p[0].distance < 0.75 * p[1].distance)


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.dataset)
def test_keypoints_match_the_same_flank_only(group: Group) -> None:
    """Two views of one flank share many keypoints; the other flank and other animals do not."""
    sift = cv2.SIFT_create()

    def descriptors(individual: int, side: str, k: int) -> np.ndarray:
        rgb, (x, y, w, h) = render_photo(sprite(group, 0, individual, side),
                                         np.random.default_rng([9, individual, k]), group.max_rotation)
        return sift.detectAndCompute(cv2.cvtColor(rgb[y:y + h, x:x + w], cv2.COLOR_RGB2GRAY), None)[1]

    views = {(i, side, k): descriptors(i, side, k) for i in range(3) for side, k in (("left", 0), ("left", 1))}
    views.update({(i, "right", 1): descriptors(i, "right", 1) for i in range(3)})
    same = [_good_matches(views[i, "left", 0], views[i, "left", 1]) for i in range(3)]
    other_flank = [_good_matches(views[i, "left", 0], views[i, "right", 1]) for i in range(3)]
    other_animal = [_good_matches(views[i, "left", 0], views[(i + 1) % 3, "left", 1]) for i in range(3)]
    assert np.mean(same) > 3 * max(np.mean(other_flank), np.mean(other_animal)), (same, other_flank, other_animal)


def test_marker_records_the_arguments(tiny: Path) -> None:
    marker = json.loads((tiny / synthetic.MARKER).read_text())
    assert marker["seed"] == 0 and marker["individuals"] == 6 and marker["images_per_individual"] == 4

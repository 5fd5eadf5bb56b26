"""Detector annotations on hand-made images and boxes: each source's converter, the one box check,
the ultralytics writer (round trip, identity-aware split, replacing its own folder only)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from core.errors import ConfigError, DataError
from data.table import make_table
from engine.detection.annotations import (
    AnnotatedImage,
    from_box_csv,
    from_table,
    from_yolo_labels,
    load_annotations,
    write_yolo_dataset,
)

W, H = 40, 30


def write_image(path: Path, size: tuple = (W, H), fmt: str = "PNG", exif_orientation: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, (90, 140, 30))
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(path, format=fmt, exif=exif)
    else:
        image.save(path, format=fmt)
    return path


def write_box_csv(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def boxes_of(items: list) -> dict:
    return {item.image_id: item.boxes.tolist() for item in items}


def box_csv(tmp_path: Path, boxes: list) -> tuple:
    """a.png and b.png under tmp_path/images, and a bboxes.csv with rows (name, 'x0 y0 x1 y1')."""
    for name in ("a.png", "b.png"):
        write_image(tmp_path / "images" / name)
    return write_box_csv(tmp_path / "bboxes.csv", [{"fn": n, "bbox": b} for n, b in boxes]), tmp_path / "images"


def test_table_bbox_becomes_corners_and_rows_without_box_are_left_out(tmp_path):
    table = make_table([
        {"image_id": "1", "identity": "lynx_1", "path": str(write_image(tmp_path / "1.png")), "split": "database",
         "dataset": "d", "bbox": [2.0, 3.0, 10.0, 20.0]},
        {"image_id": "2", "identity": "lynx_2", "path": str(write_image(tmp_path / "2.png")), "split": "database",
         "dataset": "d", "bbox": None},
        {"image_id": "3", "identity": None, "path": str(write_image(tmp_path / "3.jpg", (50, 60), "JPEG")),
         "split": "query", "dataset": "d", "bbox": "[0, 0, 50, 60]"},
    ])
    items = from_table(table, "metadata.csv")
    assert boxes_of(items) == {"1": [[2, 3, 12, 23]], "3": [[0, 0, 50, 60]]}
    assert [(i.identity, i.width, i.height) for i in items] == [("lynx_1", W, H), (None, 50, 60)]
    assert items[0].boxes.dtype == np.float32 and os.path.isabs(items[0].path)


def test_table_without_boxes_names_the_three_sources(tmp_path):
    table = make_table([{"image_id": "1", "identity": "x", "path": str(write_image(tmp_path / "1.png")),
                         "split": "database", "dataset": "d"}])
    with pytest.raises(DataError, match="no `bbox` values") as err:
        from_table(table, "metadata.csv")
    assert all(f"'{name}'" in str(err.value) for name in ("bbox", "csv", "yolo"))


def one_row_table(path: Path, bbox: list) -> pd.DataFrame:
    return make_table([{"image_id": "t", "identity": "x", "path": str(path), "split": "database", "dataset": "d",
                        "bbox": bbox}])


def test_table_box_is_checked_against_the_image_as_displayed(tmp_path):
    # Stored 40x30 with EXIF "rotate 90": shown (and annotated) as 30x40.
    path = write_image(tmp_path / "turned.jpg", fmt="JPEG", exif_orientation=6)
    [item] = from_table(one_row_table(path, [0, 0, 30, 40]), "metadata.csv")
    assert (item.width, item.height) == (30, 40) and item.boxes.tolist() == [[0, 0, 30, 40]]
    with pytest.raises(DataError, match=r"row 0 \(t\): box \[0, 0, 40, 30\] lies outside the 30x40 image"):
        from_table(one_row_table(path, [0, 0, 40, 30]), "metadata.csv")


def test_box_csv_gives_several_boxes_per_image_in_either_column_style(tmp_path):
    csv, images = box_csv(tmp_path, [("a.png", "1 2 11 12"), ("b.png", "0 0 40 30"), ("a.png", "20 5 30 25")])
    assert boxes_of(from_box_csv(csv, images)) == {"a.png": [[1, 2, 11, 12], [20, 5, 30, 25]], "b.png": [[0, 0, 40, 30]]}
    corners = write_box_csv(tmp_path / "corners.csv", [{"Image": "b.png", "x0": 3, "y0": 4, "x1": 13, "y1": 14}])
    [item] = from_box_csv(corners, images)
    assert item.image_id == "b.png" and item.identity is None and item.boxes.tolist() == [[3, 4, 13, 14]]


def test_border_touching_boxes_are_kept_and_half_a_pixel_beyond_is_clipped(tmp_path):
    csv, images = box_csv(tmp_path, [("a.png", f"0 0 {W} {H}"), ("b.png", f"-0.5 2 {W + 0.5} {H + 0.5}")])
    assert boxes_of(from_box_csv(csv, images)) == {"a.png": [[0, 0, W, H]], "b.png": [[0, 2, W, H]]}


@pytest.mark.parametrize(
    "box, message",
    [
        ("10 5 3 25", "line 3 (b.png): box [10, 5, 3, 25] is inverted (x1 < x0)"),
        ("3 25 10 5", "line 3 (b.png): box [3, 25, 10, 5] is inverted (y1 < y0)"),
        ("5 5 5.5 20", "line 3 (b.png): box [5, 5, 5.5, 20] is degenerate (0.5 x 15 px)"),
        ("5 5 20 5", "line 3 (b.png): box [5, 5, 20, 5] is degenerate"),
        ("1 nan 5 5", "line 3 (b.png): '1 nan 5 5' is not a box 'x0 y0 x1 y1' (not finite numbers)"),
        ("1 2 inf 5", "(not finite numbers)"),
        ("-2 0 10 10", f"line 3 (b.png): box [-2, 0, 10, 10] lies outside the {W}x{H} image by more than 1 px"),
        ("50 0 60 10", f"box [50, 0, 60, 10] lies outside the {W}x{H} image"),
        (f"{W - 0.5} 0 {W + 0.8} 10", f"overlaps the {W}x{H} image by less than 1 px"),
        ("1 2 3", "(3 values, not 4)"),
    ],
)
def test_unusable_csv_box_is_refused_naming_the_file_and_line(tmp_path, box, message):
    csv, images = box_csv(tmp_path, [("a.png", "1 1 20 20"), ("b.png", box)])
    with pytest.raises(DataError) as err:
        from_box_csv(csv, images)
    assert str(err.value).startswith(f"{csv}: 1 unusable box annotation ")
    assert message in str(err.value)


def test_many_bad_rows_show_the_first_few_and_the_count(tmp_path):
    rows = [("a.png", "1 1 20 20")] + [("b.png", f"{x} 0 {x} 10") for x in range(1, 9)] + [("gone.png", "1 1 5 5")]
    csv, images = box_csv(tmp_path, rows)
    with pytest.raises(DataError) as err:
        from_box_csv(csv, images)
    text = str(err.value)
    assert f"{csv}: 9 unusable box annotations" in text and "(and 4 more; 9 in all)" in text
    assert "line 3 (b.png): box [1, 0, 1, 10] is degenerate" in text


def test_missing_image_and_nameless_row_are_named(tmp_path):
    csv, images = box_csv(tmp_path, [("gone.png", "1 1 5 5"), ("", "1 1 5 5")])
    with pytest.raises(DataError) as err:
        from_box_csv(csv, images)
    assert "line 3 (no name): a box without an image name" in str(err.value)
    assert f"image gone.png: {images / 'gone.png'} does not exist" in str(err.value)


def test_table_rows_are_named_when_refused(tmp_path):
    table = make_table([{"image_id": str(i), "identity": "x", "path": str(write_image(tmp_path / f"{i}.png")),
                         "split": "database", "dataset": "d", "bbox": box}
                        for i, box in enumerate([[1, 1, 5, 5], [1, 1, -4, 5], [1, 1, 0.2, 5]])])
    with pytest.raises(DataError) as err:
        from_table(table, "metadata.csv")
    assert str(err.value).startswith("metadata.csv: 2 unusable box annotations")
    assert "row 1 (1): box [1, 1, -3, 6] is inverted (x1 < x0)" in str(err.value)
    assert "row 2 (2): box [1, 1, 1.2, 6] is degenerate" in str(err.value)


def write_yolo(root: Path) -> Path:
    """root/images/{train/a.png, train/sub/b.jpg, val/c.png} with labels for a and b (b: two boxes)."""
    write_image(root / "images" / "train" / "a.png")
    write_image(root / "images" / "train" / "sub" / "b.jpg", (80, 60), "JPEG")
    write_image(root / "images" / "val" / "c.png")
    (root / "labels" / "train" / "sub").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 1.0 1.0\n")
    (root / "labels" / "train" / "sub" / "b.txt").write_text("0 0.25 0.5 0.5 0.5\n\n3 0.75 0.25 0.25 0.5\n")
    return root


def test_yolo_labels_become_pixel_corners_and_missing_labels_are_background(tmp_path):
    root = write_yolo(tmp_path)
    assert boxes_of(from_yolo_labels(root / "images" / "train")) == {
        "a.png": [[0, 0, W, H]], "sub/b.jpg": [[0, 15, 40, 45], [50, 0, 70, 30]]}
    items = from_yolo_labels(root / "images", root / "labels")
    assert boxes_of(items)["val/c.png"] == [] and items[-1].boxes.shape == (0, 4)
    assert {item.identity for item in items} == {None}


@pytest.mark.parametrize(
    "line, message",
    [
        ("0 0.5 0.5 0.5", "a.txt line 2: '0 0.5 0.5 0.5' is not 'class cx cy w h' (4 values, not 5)"),
        ("cat 0.5 0.5 0.5 0.5", "(the class is not a whole number >= 0)"),
        ("0 0.5 0.5 nan 0.5", "(not finite numbers)"),
        ("0 0.5 0.5 -0.5 0.5", "a.txt line 2: box [30, 7.5, 10, 22.5] is inverted (x1 < x0)"),
        ("0 1.2 0.5 0.5 0.5", f"a.txt line 2: box [38, 7.5, 58, 22.5] lies outside the {W}x{H} image"),
        ("0 0.5 0.5 0.01 0.5", "is degenerate (0.4 x 15 px)"),
    ],
)
def test_unusable_yolo_line_is_refused_naming_the_label_file_and_line(tmp_path, line, message):
    write_image(tmp_path / "images" / "a.png")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text(f"0 0.5 0.5 0.5 0.5\n{line}\n")
    with pytest.raises(DataError) as err:
        from_yolo_labels(tmp_path / "images")
    assert str(err.value).startswith(f"{tmp_path / 'labels'}: 1 unusable box annotation ")
    assert message in str(err.value)


def test_yolo_images_folder_without_images_component_needs_its_labels_folder(tmp_path):
    write_image(tmp_path / "photos" / "a.png")
    with pytest.raises(DataError, match="give the labels folder"):
        from_yolo_labels(tmp_path / "photos")


def test_load_annotations_dispatches_and_suggests_the_close_name(tmp_path):
    root = write_yolo(tmp_path / "yolo")
    assert len(load_annotations("yolo", images=root / "images")) == 3
    csv, images = box_csv(tmp_path / "csv", [("a.png", "1 2 11 12")])
    assert boxes_of(load_annotations("csv", path=csv, images=images)) == {"a.png": [[1, 2, 11, 12]]}
    with pytest.raises(ConfigError, match="unknown annotation source 'yolov'; did you mean 'yolo'"):
        load_annotations("yolov", images=root / "images")
    with pytest.raises(ConfigError, match="annotation source 'csv' reads .*: missing images"):
        load_annotations("csv", path=csv)
    with pytest.raises(ConfigError, match="table does not apply"):
        load_annotations("yolo", images=root / "images", table=pd.DataFrame())


def hand_made_items(tmp_path: Path, identities: list) -> list:
    items = []
    for index, identity in enumerate(identities):
        size = (W, H) if index % 2 else (57, 33)
        path = write_image(tmp_path / "src" / f"img{index}.png", size)
        boxes = [[1.25, 2.5, 17.75, 20.125], [0, 0, size[0], size[1]]][: index % 3]
        items.append(AnnotatedImage(f"img{index}", str(path), identity, np.array(boxes), *size))
    return items


def test_written_dataset_reads_back_with_the_same_boxes(tmp_path):
    items = hand_made_items(tmp_path, ["a", "a", "b", None, "c", "c", None, "d"])
    data_yaml = write_yolo_dataset(items, tmp_path / "out", val_fraction=0.25, seed=3)
    out = tmp_path / "out"
    config = yaml.safe_load(data_yaml.read_text())
    assert config == {"path": str(out), "train": "images/train", "val": "images/val", "names": {0: "animal"}}
    split = pd.read_csv(out / "split.csv", keep_default_na=False)
    assert list(split.columns) == ["image_id", "identity", "split", "name"] and len(split) == len(items)
    by_name = {f"{side}/{name}": image_id for image_id, side, name in zip(split["image_id"], split["split"],
                                                                          split["name"])}
    read = {by_name[item.image_id]: item for item in from_yolo_labels(out / "images")}
    for item in items:
        back = read[item.image_id]
        assert (back.width, back.height) == (item.width, item.height) and back.boxes.shape == item.boxes.shape
        np.testing.assert_allclose(back.boxes, item.boxes, atol=1e-3)
    label = next(out.glob("labels/*/000004_img4.txt")).read_text()
    assert label == "0 0.166667 0.342803 0.289474 0.534091\n"  # 6 decimals, normalised by 57x33
    assert next(out.glob("images/*/000004_img4.png")).read_bytes() == Path(items[4].path).read_bytes()


def test_split_keeps_each_identity_on_one_side_and_depends_only_on_the_seed(tmp_path):
    identities = [f"id{i}" for i in range(12) for _ in range(1 + i % 4)] + [None] * 6
    items = hand_made_items(tmp_path, identities)
    for seed in range(5):
        write_yolo_dataset(items, tmp_path / "out", seed=seed, val_fraction=0.3)
        split = pd.read_csv(tmp_path / "out" / "split.csv")
        sides = split.dropna(subset=["identity"]).groupby("identity")["split"].nunique()
        assert (sides == 1).all()
        val_share = (split["split"] == "val").mean()
        assert 0.2 <= val_share <= 0.4, val_share
    again = write_yolo_dataset(items[::-1], tmp_path / "again", seed=4, val_fraction=0.3).parent
    first = dict(zip(split["image_id"], split["split"]))
    second = pd.read_csv(again / "split.csv")
    assert dict(zip(second["image_id"], second["split"])) == first


def test_split_puts_an_image_on_each_side_or_says_why_it_cannot(tmp_path):
    two = hand_made_items(tmp_path, ["a", "b"])
    write_yolo_dataset(two, tmp_path / "two", val_fraction=0.01)
    assert sorted(pd.read_csv(tmp_path / "two" / "split.csv")["split"]) == ["train", "val"]
    lopsided = hand_made_items(tmp_path, ["a", "b", "b", "b"])
    for seed in range(4):  # taking groups greedily towards 90% would put all four in val
        write_yolo_dataset(lopsided, tmp_path / "most", val_fraction=0.9, seed=seed)
        assert pd.read_csv(tmp_path / "most" / "split.csv")["split"].tolist() == ["train", "val", "val", "val"]
    big = hand_made_items(tmp_path, ["a"] * 5 + ["b"] * 5)
    write_yolo_dataset(big, tmp_path / "big", val_fraction=0.1)
    assert sorted(pd.read_csv(tmp_path / "big" / "split.csv")["split"].value_counts()) == [5, 5]
    with pytest.raises(DataError, match="all 3 images show one animal"):
        write_yolo_dataset(hand_made_items(tmp_path, ["a"] * 3), tmp_path / "one")
    with pytest.raises(DataError, match="at least 2 images; there is 1"):
        write_yolo_dataset(two[:1], tmp_path / "single")
    with pytest.raises(ConfigError, match="val_fraction"):
        write_yolo_dataset(two, tmp_path / "bad", val_fraction=1.0)
    assert not any((tmp_path / name).exists() for name in ("one", "single", "bad"))


def test_second_write_replaces_the_folder_and_a_foreign_folder_is_refused(tmp_path):
    items = hand_made_items(tmp_path, ["a", "b", "c", "d"])
    out = tmp_path / "out"
    write_yolo_dataset(items, out)
    write_yolo_dataset(items[:2], out)
    assert len(list(out.glob("images/*/*"))) == 2 and len(list(out.glob("labels/*/*.txt"))) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no staging folders left behind
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not an empty folder nor one write_yolo_dataset wrote"):
        write_yolo_dataset(items, foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_yolo_dataset(items, empty) == empty / "data.yaml"

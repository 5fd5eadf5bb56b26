"""Each format adapter on tiny datasets written into tmp_path, and load_table's filters."""
from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from core.errors import ConfigError, DataError
from core.schema import DataConfig
from data.formats import DATASETS, load_table
from data.table import COLUMNS


def write_image(path: Path, fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (120, 30, 200)).save(path, format=fmt)
    return path


def write_csv(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def animalclef_rows() -> list:
    return [
        {"image_id": 1, "identity": "LynxID2025_lynx_1", "path": "images/l/1.jpg", "date": "2020-01-02",
         "orientation": "left", "species": "lynx", "split": "database", "dataset": "LynxID2025"},
        {"image_id": 2, "identity": "LynxID2025_lynx_1", "path": "images/l/2.jpg", "date": "",
         "orientation": "", "species": "lynx", "split": "database", "dataset": "LynxID2025"},
        {"image_id": 3, "identity": "", "path": "images/l/3.jpg", "date": "",
         "orientation": "", "species": "lynx", "split": "query", "dataset": "LynxID2025"},
        {"image_id": 4, "identity": "SalamanderID2025_7", "path": "images/s/4.jpg", "date": "",
         "orientation": "top", "species": "salamander", "split": "query", "dataset": "SalamanderID2025"},
        {"image_id": 5, "identity": "new_individual", "path": "images/s/5.jpg", "date": "",
         "orientation": "right", "species": "salamander", "split": "query", "dataset": "SalamanderID2025"},
        {"image_id": 6, "identity": "SalamanderID2025_7", "path": "images/s/6.jpg", "date": "",
         "orientation": "top", "species": "salamander", "split": "database", "dataset": "SalamanderID2025"},
    ]


def make_animalclef(root: Path, rows: list = None) -> Path:
    rows = animalclef_rows() if rows is None else rows
    for row in rows:
        write_image(root / row["path"], "JPEG")
    write_csv(root / "metadata.csv", rows)
    return root


def by_id(df: pd.DataFrame) -> dict:
    return {row["image_id"]: row for row in df.to_dict("records")}


def test_animalclef_reads_labels_splits_and_absolute_paths(tmp_path):
    root = make_animalclef(tmp_path / "clef")
    df = load_table(DataConfig(format="animalclef2025", root=str(root)))
    assert list(df.columns) == COLUMNS
    rows = by_id(df)
    assert rows["1"]["identity"] == "LynxID2025_lynx_1" and rows["1"]["orientation"] == "left"
    assert rows["2"]["date"] is None and rows["2"]["orientation"] is None
    assert rows["3"]["identity"] is None and rows["3"]["split"] == "query"
    assert rows["4"]["identity"] == "SalamanderID2025_7"  # labelled query kept for scoring
    assert rows["5"]["identity"] is None  # new_individual is "unknown", never an identity
    assert rows["6"]["path"] == os.path.join(os.path.abspath(root), "images/s/6.jpg")
    assert set(df["dataset"]) == {"LynxID2025", "SalamanderID2025"}


def test_animalclef_missing_column_names_file_and_columns(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "split"} for r in animalclef_rows()]
    root = make_animalclef(tmp_path / "clef", rows)
    with pytest.raises(DataError, match=r"metadata\.csv: missing column 'split'; the file has columns: image_id"):
        DATASETS.get("animalclef2025")(root, {})


def test_animalclef_database_row_without_identity_is_an_error(tmp_path):
    rows = animalclef_rows()
    rows[1]["identity"] = ""
    root = make_animalclef(tmp_path / "clef", rows)
    with pytest.raises(DataError, match="1 database rows have an empty identity: 2"):
        DATASETS.get("animalclef2025")(root, {})


def test_wildlifereid10k_maps_train_test_and_parses_bbox(tmp_path):
    root = tmp_path / "wr10k"
    rows = [
        {"image_id": "a", "identity": "Dogs_1", "path": "images/a.png", "dataset": "Dogs", "species": "dog",
         "split": "train", "bbox": "[1, 2, 3, 4]"},
        {"image_id": "b", "identity": "Dogs_1", "path": "images/b.png", "dataset": "Dogs", "species": "dog",
         "split": "test", "bbox": ""},
        {"image_id": "c", "identity": "Cats_9", "path": "images/c.png", "dataset": "Cats", "species": "cat",
         "split": "train", "bbox": "5 6 7 8"},
    ]
    for row in rows:
        write_image(root / row["path"])
    write_csv(root / "metadata.csv", rows)
    rows = by_id(DATASETS.get("wildlifereid10k")(root, {}))
    assert rows["a"]["split"] == "database" and rows["a"]["bbox"] == [1.0, 2.0, 3.0, 4.0]
    assert rows["b"]["split"] == "query" and rows["b"]["identity"] == "Dogs_1" and rows["b"]["bbox"] is None
    assert rows["c"]["bbox"] == [5.0, 6.0, 7.0, 8.0]


def test_humpback_new_whale_is_unknown_and_boxes_become_xywh(tmp_path):
    root = tmp_path / "humpback"
    for name in ("t1.jpg", "t2.jpg", "t3.jpg"):
        write_image(root / "train" / name, "JPEG")
    for name in ("q1.jpg", "q2.JPG"):
        write_image(root / "test" / name, "JPEG")
    write_csv(root / "train.csv", [{"Image": "t1.jpg", "Id": "w_1"}, {"Image": "t2.jpg", "Id": "w_1"},
                                   {"Image": "t3.jpg", "Id": "new_whale"}])
    write_csv(root / "bboxes.csv", [{"fn": "t1.jpg", "bbox": "1 2 5 6"}, {"fn": "q1.jpg", "bbox": "0 0 4 4"}])
    df = load_table(DataConfig(format="humpback", root=str(root)))
    rows = by_id(df)
    assert rows["t1.jpg"]["identity"] == "w_1" and rows["t1.jpg"]["bbox"] == [1.0, 2.0, 4.0, 4.0]
    assert rows["t3.jpg"]["identity"] is None and rows["t3.jpg"]["split"] == "database"
    assert {rows["q1.jpg"]["split"], rows["q2.JPG"]["split"]} == {"query"}
    assert rows["q1.jpg"]["identity"] is None and rows["q1.jpg"]["bbox"] == [0.0, 0.0, 4.0, 4.0]
    assert set(df["dataset"]) == {"humpback"} and set(df["species"]) == {"humpback whale"}


def make_humpback(root: Path, boxes: list) -> Path:
    for name in ("t1.jpg", "t2.jpg"):
        write_image(root / "train" / name, "JPEG")
    write_csv(root / "train.csv", [{"Image": "t1.jpg", "Id": "w_1"}, {"Image": "t2.jpg", "Id": "w_2"}])
    write_csv(root / "bboxes.csv", boxes)
    return root


@pytest.mark.parametrize(
    "boxes, offender",
    [
        # Kaggle's corner columns with an empty cell (this was a TypeError).
        ([{"Image": "t1.jpg", "x0": 1, "y0": 1, "x1": 5, "y1": 5}, {"Image": "t2.jpg", "x0": 1, "y0": "", "x1": 5, "y1": 5}],
         "line 3 (t2.jpg): ['1', '', '5', '5'] (an empty value)"),
        ([{"fn": "t1.jpg", "bbox": "1 1 5 5"}, {"fn": "t2.jpg", "bbox": ""}], "line 3 (t2.jpg): '' (an empty value)"),
        ([{"fn": "t1.jpg", "bbox": "1 1 five 5"}], "line 2 (t1.jpg): '1 1 five 5' (not numbers)"),
        ([{"fn": "t1.jpg", "bbox": "5 1 1 5"}], "line 2 (t1.jpg): '5 1 1 5' (inverted: x1 < x0 or y1 < y0)"),
        ([{"fn": "t1.jpg", "bbox": "1 1 1 5"}], "(zero width or height)"),
        ([{"fn": "t1.jpg", "bbox": "1 1 5"}], "(3 values, not 4)"),
        ([{"fn": "", "bbox": "1 1 5 5"}], "line 2 (no name): '1 1 5 5' (a box without an image name)"),
    ],
)
def test_humpback_broken_boxes_name_the_file_and_line(tmp_path, boxes, offender):
    root = make_humpback(tmp_path / "humpback", boxes)
    with pytest.raises(DataError) as err:
        load_table(DataConfig(format="humpback", root=str(root)))
    assert str(err.value).startswith(f"{root / 'bboxes.csv'}: 1 boxes are not 'x0 y0 x1 y1'")
    assert offender in str(err.value)


@pytest.mark.parametrize(
    "bbox, reason",
    [
        ("[1, 2, , 4]", "not a list of 4 numbers"),
        ("1,2,,4", "an empty value"),
        ("1 2 x 4", "not numbers"),
        ("1 2 -3 4", "inverted: negative width or height"),
        ("1 2 3 0", "zero width or height"),
        ("1 2 nan 4", "not finite numbers"),
    ],
)
def test_broken_bbox_in_metadata_names_the_file_and_row(tmp_path, bbox, reason):
    rows = animalclef_rows()
    rows[1]["bbox"] = bbox
    root = make_animalclef(tmp_path / "clef", rows)
    with pytest.raises(DataError) as err:
        load_table(DataConfig(format="animalclef2025", root=str(root)))
    assert str(err.value).startswith(f"{root / 'metadata.csv'}: 1 bbox values are not boxes")
    assert f"line 3 (2): {bbox!r} ({reason})" in str(err.value)


def test_folders_identity_is_parent_folder_at_any_depth(tmp_path):
    root = tmp_path / "lions"
    write_image(root / "train" / "Ayo" / "Ayo_Face.png")
    write_image(root / "train" / "Ayo" / "Ayo_Nose.PNG")
    write_image(root / "val" / "Zuri" / "z.jpeg", "JPEG")
    (root / "val" / "Zuri" / "notes.txt").write_text("not an image")
    write_image(root / ".thumbs" / "x" / "hidden.png")
    df = load_table(DataConfig(format="folders", root=str(root)))
    assert sorted(df["image_id"]) == ["train/Ayo/Ayo_Face.png", "train/Ayo/Ayo_Nose.PNG", "val/Zuri/z.jpeg"]
    assert dict(zip(df["image_id"], df["identity"], strict=True))["val/Zuri/z.jpeg"] == "Zuri"
    assert set(df["dataset"]) == {"lions"} and set(df["split"]) == {"database"}


def test_folders_follows_a_linked_identity_folder(tmp_path):
    outside = tmp_path / "elsewhere" / "Rex"
    write_image(outside / "r1.jpg", "JPEG")
    root = tmp_path / "dogs"
    write_image(root / "Bo" / "b1.jpg", "JPEG")
    (root / "Rex").symlink_to(outside, target_is_directory=True)
    df = load_table(DataConfig(format="folders", root=str(root)))
    assert dict(zip(df["image_id"], df["identity"], strict=True)) == {"Bo/b1.jpg": "Bo", "Rex/r1.jpg": "Rex"}


def test_folders_refuses_images_outside_identity_folders(tmp_path):
    write_image(tmp_path / "dogs" / "Bo" / "b1.jpg", "JPEG")
    write_image(tmp_path / "dogs" / "loose.jpg", "JPEG")
    with pytest.raises(DataError, match="1 images lie directly in the root.*loose.jpg"):
        DATASETS.get("folders")(tmp_path / "dogs", {})


def test_csv_maps_columns_and_numbers_rows(tmp_path):
    folder = tmp_path / "mine"
    write_image(folder / "pics" / "a.png")
    write_image(folder / "pics" / "b.png")
    source = write_csv(folder / "list.csv", [{"file": "pics/a.png", "animal": "A"},
                                             {"file": "pics/b.png", "animal": "B"}])
    df = load_table(DataConfig(format="csv", root=str(source), columns={"path": "file", "identity": "animal"}))
    assert list(df["image_id"]) == ["0", "1"] and list(df["identity"]) == ["A", "B"]
    assert list(df["path"]) == [os.path.join(os.path.abspath(folder), p) for p in ("pics/a.png", "pics/b.png")]
    assert set(df["dataset"]) == {"mine"} and set(df["split"]) == {"database"}


def test_csv_root_folder_uses_metadata_csv_and_our_names(tmp_path):
    write_image(tmp_path / "x.png")
    write_csv(tmp_path / "metadata.csv", [{"image_id": "k1", "path": "x.png", "identity": "X", "split": "test"}])
    df = DATASETS.get("csv")(tmp_path, {})
    assert list(df["image_id"]) == ["k1"] and list(df["split"]) == ["query"]


def test_csv_errors_name_the_column(tmp_path):
    source = write_csv(tmp_path / "t.csv", [{"file": "a.png", "id": "A"}])
    with pytest.raises(DataError, match=r"t\.csv: missing column 'animal'; the file has columns: file, id"):
        DATASETS.get("csv")(source, {"path": "file", "identity": "animal"})
    with pytest.raises(ConfigError, match="did you mean 'identity'"):
        DATASETS.get("csv")(source, {"path": "file", "identiy": "id"})


def test_unknown_format_and_misplaced_columns_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'folders'"):
        load_table(DataConfig(format="folder", root=str(tmp_path)))
    with pytest.raises(ConfigError, match="only to data.format=csv"):
        load_table(DataConfig(format="folders", root=str(tmp_path), columns={"path": "file"}))
    with pytest.raises(DataError, match="does not exist"):
        load_table(DataConfig(format="folders", root=str(tmp_path / "nope")))


def test_dataset_and_species_filters(tmp_path):
    root = make_animalclef(tmp_path / "clef")
    df = load_table(DataConfig(format="animalclef2025", root=str(root), datasets=["SalamanderID2025"]))
    assert sorted(df["image_id"]) == ["4", "5", "6"]
    df = load_table(DataConfig(format="animalclef2025", root=str(root), species=["lynx"]))
    assert sorted(df["image_id"]) == ["1", "2", "3"]
    with pytest.raises(ConfigError, match="did you mean 'LynxID2025'"):
        load_table(DataConfig(format="animalclef2025", root=str(root), datasets=["LynxID2024"]))


def test_synthetic_format_reads_what_ensure_synthetic_wrote(tmp_path, monkeypatch):
    calls = []

    def ensure_synthetic(root="", *, seed=0, individuals=120, images_per_individual=12, scenes=False, sites=0):
        calls.append((root, seed, individuals, images_per_individual, scenes, sites))
        return make_animalclef(tmp_path / "generated")

    monkeypatch.setitem(sys.modules, "data.synthetic", types.SimpleNamespace(ensure_synthetic=ensure_synthetic))
    cfg = DataConfig(format="synthetic")
    cfg.synthetic.seed, cfg.synthetic.individuals, cfg.synthetic.scenes, cfg.synthetic.sites = 3, 7, True, 2
    df = load_table(cfg)
    assert calls == [("", 3, 7, 12, True, 2)]
    assert len(df) == 6 and all(p.startswith(str(tmp_path / "generated")) for p in df["path"])

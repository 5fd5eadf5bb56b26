"""Every kind of broken dataset stops with one DataError that names the offenders."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from PIL import ExifTags, Image

from core.errors import DataError
from core.schema import DataConfig
from data.formats import load_table
from data.table import make_table
from data.validate import require_query, resolve_inside, validate_table


def write_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (10, 200, 30)).save(path, format="PNG")
    return path


def table(root: Path, names: list, **fields) -> pd.DataFrame:
    return make_table([{"image_id": n, "identity": f"id{i % 2}", "path": str(root / n), "split": "database",
                        "dataset": "d", **fields} for i, n in enumerate(names)])


def write_metadata(root: Path, paths: list, write_files: bool = True) -> Path:
    rows = [{"image_id": i, "identity": "a", "path": p, "split": "database", "dataset": "d"}
            for i, p in enumerate(paths)]
    if write_files:
        for p in paths:
            write_image(root / p)
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def test_resolve_inside_refuses_escapes_as_written(tmp_path):
    assert resolve_inside(tmp_path, "a/../b/c.png") == os.path.join(str(tmp_path), "b/c.png")
    for bad in ("../x.png", "a/../../x.png", "/etc/passwd", "", ".."):
        with pytest.raises(DataError, match="not inside the dataset root"):
            resolve_inside(tmp_path, bad)


def test_escaping_paths_in_metadata_are_listed(tmp_path):
    root = write_metadata(tmp_path / "ds", ["ok.png"], write_files=True)
    write_metadata(root, ["ok.png", "../up.png", "/abs/x.png"], write_files=False)
    with pytest.raises(DataError, match=r"2 image paths are not inside the dataset root.*'\.\./up\.png', '/abs/x\.png'"):
        load_table(DataConfig(format="animalclef2025", root=str(root)))


def test_symlinks_inside_root_are_followed(tmp_path):
    outside = write_image(tmp_path / "store" / "real.png")
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "images" / "file.png").symlink_to(outside)
    (root / "linked").symlink_to(tmp_path / "store", target_is_directory=True)
    write_metadata(root, ["images/file.png", "linked/real.png"], write_files=False)
    df = load_table(DataConfig(format="animalclef2025", root=str(root)))
    assert len(df) == 2


def test_missing_files_list_first_ten_and_count(tmp_path):
    root = write_metadata(tmp_path / "ds", ["kept.png"])
    write_metadata(root, ["kept.png"] + [f"gone{i:02d}.png" for i in range(15)], write_files=False)
    with pytest.raises(DataError) as err:
        load_table(DataConfig(format="animalclef2025", root=str(root)))
    message = str(err.value)
    assert message.startswith("15 image files are missing")
    assert "gone09.png (and 5 more; 15 in all)" in message and "gone10.png" not in message


def test_duplicate_image_ids(tmp_path):
    df = table(tmp_path, ["a.png", "b.png", "c.png"])
    df.loc[2, "image_id"] = df.loc[0, "image_id"]
    with pytest.raises(DataError, match="1 image_id values are used more than once: a.png"):
        validate_table(df, tmp_path, verify_images=False)


def test_unknown_split_and_empty_table(tmp_path):
    write_image(tmp_path / "a.png")
    with pytest.raises(DataError, match="unknown split values valid"):
        validate_table(table(tmp_path, ["a.png"], split="valid"), tmp_path, verify_images=False)
    with pytest.raises(DataError, match="no images"):
        validate_table(make_table([]), tmp_path)


def test_unreadable_image_is_reported_unless_verification_is_off(tmp_path):
    write_image(tmp_path / "good.png")
    (tmp_path / "bad.jpg").write_bytes(b"this is not a jpeg")
    df = table(tmp_path, ["good.png", "bad.jpg"])
    with pytest.raises(DataError, match=r"1 image files cannot be read as images: bad\.jpg \(UnidentifiedImageError"):
        validate_table(df, tmp_path)
    assert validate_table(df, tmp_path, verify_images=False) is df


def test_boxes_must_overlap_their_image_but_may_cross_its_border(tmp_path):
    write_image(tmp_path / "a.png")  # 8 x 6
    inside = [[0.0, 0.0, 8.0, 6.0], [-5.0, -5.0, 10.0, 10.0], [7.0, 5.0, 10.0, 10.0]]
    for box in inside:
        validate_table(table(tmp_path, ["a.png"], bbox=box), tmp_path)
    for box in ([8.0, 0.0, 4.0, 4.0], [0.0, -10.0, 4.0, 10.0], [7.5, 0.0, 4.0, 4.0]):
        with pytest.raises(DataError, match=r"1 boxes lie entirely outside their image .*: a\.png \(bbox .* "
                                            r"lies outside the 8x6 image\)"):
            validate_table(table(tmp_path, ["a.png"], bbox=box), tmp_path)
        # Without the image pass the size is unknown: the loader refuses the crop instead.
        validate_table(table(tmp_path, ["a.png"], bbox=box), tmp_path, verify_images=False)


def test_boxes_are_in_the_frame_the_photo_is_shown_in(tmp_path):
    path = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # stored 20 x 10, shown 10 x 20
    Image.new("RGB", (20, 10)).save(path, format="JPEG", exif=exif)
    validate_table(table(tmp_path, ["turned.jpg"], bbox=[0.0, 15.0, 5.0, 5.0]), tmp_path)
    with pytest.raises(DataError, match="outside the 10x20 image"):
        validate_table(table(tmp_path, ["turned.jpg"], bbox=[15.0, 0.0, 5.0, 5.0]), tmp_path)


def test_broken_boxes_in_a_table_are_refused_whoever_built_it(tmp_path):
    write_image(tmp_path / "a.png")
    for box, reason in (([1.0, 1.0, -2.0, 2.0], "inverted"), ([1.0, 1.0, 0.0, 2.0], "zero width or height"),
                        ([1.0, None, 2.0, 2.0], "an empty value"), ("1 2 3", "3 values, not 4")):
        with pytest.raises(DataError, match=rf"1 bbox values are not boxes .*: a\.png: .* \({reason}"):
            validate_table(table(tmp_path, ["a.png"], bbox=box), tmp_path, verify_images=False)


def test_png_named_file_holding_a_jpeg_is_readable(tmp_path):
    path = tmp_path / "lion.png"
    Image.new("RGB", (8, 8)).save(path, format="JPEG")  # LionData ships JPEGs named .png
    validate_table(table(tmp_path, ["lion.png"]), tmp_path)


def test_empty_query_after_filtering(tmp_path):
    root = tmp_path / "ds"
    rows = [{"image_id": 1, "identity": "a", "path": "1.png", "split": "database", "dataset": "A"},
            {"image_id": 2, "identity": "", "path": "2.png", "split": "query", "dataset": "B"}]
    for row in rows:
        write_image(root / row["path"])
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    full = load_table(DataConfig(format="animalclef2025", root=str(root)))
    assert list(require_query(full)["image_id"]) == ["2"]
    kept = load_table(DataConfig(format="animalclef2025", root=str(root), datasets=["A"]))
    with pytest.raises(DataError, match=r"query set is empty after filtering \(data.datasets=\['A'\]; 1 images left"):
        require_query(kept, "data.datasets=['A']")

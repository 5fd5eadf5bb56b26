"""Checks that turn broken datasets into one clear DataError instead of a crash mid-training.

Adapters use the helpers here against the user's own file (so messages name that file and its
columns); `validate_table` then checks the canonical table every adapter returns.
"""
from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Iterable, Sequence, Union

import pandas as pd
from PIL import ExifTags, Image
from tqdm import tqdm

from core.errors import DataError, list_some
from data.table import COLUMNS, SPLITS, is_missing, parse_bbox

PathLike = Union[str, Path]

_PROGRESS_MIN_IMAGES = 2000
# EXIF orientations 5-8 turn the photo by 90 degrees: width and height swap when it is shown.
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}


def require_columns(frame: pd.DataFrame, required: Iterable[str], source: PathLike) -> None:
    """Stop when the user's file lacks a required column, naming the file and what it has."""
    missing = [c for c in dict.fromkeys(required) if c not in frame.columns]
    if missing:
        raise DataError(
            f"{source}: missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}; "
            f"the file has columns: {', '.join(map(str, frame.columns)) or '(none)'}"
        )


def read_csv(path: PathLike) -> pd.DataFrame:
    """Read a metadata CSV as text; only empty cells are missing ('NA' can be an animal's name)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"metadata file {path} does not exist")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError as err:
        raise DataError(f"{path}: the file is empty") from err
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable CSV file ({err})") from err


def _normalised_inside(relative_path: str) -> str | None:
    """The path as written, normalised, or None if it is absolute or climbs out with '..'."""
    if is_missing(relative_path) or os.path.isabs(relative_path):
        return None
    normalised = posixpath.normpath(relative_path)
    if normalised in (".", "..") or normalised.startswith("../"):
        return None
    return normalised


def resolve_inside(root: PathLike, relative_path: str) -> str:
    """Absolute path of `relative_path` under `root`.

    Only the path *as written* must stay inside the root: a symbolic link inside the root may
    point anywhere (datasets are often linked in), but '..' escapes and absolute paths are refused.
    """
    normalised = _normalised_inside(relative_path)
    if normalised is None:
        raise DataError(f"image path {relative_path!r} is not inside the dataset root {root} "
                        "(absolute paths and '..' are refused; paths are relative to the root)")
    return os.path.join(os.path.abspath(root), normalised)


def resolve_all(root: PathLike, relative_paths: Sequence, source: PathLike) -> list:
    """`resolve_inside` for a whole column, reporting every offender in one message."""
    root_abs = os.path.abspath(root)
    resolved, refused = [], []
    for rel in relative_paths:
        normalised = _normalised_inside(rel)
        if normalised is None:
            refused.append(repr(rel))
            resolved.append(None)
        else:
            resolved.append(os.path.join(root_abs, normalised))
    if refused:
        raise DataError(
            f"{source}: {len(refused)} image paths are not inside the dataset root {root_abs} "
            f"(absolute paths, '..' and empty paths are refused; paths are relative to the root): "
            f"{list_some(refused)}"
        )
    return resolved


def require_identities(raw_identity: pd.Series, labelled: pd.Series, row_names: pd.Series,
                       source: PathLike, what: str) -> None:
    """Labelled rows (e.g. `database`) must name their individual.

    An explicit unknown label (`new_individual`, `new_whale`) is accepted and becomes identity None,
    but an empty cell on a labelled row is a broken row, not a decision, so it is an error.
    """
    empty = labelled & raw_identity.map(is_missing)
    if empty.any():
        raise DataError(f"{source}: {int(empty.sum())} {what} rows have an empty identity: "
                        f"{list_some(row_names[empty])}")


def _unreadable(path: str) -> str | None:
    """None if PIL can identify the image from its header, else the reason."""
    try:
        with Image.open(path) as img:
            img.verify()
        return None
    except Exception as err:  # PIL raises many types for corrupt files; all mean "unreadable"
        return f"{type(err).__name__}: {err}"


def displayed_size(path: str) -> tuple:
    """(width, height) of the image as shown, after its EXIF orientation: the frame boxes are in."""
    with Image.open(path) as img:
        width, height = img.size
        turned = img.getexif().get(ExifTags.Base.Orientation, 1) in _SWAPPING_ORIENTATIONS
    return (height, width) if turned else (width, height)


def _box_outside(box: list, path: str) -> str | None:
    """None if the box [x, y, w, h] overlaps the image by at least a pixel each way, else why not.
    Boxes that reach past the border are fine: the loader clips them to the image."""
    width, height = displayed_size(path)
    x, y, w, h = box
    if min(x + w, width) - max(x, 0.0) < 1 or min(y + h, height) - max(y, 0.0) < 1:
        return f"bbox {box} lies outside the {width}x{height} image"
    return None


def _check_bboxes(df: pd.DataFrame) -> None:
    """Every box is None or a usable [x, y, w, h], whichever adapter or caller built the table."""
    bad = []
    for image_id, box in zip(df["image_id"], df["bbox"], strict=True):
        try:
            parse_bbox(box)
        except ValueError as err:
            bad.append(f"{image_id}: {box!r} ({err})")
    if bad:
        raise DataError(f"{len(bad)} bbox values are not boxes [x, y, w, h] with w, h > 0: {list_some(bad)}")


def _verify_images(df: pd.DataFrame, root: str) -> None:
    """Open every image header once; boxes are checked against the image size read there."""
    # Header-only checks are fast from the page cache; a thread pool was slower (GIL hand-offs
    # cost more than the reads), so a plain loop.
    rows = tqdm(zip(df["path"], df["bbox"], strict=True), total=len(df), desc="checking images", unit="img",
                disable=len(df) < _PROGRESS_MIN_IMAGES)
    broken, outside = [], []
    for path, box in rows:
        reason = _unreadable(path)
        if reason is not None:
            broken.append(f"{_display(path, root)} ({reason})")
        elif box is not None and (problem := _box_outside(parse_bbox(box), path)):
            outside.append(f"{_display(path, root)} ({problem})")
    if broken:
        raise DataError(f"{len(broken)} image files cannot be read as images: {list_some(broken)}")
    if outside:
        raise DataError(f"{len(outside)} boxes lie entirely outside their image (boxes are [x, y, w, h] "
                        f"in pixels of the image as shown): {list_some(outside)}")


def _display(path: str, root: str) -> str:
    rel = os.path.relpath(path, root)
    return path if rel.startswith("..") else rel


def validate_table(df: pd.DataFrame, root: PathLike, *, verify_images: bool = True) -> pd.DataFrame:
    """Check a canonical table; return it unchanged or raise one DataError naming the offenders."""
    root = os.path.abspath(root)
    missing_cols = [c for c in COLUMNS if c not in df.columns]
    if missing_cols:
        raise DataError(f"metadata table lacks columns {', '.join(missing_cols)}")
    if df.empty:
        raise DataError(f"no images in the dataset at {root}")

    no_id = df["image_id"].map(is_missing)
    if no_id.any():
        raise DataError(f"{int(no_id.sum())} rows have an empty image_id: {list_some(df['path'][no_id])}")

    dup = df["image_id"][df["image_id"].duplicated(keep=False)]
    if len(dup):
        raise DataError(f"{dup.nunique()} image_id values are used more than once: "
                        f"{list_some(sorted(dup.unique()))}")

    bad_split = ~df["split"].isin(SPLITS)
    if bad_split.any():
        raise DataError(f"unknown split values {list_some(sorted(set(map(str, df['split'][bad_split]))))} "
                        f"in {int(bad_split.sum())} rows; expected {' or '.join(SPLITS)}")

    no_dataset = df["dataset"].map(is_missing)
    if no_dataset.any():
        raise DataError(f"{int(no_dataset.sum())} rows have an empty dataset: "
                        f"{list_some(df['image_id'][no_dataset])}")

    outside = [p for p in df["path"] if is_missing(p) or not os.path.isabs(p)
               or os.path.commonpath([root, os.path.normpath(p)]) != root]
    if outside:
        raise DataError(f"{len(outside)} image paths are not inside the dataset root {root}: "
                        f"{list_some(outside)}")

    absent = [p for p in df["path"] if not os.path.isfile(p)]
    if absent:
        raise DataError(f"{len(absent)} image files are missing under {root}: "
                        f"{list_some(_display(p, root) for p in absent)}")

    _check_bboxes(df)
    if verify_images:
        _verify_images(df, root)
    return df


def require_query(df: pd.DataFrame, filters: str = "") -> pd.DataFrame:
    """The query rows; an empty query set stops with a message saying what was kept."""
    query = df[df["split"] == "query"]
    if query.empty:
        counts = ", ".join(f"{k}={v}" for k, v in df["split"].value_counts().items()) or "no rows"
        detail = f"{filters}; " if filters else ""
        raise DataError(f"query set is empty after filtering ({detail}{len(df)} images left: {counts})")
    return query

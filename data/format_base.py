"""What the dataset format readers share: the DATASETS registry, the image files of a folder, and
the canonical table (data/table.py) built from a frame that already uses our column names.

The readers themselves are data/formats.py and data/format_animalclef2026.py.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from PIL import Image

from core.errors import DataError, list_some
from core.files import visible_files
from core.registry import Registry
from data.table import COLUMNS, clean_identity, clean_text, make_table, parse_bbox
from data.validate import require_identities, resolve_all

DATASETS = Registry("dataset format")

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
# Other formats phones, cameras and the web save photos in. A folder of photos (format folders,
# data.query_root) takes those this PIL opens (AVIF and JPEG 2000 depend on its build, HEIC on a
# plugin); the others are listed as unreadable (data/readable.py), never left out without a word.
OTHER_PHOTO_EXTENSIONS = frozenset({".gif", ".avif", ".heic", ".heif", ".jfif", ".jpe", ".jxl", ".jp2"})
# Split names of other conventions mapped to ours; anything else is left for validation to reject.
SPLIT_ALIASES = {"train": "database", "test": "query", "database": "database", "query": "query"}
OPTIONAL_TEXT = ("species", "orientation", "date")


def _column(frame: pd.DataFrame, name: str) -> list:
    return [clean_text(v) for v in frame[name]] if name in frame.columns else [None] * len(frame)


def _bboxes(values: list, names: list, source: Path) -> list:
    """The `bbox` column parsed; an empty cell is "no box", anything else must be a usable box."""
    parsed, bad = [], []
    for line, (value, name) in enumerate(zip(values, names, strict=True), start=2):
        try:
            parsed.append(parse_bbox(value))
        except ValueError as err:
            parsed.append(None)
            bad.append(f"line {line} ({name}): {value!r} ({err})")
    if bad:
        raise DataError(f"{source}: {len(bad)} bbox values are not boxes [x, y, w, h] with w, h > 0: "
                        f"{list_some(bad)}")
    return parsed


def _split_values(raw: pd.Series) -> list:
    return [SPLIT_ALIASES.get(str(v).strip().lower(), v) for v in raw]


def table_from_metadata(frame: pd.DataFrame, root: Path, source: Path, *, default_dataset: str) -> pd.DataFrame:
    """Canonical table from a frame already using our column names (animalclef2025, wildlifereid10k, csv)."""
    image_ids = frame["image_id"].map(lambda v: clean_text(v) or "")
    splits = _split_values(frame["split"]) if "split" in frame.columns else ["database"] * len(frame)
    require_identities(frame["identity"], pd.Series([s == "database" for s in splits], index=frame.index),
                       image_ids, source, "database")
    datasets = _column(frame, "dataset") if "dataset" in frame.columns else [default_dataset] * len(frame)
    columns = {
        "image_id": list(image_ids),
        "identity": [clean_identity(v) for v in frame["identity"]],
        "path": resolve_all(root, list(frame["path"]), source),
        "split": splits,
        "dataset": datasets,
        "bbox": _bboxes(list(frame["bbox"]), list(image_ids), source) if "bbox" in frame.columns
        else [None] * len(frame),
    }
    columns.update({name: _column(frame, name) for name in OPTIONAL_TEXT})
    return make_table([dict(zip(COLUMNS, values, strict=True))
                       for values in zip(*(columns[c] for c in COLUMNS), strict=True)])


def require_dir(root: Path) -> Path:
    if not root.is_dir():
        raise DataError(f"dataset root {root} is not a folder")
    return root


def photo_extensions() -> frozenset:
    """What a folder of photos takes: IMAGE_EXTENSIONS and the other photo formats PIL opens here
    (asked when needed: a plugin may register an opener after this module is imported)."""
    opened = Image.registered_extensions()
    return IMAGE_EXTENSIONS | {ext for ext in OTHER_PHOTO_EXTENSIONS if ext in opened}


def list_images(folder: Path, extensions: frozenset = IMAGE_EXTENSIONS) -> list:
    """Image files under `folder`, recursively, following links once, sorted, hidden entries skipped."""
    return [path for path in visible_files(folder) if path.suffix.lower() in extensions]

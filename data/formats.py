"""Adapters from the formats users bring to the one canonical table (data/table.py).

Each adapter is registered under its format name as `fn(root, columns) -> DataFrame` and returns
absolute image paths resolved inside the dataset root. Shared rules:
  * `new_individual` / `new_whale` mean "unknown": identity None, never an identity.
  * A `database` row with an *empty* identity cell is an error (a broken row); an explicit unknown
    label on a database row is kept with identity None, so training skips it (Humpback's
    `new_whale` training images).
  * Query rows keep their identity when the file fills it (dev sets label queries for scoring).

What the adapters share (the DATASETS registry, `table_from_metadata`) is data/format_base.py;
AnimalCLEF 2026's adapter is data/format_animalclef2026.py, and data.query_root's folder of
photos is added by data/query_folders.py. `load_table` reads a DataConfig through all of them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import pandas as pd

import data.format_animalclef2026  # noqa: F401  (registered on import: this module then knows every format)
from core.errors import ConfigError, DataError, list_some
from core.schema import SYNTHETIC
from core.suggest import did_you_mean
from data.format_base import DATASETS, list_images, photo_extensions, require_dir, table_from_metadata
from data.query_folders import with_query_folder
from data.readable import PhotoFolder, screen_photos
from data.table import COLUMNS, bbox_problem, clean_identity, clean_text, make_table, parse_numbers
from data.validate import read_csv, require_columns, require_identities, resolve_all, validate_table


@DATASETS.register("animalclef2025")
def animalclef2025(root: Path, columns: Dict[str, str]) -> pd.DataFrame:
    """ROOT/metadata.csv with image_id, identity, path, split (database/query), dataset, and
    optionally species, orientation, date, bbox; paths relative to ROOT."""
    source = require_dir(root) / "metadata.csv"
    frame = read_csv(source)
    require_columns(frame, ["image_id", "identity", "path", "split", "dataset"], source)
    return table_from_metadata(frame, root, source, default_dataset=root.name)


@DATASETS.register("wildlifereid10k")
def wildlifereid10k(root: Path, columns: Dict[str, str]) -> pd.DataFrame:
    """ROOT/metadata.csv like AnimalCLEF's, with split train/test (-> database/query) and identities
    on test rows too; bbox [x, y, w, h] as a list string where present."""
    source = require_dir(root) / "metadata.csv"
    frame = read_csv(source)
    require_columns(frame, ["image_id", "identity", "path", "split", "dataset"], source)
    return table_from_metadata(frame, root, source, default_dataset=root.name)


def read_corner_boxes(source: Path) -> List[Tuple[int, Optional[str], Union[str, List[str]]]]:
    """Rows of a Humpback-style box CSV as (file line, image name or None, box cell as written).

    The name column is `fn` or `Image`; the box is one 'x0 y0 x1 y1' column (the cell, a string)
    or columns x0, y0, x1, y1 (the four cells, a list). Parsing is the caller's, so that it can
    name every bad row in one message; a DataError says when the columns are not of this shape.
    """
    frame = read_csv(source)
    name_col = next((c for c in ("fn", "Image") if c in frame.columns), None)
    if name_col is None:
        require_columns(frame, ["fn"], source)
    if all(c in frame.columns for c in ("x0", "y0", "x1", "y1")):
        cells = frame[["x0", "y0", "x1", "y1"]].itertuples(index=False)
        corners = [[clean_text(v) or "" for v in row] for row in cells]
    else:
        others = [c for c in frame.columns if c != name_col]
        if len(others) != 1:
            raise DataError(f"{source}: expected a name column and one 'x0 y0 x1 y1' column "
                            f"(or columns x0, y0, x1, y1); the file has columns: {', '.join(frame.columns)}")
        corners = [clean_text(v) or "" for v in frame[others[0]]]
    return [(line, clean_text(name), value)
            for line, (name, value) in enumerate(zip(frame[name_col], corners, strict=True), start=2)]


def _humpback_boxes(root: Path) -> Dict[str, list]:
    """Optional ROOT/bboxes.csv (see `read_corner_boxes`), as [x, y, w, h] by image name."""
    source = root / "bboxes.csv"
    if not source.is_file():
        return {}
    boxes, bad = {}, []
    # Every row of this file is there to give a box, so an empty cell is an error, not "no box".
    for line, name, value in read_corner_boxes(source):
        try:
            if name is None:
                raise ValueError("a box without an image name")
            x0, y0, x1, y1 = parse_numbers(value)
            box = [x0, y0, x1 - x0, y1 - y0]
            problem = bbox_problem(box)
            if problem:
                raise ValueError(problem.replace("negative width or height", "x1 < x0 or y1 < y0"))
        except ValueError as err:
            bad.append(f"line {line} ({name or 'no name'}): {value!r} ({err})")
            continue
        boxes[name] = box
    if bad:
        raise DataError(f"{source}: {len(bad)} boxes are not 'x0 y0 x1 y1' with x1 > x0 and y1 > y0: "
                        f"{list_some(bad)}")
    return boxes


@DATASETS.register("humpback")
def humpback(root: Path, columns: Dict[str, str]) -> pd.DataFrame:
    """Kaggle Humpback Whale Identification: train.csv + train/ (database), test/ (query, unlabelled).

    Training images labelled `new_whale` stay in the database with identity None: each may be a
    different whale, so they name no individual; training and galleries skip unlabelled rows.
    """
    source = require_dir(root) / "train.csv"
    frame = read_csv(source)
    require_columns(frame, ["Image", "Id"], source)
    names = frame["Image"].map(lambda v: clean_text(v) or "")
    require_identities(frame["Id"], pd.Series(True, index=frame.index), names, source, "train")
    boxes = _humpback_boxes(root)
    base = {"dataset": "humpback", "species": "humpback whale"}
    paths = resolve_all(root / "train", list(names), source)
    rows = [
        {"image_id": name, "identity": clean_identity(ident), "path": path, "split": "database",
         "bbox": boxes.get(name), **base}
        for name, ident, path in zip(names, frame["Id"], paths, strict=True)
    ]
    test_dir = root / "test"
    if test_dir.is_dir():
        rows += [{"image_id": p.name, "identity": None, "path": os.path.abspath(p), "split": "query",
                  "bbox": boxes.get(p.name), **base} for p in list_images(test_dir)]
    return make_table(rows)


@DATASETS.register("folders")
def folders(root: Path, columns: Dict[str, str]) -> pd.DataFrame:
    """ROOT/<identity>/<image>, at any depth: the identity is the image's immediate folder name.

    So LionData's ROOT/{train,val}/<lion>/<image> works too: the lion's name is the identity.
    """
    root = require_dir(root)
    extensions = photo_extensions()
    images = list_images(root, extensions)
    if not images:
        folders = [p.name for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
        held = f": its {len(folders)} identity folders ({list_some(folders)}) hold none" if folders else ""
        raise DataError(f"no images found under {root}{held} (extensions: {', '.join(sorted(extensions))})")
    loose = [p.name for p in images if p.parent == root]
    if loose:
        raise DataError(f"{root}: {len(loose)} images lie directly in the root, outside any identity "
                        f"folder (expected ROOT/<identity>/<image>): {list_some(loose)}")
    dataset = Path(os.path.abspath(root)).name
    return make_table([
        {"image_id": p.relative_to(root).as_posix(), "identity": p.parent.name,
         "path": os.path.abspath(p), "split": "database", "dataset": dataset}
        for p in images
    ])


@DATASETS.register("csv")
def csv(root: Path, columns: Dict[str, str]) -> pd.DataFrame:
    """Any table with image paths and identities; `columns` maps our column names to the file's.

    Unmapped columns are looked up under our own name. Paths are relative to the CSV's folder; no
    `image_id` column -> the 0-based row number; no `split` -> all `database`; no `dataset` -> the
    CSV's folder name.
    """
    source = root / "metadata.csv" if root.is_dir() else root
    unknown = [k for k in columns if k not in COLUMNS]
    if unknown:
        raise ConfigError(f"data.columns: '{unknown[0]}' is not a column of ours"
                          f"{did_you_mean(unknown[0], COLUMNS)}")
    frame = read_csv(source)
    mapping = {ours: columns.get(ours, ours) for ours in COLUMNS}
    require_columns(frame, [mapping["path"], mapping["identity"]] +
                    [theirs for ours, theirs in mapping.items() if ours in columns], source)
    present = {ours: frame[theirs] for ours, theirs in mapping.items() if theirs in frame.columns}
    ours_frame = pd.DataFrame(present, index=frame.index)
    if "image_id" not in ours_frame.columns:
        ours_frame["image_id"] = [str(i) for i in range(len(frame))]
    folder = source.parent
    return table_from_metadata(ours_frame, folder, source, default_dataset=Path(os.path.abspath(folder)).name)


def _filter(df: pd.DataFrame, column: str, keep: list, key: str) -> pd.DataFrame:
    if not keep:
        return df
    available = sorted({v for v in df[column] if v is not None})
    unknown = [v for v in keep if v not in available]
    if unknown:
        raise ConfigError(f"{key}: no images with {column} '{unknown[0]}'{did_you_mean(unknown[0], available)}")
    return df[df[column].isin(keep)].reset_index(drop=True)


def _read(cfg) -> tuple:
    if cfg.format == SYNTHETIC:
        from data.synthetic import ensure_synthetic  # generated on demand; imported only when used

        syn = cfg.synthetic
        root = Path(ensure_synthetic(cfg.root, seed=syn.seed, individuals=syn.individuals,
                                     images_per_individual=syn.images_per_individual, scenes=syn.scenes,
                                     sites=syn.sites))
        return DATASETS.get("animalclef2025")(root, {}), root
    if cfg.format not in DATASETS:
        raise ConfigError(f"unknown dataset format '{cfg.format}'"
                          f"{did_you_mean(cfg.format, DATASETS.names() + [SYNTHETIC])}")
    if not cfg.root:
        if cfg.format in ("folders", "csv") and getattr(cfg, "query_root", ""):
            return make_table([]), None  # only data.query_root: a plain folder of unlabelled photos
        raise ConfigError(f"data.root is required for data.format={cfg.format}")
    if cfg.columns and cfg.format != "csv":
        raise ConfigError(f"data.columns applies only to data.format=csv, not {cfg.format}")
    root = Path(cfg.root).expanduser()
    if not root.exists():
        raise DataError(f"dataset root {root} does not exist")
    # Image paths of a csv file are relative to the file's folder, so that folder is the root.
    images_root = root.parent if cfg.format == "csv" and not root.is_dir() else root
    return DATASETS.get(cfg.format)(root, dict(cfg.columns)), images_root


def load_table_with_root(cfg) -> Tuple[pd.DataFrame, Path]:
    """`load_table`'s table and the folder its image paths live in (for synthetic data,
    the generated folder), where annotation files such as ROOT/labels are looked up. With
    data.query_root, the images of that folder are added as queries (`with_query_folder`)."""
    df, root = _read(cfg)
    df = _filter(df, "dataset", list(cfg.datasets), "data.datasets")
    df = _filter(df, "species", list(cfg.species), "data.species")
    if getattr(cfg, "query_root", ""):
        return with_query_folder(df, root, cfg), root if root is not None else Path(cfg.query_root).expanduser()
    if cfg.format == "folders":
        (df,) = screen_photos([PhotoFolder(df, root)], cfg)
    return validate_table(df, root, verify_images=cfg.verify_images), root


def load_table(cfg) -> pd.DataFrame:
    """Read, filter (data.datasets, data.species) and validate the dataset a DataConfig describes.
    Cropping by data.crop.detector is a step of the engine (engine/tables.py), not of reading."""
    return load_table_with_root(cfg)[0]

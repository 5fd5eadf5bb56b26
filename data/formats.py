"""Adapters from the formats users bring to the one canonical table (data/table.py).

Each adapter is registered under its format name as `fn(root, columns) -> DataFrame` and returns
absolute image paths resolved inside the dataset root. Shared rules:
  * `new_individual` / `new_whale` mean "unknown": identity None, never an identity.
  * A `database` row with an *empty* identity cell is an error (a broken row); an explicit unknown
    label on a database row is kept with identity None, so training skips it (Humpback's
    `new_whale` training images).
  * Query rows keep their identity when the file fills it (dev sets label queries for scoring).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import pandas as pd

from core.errors import ConfigError, DataError, list_some
from core.files import visible_files
from core.registry import Registry
from core.schema import SYNTHETIC
from core.suggest import did_you_mean
from data.table import (
    COLUMNS,
    bbox_problem,
    clean_identity,
    clean_text,
    make_table,
    parse_bbox,
    parse_numbers,
)
from data.validate import read_csv, require_columns, require_identities, resolve_all, validate_table

DATASETS = Registry("dataset format")

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
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


def _table_from_metadata(frame: pd.DataFrame, root: Path, source: Path, *, default_dataset: str) -> pd.DataFrame:
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


def _require_dir(root: Path) -> Path:
    if not root.is_dir():
        raise DataError(f"dataset root {root} is not a folder")
    return root


@DATASETS.register("animalclef2025")
def animalclef2025(root: Path, columns: Dict[str, str]) -> pd.DataFrame:
    """ROOT/metadata.csv with image_id, identity, path, split (database/query), dataset, and
    optionally species, orientation, date, bbox; paths relative to ROOT."""
    source = _require_dir(root) / "metadata.csv"
    frame = read_csv(source)
    require_columns(frame, ["image_id", "identity", "path", "split", "dataset"], source)
    return _table_from_metadata(frame, root, source, default_dataset=root.name)


@DATASETS.register("wildlifereid10k")
def wildlifereid10k(root: Path, columns: Dict[str, str]) -> pd.DataFrame:
    """ROOT/metadata.csv like AnimalCLEF's, with split train/test (-> database/query) and identities
    on test rows too; bbox [x, y, w, h] as a list string where present."""
    source = _require_dir(root) / "metadata.csv"
    frame = read_csv(source)
    require_columns(frame, ["image_id", "identity", "path", "split", "dataset"], source)
    return _table_from_metadata(frame, root, source, default_dataset=root.name)


SOLUTION_FILE = "solution.csv"  # animalclef2026: a development set's answers for the test rows (image_id, identity)


@DATASETS.register("animalclef2026")
def animalclef2026(root: Path, columns: Dict[str, str]) -> pd.DataFrame:
    """AnimalCLEF 2026 (clustering): ROOT/metadata.csv with image_id, identity, path, split, dataset
    (species and other columns optional). `train` rows are labelled (images/<dataset>/train/<identity>/...),
    `test` rows are the images to cluster (images/<dataset>/test/...); a dataset may have no train row.

    A train row without an identity is an error naming it. A test row's identity is ignored, with a
    warning: it is what the clustering must find. A development set's answers go in
    ROOT/solution.csv (image_id, identity), which only scores the clusters (metrics.json).
    """
    source = _require_dir(root) / "metadata.csv"
    frame = read_csv(source)
    require_columns(frame, ["image_id", "identity", "path", "split", "dataset"], source)
    image_ids = frame["image_id"].map(lambda v: clean_text(v) or "")
    splits = frame["split"].map(lambda v: (clean_text(v) or "").lower())
    bad = ~splits.isin(["train", "test"])
    if bad.any():
        raise DataError(f"{source}: split must be train or test; {int(bad.sum())} rows have "
                        f"{list_some(sorted(set(frame['split'][bad].map(str))))} ({list_some(image_ids[bad])})")
    train = splits == "train"
    unnamed = train & frame["identity"].map(lambda v: clean_identity(v) is None)
    if unnamed.any():
        raise DataError(f"{source}: {int(unnamed.sum())} train rows have no identity (every train image must name "
                        f"its individual): {list_some(image_ids[unnamed])}")
    named_tests = ~train & frame["identity"].map(lambda v: clean_identity(v) is not None)
    if named_tests.any():
        warnings.warn(f"{source}: {int(named_tests.sum())} test rows carry an identity ({list_some(image_ids[named_tests])}); "
                      f"it is ignored: test images are what is clustered (a development set's answers go in "
                      f"{SOLUTION_FILE}, which only scores the clusters)", stacklevel=2)
        frame = frame.assign(identity=frame["identity"].where(train, None))
    table = _table_from_metadata(frame, root, source, default_dataset=root.name)
    return _with_solution(table, root / SOLUTION_FILE)


def _with_solution(table: pd.DataFrame, solution: Path) -> pd.DataFrame:
    """The test rows' identities from solution.csv, when there is one (for scoring only)."""
    if not solution.is_file():
        return table
    answers = read_csv(solution)
    require_columns(answers, ["image_id", "identity"], solution)
    by_id = dict(zip(answers["image_id"].map(lambda v: clean_text(v) or ""), answers["identity"].map(clean_identity),
                     strict=True))
    tests = table["split"] == "query"
    strangers = sorted(set(by_id) - set(table.loc[tests, "image_id"]))
    if strangers:
        raise DataError(f"{solution}: {len(strangers)} image ids are not test rows of metadata.csv: {list_some(strangers)}")
    table = table.copy()
    table.loc[tests, "identity"] = table.loc[tests, "image_id"].map(lambda i: by_id.get(i))
    return table.astype(object).where(pd.notna(table), None)


def list_images(folder: Path) -> list:
    """Image files under `folder`, recursively, following links once, sorted, hidden entries skipped."""
    return [path for path in visible_files(folder) if path.suffix.lower() in IMAGE_EXTENSIONS]


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
    source = _require_dir(root) / "train.csv"
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
    root = _require_dir(root)
    images = list_images(root)
    if not images:
        folders = [p.name for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
        held = f": its {len(folders)} identity folders ({list_some(folders)}) hold none" if folders else ""
        raise DataError(f"no images found under {root}{held} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
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
    return _table_from_metadata(ours_frame, folder, source, default_dataset=Path(os.path.abspath(folder)).name)


# ----------------------------------------------------------------------------- data.query_root
# A labelled gallery (format folders or csv) plus a plain folder of new photos, each one a query.


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def _query_folder(cfg, root: Optional[Path]) -> Path:
    folder = Path(cfg.query_root).expanduser()
    if not folder.exists():
        raise DataError(f"data.query_root {folder} does not exist")
    if not folder.is_dir():
        raise DataError(f"data.query_root {folder} is not a folder (a folder of photos to identify)")
    if root is None:
        return folder
    real_folder, real_root = os.path.realpath(folder), os.path.realpath(root)
    if real_folder == real_root:
        raise DataError(f"data.query_root {folder} is the labelled gallery data.root itself: keep the photos to "
                        "identify in a folder of their own (it may lie inside data.root)")
    if _inside(real_root, real_folder):
        raise DataError(f"data.root {root} lies inside data.query_root {folder}: its labelled images would be "
                        "queries too; keep the photos to identify in a folder of their own")
    return folder


def _query_images(folder: Path) -> list:
    images = list_images(folder)
    if not images:
        others = [p.relative_to(folder).as_posix() for p in visible_files(folder)]
        if not others:
            raise DataError(f"data.query_root {folder} is empty: put the photos to identify there")
        raise DataError(f"no images found under data.query_root {folder} (extensions: "
                        f"{', '.join(sorted(IMAGE_EXTENSIONS))}); it holds {len(others)} other files: "
                        f"{list_some(others)}")
    return images


def _content(path: str) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _shared_images(gallery: pd.DataFrame, queries: pd.DataFrame) -> list:
    """'query file = gallery image' for every query that is a gallery file (the same file, through
    any link, or a byte-identical copy). Only files of equal size are read."""
    by_real = {os.path.realpath(p): i for p, i in zip(gallery["path"], gallery["image_id"], strict=True)}
    by_size: Dict[int, list] = {}
    for path, image_id in zip(gallery["path"], gallery["image_id"], strict=True):
        by_size.setdefault(os.path.getsize(path), []).append((path, image_id))
    contents: Dict[str, str] = {}

    def content(path: str) -> str:
        if path not in contents:
            contents[path] = _content(path)
        return contents[path]

    shared = []
    for path, image_id in zip(queries["path"], queries["image_id"], strict=True):
        twin = by_real.get(os.path.realpath(path))
        if twin is None:
            twin = next((g for p, g in by_size.get(os.path.getsize(path), []) if content(p) == content(path)), None)
        if twin is not None:
            shared.append(f"{image_id} = {twin}")
    return shared


def with_query_folder(df: pd.DataFrame, root: Path, cfg) -> pd.DataFrame:
    """The validated table of a labelled gallery (`df`, read from data.root) plus every image under
    data.query_root, recursively, as a query without identity. Without data.root (`root` None) the
    table is the query folder alone, one dataset named after it: photos to cluster, not to identify. Each query's image_id is its path
    relative to that folder; it joins the gallery's dataset and species.

    The query folder may lie inside a `folders` root (its images are then not an identity folder).
    Refused with one DataError each: a missing, empty or imageless query folder, a gallery without
    labelled images or of several datasets, a query folder that holds the gallery, queries already
    in the table, and an image both in the gallery and the query folder.
    """
    if cfg.format not in ("folders", "csv"):
        raise ConfigError(f"data.query_root applies only to data.format=folders or csv, not {cfg.format}")
    folder = _query_folder(cfg, root)
    images = _query_images(folder)
    if root is None:  # a plain folder of unlabelled photos, no gallery (eval.py task=cluster)
        queries = make_table([{"image_id": p.relative_to(folder).as_posix(), "identity": None, "path": os.path.abspath(p),
                               "split": "query", "dataset": Path(os.path.abspath(folder)).name} for p in images])
        return validate_table(queries, folder, verify_images=cfg.verify_images)
    real_folder = os.path.realpath(folder)
    if cfg.format == "folders":  # a query folder nested in the gallery root is not an identity
        df = df[~df["path"].map(lambda p: _inside(os.path.realpath(p), real_folder))].reset_index(drop=True)
    listed = df[df["split"] == "query"]
    if len(listed):
        raise DataError(f"{root} already lists {len(listed)} query images ({list_some(listed['image_id'])}); "
                        f"with data.query_root the queries are the photos in {folder}: drop those rows or "
                        "leave data.query_root empty")
    gallery = df[df["identity"].notna()]
    if gallery.empty:
        what = (f"no labelled images under data.root {root} outside data.query_root (the gallery is "
                "ROOT/<identity>/<image>)" if cfg.format == "folders" else f"{root} lists no labelled images")
        raise DataError(f"{what}: there is nothing to match the photos in data.query_root against")
    datasets = sorted(set(gallery["dataset"]))
    if len(datasets) > 1:
        raise DataError(f"the gallery holds {len(datasets)} datasets ({list_some(datasets)}), and the photos in "
                        f"data.query_root must be matched within one: choose it with data.datasets=[...]")
    species = sorted({s for s in gallery["species"] if s is not None})
    queries = make_table([
        {"image_id": p.relative_to(folder).as_posix(), "identity": None, "path": os.path.abspath(p), "split": "query",
         "dataset": datasets[0], "species": species[0] if len(species) == 1 else None}
        for p in images
    ])
    clashing = sorted(set(queries["image_id"]) & set(df["image_id"]))
    if clashing:
        raise DataError(f"{len(clashing)} photos in data.query_root have the same relative path as a gallery image "
                        f"({list_some(clashing)}): rename them or move them to a folder of another name")
    df = validate_table(df, root, verify_images=cfg.verify_images)
    queries = validate_table(queries, folder, verify_images=cfg.verify_images)
    shared = _shared_images(df, queries)
    if shared:
        raise DataError(f"{len(shared)} photos are both in the gallery and in data.query_root {folder} (query = "
                        f"gallery image): {list_some(shared)}; a query must be a photo the gallery does not hold")
    return pd.concat([df, queries], ignore_index=True)


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
                                     images_per_individual=syn.images_per_individual, scenes=syn.scenes))
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
    return validate_table(df, root, verify_images=cfg.verify_images), root


def load_table(cfg) -> pd.DataFrame:
    """Read, filter (data.datasets, data.species) and validate the dataset a DataConfig describes.
    Cropping by data.crop.detector is a step of the engine (engine/tables.py), not of reading."""
    return load_table_with_root(cfg)[0]

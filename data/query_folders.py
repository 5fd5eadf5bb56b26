"""data.query_root: a labelled gallery (format folders or csv) plus a plain folder of new photos,
each one a query; or, without a gallery, that folder alone (photos to cluster)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, Optional

import pandas as pd

from core.errors import ConfigError, DataError, list_some
from core.files import visible_files
from data.format_base import list_images, photo_extensions
from data.readable import PhotoFolder, screen_photos
from data.table import make_table
from data.validate import validate_table


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
    extensions = photo_extensions()
    images = list_images(folder, extensions)
    if not images:
        others = [p.relative_to(folder).as_posix() for p in visible_files(folder)]
        if not others:
            raise DataError(f"data.query_root {folder} is empty: put the photos to identify there")
        raise DataError(f"no images found under data.query_root {folder} (extensions: "
                        f"{', '.join(sorted(extensions))}); it holds {len(others)} other files: "
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
        (queries,) = screen_photos([PhotoFolder(queries, folder)], cfg)
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
    # Every photo folder at once, so that one message names all the photos that cannot be read.
    if cfg.format == "folders":
        queries, df = screen_photos([PhotoFolder(queries, folder), PhotoFolder(df, root)], cfg)
    else:
        (queries,) = screen_photos([PhotoFolder(queries, folder)], cfg)
    df = validate_table(df, root, verify_images=cfg.verify_images)
    queries = validate_table(queries, folder, verify_images=cfg.verify_images)
    shared = _shared_images(df, queries)
    if shared:
        raise DataError(f"{len(shared)} photos are both in the gallery and in data.query_root {folder} (query = "
                        f"gallery image): {list_some(shared)}; a query must be a photo the gallery does not hold")
    return pd.concat([df, queries], ignore_index=True)

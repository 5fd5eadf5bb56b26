"""Photos reidzoo cannot read, found in a folder of photos (format folders, data.query_root) before
anything is extracted: listed together, then refused, or left out with data.skip_unreadable=true.

Two kinds: files named as photos in a format this PIL has no decoder for (HEIC without its plugin,
JPEG XL), and files whose decode fails (a truncated JPEG, whose header alone looks fine, would
otherwise stop an extraction halfway, one file at a time). Every photo is decoded once, JPEGs at
1/8 scale (which still reads the whole file), in a pool of threads (PIL decodes without holding
the GIL); a good verdict is kept in the image cache under the file's identity (path, size, mtime),
so a second run decodes none of the photos it has checked.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from core.array_cache import ArrayCache
from core.errors import DataError, list_some
from core.files import file_identity, visible_files
from data.format_base import OTHER_PHOTO_EXTENSIONS, photo_extensions
from data.images import resolve_cache_dir

VERDICT_VERSION = 1  # bump when the check changes, so that earlier verdicts are not reused
_GOOD = np.zeros(0, np.uint8)  # a verdict entry: its presence is the verdict
_PROGRESS_MIN_IMAGES = 200
_MAX_THREADS = 8


@dataclass(frozen=True)
class PhotoFolder:
    """A table of the photos listed from `folder` (its rows' paths lie under it)."""

    table: pd.DataFrame
    folder: Path


def decode_problem(path: str) -> Optional[str]:
    """None when PIL decodes the whole file, else why not."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (1, 1))  # JPEG only: the smallest scale; other formats ignore it
            img.load()
        return None
    except Exception as err:  # PIL raises many types for a broken file; all of them mean unreadable
        # The message names the photo already: without its path again ("cannot identify image file").
        return f"{type(err).__name__}: {str(err).replace(f' {path!r}', '')}"


def unopened_photos(folder: Path) -> List[Path]:
    """Files under `folder` named as photos in a format this PIL has no decoder for."""
    opened = photo_extensions()
    return [path for path in visible_files(folder)
            if path.suffix.lower() in OTHER_PHOTO_EXTENSIONS and path.suffix.lower() not in opened]


class DecodeVerdicts:
    """Which files decoded before, in the image cache (`data.cache_dir`; "none" = every run decodes)."""

    def __init__(self, cache_dir: str):
        self._cache = ArrayCache(resolve_cache_dir(cache_dir), what="image check")

    @staticmethod
    def _key(path: str) -> str:
        return hashlib.sha1(repr(("decodes", VERDICT_VERSION, *file_identity(path))).encode()).hexdigest()

    def problems(self, paths: Sequence[str]) -> Dict[str, str]:
        """{path: why it cannot be read} for the paths that do not decode; each decoded at most once."""
        todo = [p for p in paths if not (self._cache.enabled and self._cache.load(self._key(p)) is not None)]
        workers = max(1, min(_MAX_THREADS, os.cpu_count() or 1))
        found: Dict[str, str] = {}
        with ThreadPoolExecutor(workers) as pool:
            verdicts = tqdm(pool.map(decode_problem, todo), total=len(todo), desc="decoding photos", unit="img",
                            disable=len(todo) < _PROGRESS_MIN_IMAGES)
            for path, problem in zip(todo, verdicts, strict=True):
                if problem is None:
                    self._cache.save(self._key(path), _GOOD)
                else:
                    found[path] = problem
        return found


def screen_photos(folders: Sequence[PhotoFolder], data) -> List[pd.DataFrame]:
    """Each folder's table, without its unreadable photos when `data.skip_unreadable` (they are
    named in a warning); otherwise one DataError naming them all. Photos are decoded only with
    `data.verify_images`; files in formats PIL cannot open are found either way."""
    unreadable: List[str] = []
    listed = set()
    dropped: List[set] = []
    named_in: List[str] = []  # the folders holding any
    verdicts = DecodeVerdicts(data.cache_dir) if data.verify_images else None
    for part in folders:
        problems = {str(path): f"this PIL has no decoder for {path.suffix} files" for path in unopened_photos(part.folder)}
        decoded = verdicts.problems(list(part.table["path"])) if verdicts is not None else {}
        fresh = {path: problem for path, problem in {**problems, **decoded}.items()
                 if os.path.realpath(path) not in listed}  # a query folder may lie inside a folders root
        listed.update(os.path.realpath(path) for path in fresh)
        unreadable += [f"{_name(path, part.folder)} ({problem})" for path, problem in fresh.items()]
        named_in += [str(part.folder)] if fresh else []
        dropped.append(set(decoded))
    if not unreadable:
        return [part.table for part in folders]
    where = " and ".join(named_in)
    if not data.skip_unreadable:
        raise DataError(f"{len(unreadable)} photos under {where} cannot be read: {list_some(unreadable)}; convert "
                        "them (to JPEG or PNG) or leave them out with data.skip_unreadable=true")
    warnings.warn(f"leaving out {len(unreadable)} photos under {where} that cannot be read "
                  f"(data.skip_unreadable=true): {list_some(unreadable)}", stacklevel=2)
    return [part.table[~part.table["path"].isin(bad)].reset_index(drop=True) for part, bad in zip(folders, dropped, strict=True)]


def _name(path, folder: Path) -> str:
    relative = os.path.relpath(path, folder)
    return str(path) if relative.startswith("..") else Path(relative).as_posix()

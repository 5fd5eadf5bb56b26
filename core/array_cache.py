"""`ArrayCache`: numpy arrays on disk under string keys, for outputs that are slow to compute
(embeddings, image decodes, and next keypoints and detections).

An entry is one array (`<dir>/<key[:2]>/<key>.npy`) or a group of named arrays
(`<dir>/<key[:2]>/<key>.npz`). Writes go through a temporary file and an atomic rename, so a crash
or a concurrent writer never leaves half an entry; an entry that cannot be read back (damaged,
truncated, of another shape than expected) is a miss, computed again and overwritten. A disk
that refuses writes costs speed, never the run: one warning, then the cache only reads. The
folder is probed when the cache is made, before the work that fills it, so that the warning
comes first.
"""
from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, TypeVar, Union

import numpy as np
from numpy.lib.npyio import NpzFile

from core.files import save_npy_atomic, save_npz_atomic
from core.writable import nearest_existing, probe, reason

# What np.load raises on a missing, truncated or foreign file.
_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)
Arrays = Dict[str, np.ndarray]
Entry = TypeVar("Entry")
# Cache folders probed by this process: folder -> whether it takes files (one probe and warning each).
_PROBED: Dict[Path, bool] = {}


def _writable(directory: Path, what: str) -> bool:
    """Whether `directory` (or, while it does not exist, the folder it would be made in) takes
    files; warns the first time one does not."""
    key = directory.expanduser().absolute()
    if key not in _PROBED:
        existing = nearest_existing(key)
        try:
            if not existing.is_dir():
                raise NotADirectoryError(f"{existing} is a file")
            probe(existing)
            _PROBED[key] = True
        except OSError as err:
            _PROBED[key] = False
            warnings.warn(f"{what} cache {directory} cannot be written ({reason(err)}): this run only reads it",
                          stacklevel=3)
    return _PROBED[key]


class ArrayCache:
    """Keyed arrays under `directory`; `directory=None` turns caching off (every load misses).

    `what` names the contents in the warning about a failed write ("embedding", "image", ...).
    """

    def __init__(self, directory: Optional[Union[str, Path]], *, what: str = "array"):
        self.directory = Path(directory) if directory is not None else None
        self.what = what
        self._write_failed = self.directory is not None and not _writable(self.directory, what)

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    @property
    def writable(self) -> bool:
        """On, and no write refused so far."""
        return self.directory is not None and not self._write_failed

    def path(self, key: str, *, group: bool = False) -> Optional[Path]:
        """Where the entry of `key` lives; two-level fan-out keeps folders small at 100k+ entries."""
        if self.directory is None:
            return None
        return self.directory / key[:2] / f"{key}{'.npz' if group else '.npy'}"

    # ----------------------------------------------------------------- one array per key

    def load(self, key: str) -> Optional[np.ndarray]:
        array = _opened(self.path(key))
        if isinstance(array, NpzFile):  # a group where one array belongs
            array.close()
            return None
        return array

    def save(self, key: str, array: np.ndarray) -> None:
        path = self.path(key)
        if path is not None:
            self._write(lambda: save_npy_atomic(path, array))

    # ----------------------------------------------------------------- named arrays per key

    def load_group(self, key: str) -> Optional[Arrays]:
        entry = _opened(self.path(key, group=True))
        if not isinstance(entry, NpzFile):
            return None
        try:
            with entry:  # members are read lazily: all of them before the file closes
                return {name: entry[name] for name in entry.files}
        except _READ_ERRORS:
            return None

    def save_group(self, key: str, arrays: Mapping[str, np.ndarray]) -> None:
        path = self.path(key, group=True)
        if path is not None:
            self._write(lambda: save_npz_atomic(path, arrays))

    # ----------------------------------------------------------------- computed once, shared by processes

    def get_or_compute(self, keys: Mapping[str, str], compute: Callable[[], Arrays], *, accelerator=None,
                       expected_rows: Optional[int] = None) -> Arrays:
        """{name: array} from the cache when every entry of `keys` ({name: key}, one .npy each) is
        there, else from `compute()` (which returns them all from one pass), stored under `keys`."""
        def read() -> Optional[Arrays]:
            cached = {name: self.load(key) for name, key in keys.items()}
            return cached if _complete(cached, expected_rows) else None

        def write(arrays: Arrays) -> None:
            for name, key in keys.items():
                self.save(key, arrays[name])

        return _shared(read, compute, write, accelerator)

    def get_or_compute_group(self, key: str, compute: Callable[[], Arrays], *, accelerator=None,
                             expected_rows: Optional[int] = None) -> Arrays:
        """The named arrays of `key` (one .npz) from the cache, else from `compute()`, then stored."""
        def read() -> Optional[Arrays]:
            cached = self.load_group(key)
            return cached if cached is not None and _complete(cached, expected_rows) else None

        return _shared(read, compute, lambda arrays: self.save_group(key, arrays), accelerator)

    def _write(self, write: Callable[[], None]) -> None:
        try:
            write()
        except OSError as err:
            # A full or read-only disk makes the next run slower; it must not fail this one.
            if not self._write_failed:
                warnings.warn(f"{self.what} cache not written ({self.directory}): {err}", stacklevel=3)
                self._write_failed = True


def _opened(path: Optional[Path]):
    """np.load of `path` (an array, or an open NpzFile); None when absent or unreadable."""
    if path is None:
        return None
    try:
        return np.load(path, allow_pickle=False)
    except _READ_ERRORS:
        return None


def _complete(arrays: Mapping[str, Optional[np.ndarray]], expected_rows: Optional[int]) -> bool:
    return all(a is not None and (expected_rows is None or len(a) == expected_rows) for a in arrays.values())


def _shared(read: Callable[[], Optional[Entry]], compute: Callable[[], Entry], write: Callable[[Entry], None],
            accelerator) -> Entry:
    """The cached entry, else a computed and stored one, with every process taking the same branch.

    With several processes `compute` is collective (each extracts a share), so they must agree on
    hit or miss: it is a hit only if every process can read the entry. Only the main process writes.
    """
    cached = read()
    hit = cached is not None
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        hit = all(gather_object([hit]))
    if hit:
        return cached
    computed = compute()
    if accelerator is None or accelerator.is_main_process:
        write(computed)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return computed

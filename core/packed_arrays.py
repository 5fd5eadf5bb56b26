"""`PackedArrays`: many small groups of named arrays under string keys, in one SQLite file.

`ArrayCache` writes one file per entry, which suits embeddings and keypoints (one per image) but not
the keypoint matches of every re-scored pair: tens of thousands of entries of a few hundred bytes,
where creating, syncing and renaming a file per entry cost as much as matching the pair
(docs/results.md). Here a batch
of entries is one transaction and a batch of lookups one query.

An entry is a header (names, dtypes, shapes, as JSON) and the arrays' raw bytes: nothing is ever
unpickled. Several processes may read and write the same file (SQLite locks it; write-ahead logging
lets readers go on while one writes). The file is a cache: commits are not synced to the disk one by
one (a power cut may lose the last ones, never leave half an entry), a file that cannot be opened or
read costs speed, never the run (one warning, then the cache is off), and an entry that cannot be
decoded is a miss.
"""
from __future__ import annotations

import json
import os
import sqlite3
import struct
import warnings
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Union

import numpy as np

Arrays = Dict[str, np.ndarray]
_LOOKUP_CHUNK = 500  # keys per SELECT (SQLite limits the number of bound parameters)
_TIMEOUT_S = 120.0  # how long a process waits for another's write lock


def pack(arrays: Mapping[str, np.ndarray]) -> bytes:
    """One entry's bytes: a 4-byte header length, the JSON header, then each array's bytes in order."""
    arrays = {name: np.ascontiguousarray(array) for name, array in arrays.items()}
    header = json.dumps([[name, a.dtype.str, list(a.shape)] for name, a in arrays.items()]).encode()
    return b"".join([struct.pack("<I", len(header)), header, *(a.tobytes() for a in arrays.values())])


def unpack(blob: bytes) -> Arrays:
    """The arrays of `pack`; ValueError when the bytes are not a whole entry."""
    try:
        (length,) = struct.unpack_from("<I", blob)
        header = json.loads(blob[4:4 + length])
        out, offset = {}, 4 + length
        for name, dtype, shape in header:
            dtype = np.dtype(dtype)
            if dtype.hasobject:
                raise ValueError("object arrays are never stored")
            size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if offset + size > len(blob):
                raise ValueError("truncated entry")
            out[name] = np.frombuffer(blob, dtype, count=int(np.prod(shape, dtype=np.int64)), offset=offset).reshape(shape)
            offset += size
    except (struct.error, json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"not a packed entry: {err}") from err
    if offset != len(blob):
        raise ValueError("trailing bytes after the arrays")
    return out


class PackedArrays:
    """Groups of named arrays under string keys in the SQLite file `path`; `path=None` turns it off
    (every lookup misses, nothing is written). `what` names the contents in warnings."""

    def __init__(self, path: Optional[Union[str, Path]], *, what: str = "array"):
        self.path = Path(path) if path is not None else None
        self.what = what
        self._connection: Optional[sqlite3.Connection] = None
        self._pid: Optional[int] = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.path is not None and not self._failed

    def load_many(self, keys: Iterable[str]) -> Dict[str, Arrays]:
        """{key: arrays} for the keys stored (and readable); the others are absent."""
        keys = list(dict.fromkeys(keys))
        database = self._database()
        if database is None or not keys:
            return {}
        found: Dict[str, Arrays] = {}
        try:
            for start in range(0, len(keys), _LOOKUP_CHUNK):
                chunk = keys[start:start + _LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                for key, blob in database.execute(f"SELECT key, arrays FROM entries WHERE key IN ({marks})", chunk):
                    try:
                        found[key] = unpack(blob)
                    except ValueError:
                        continue  # damaged: a miss, computed again and overwritten
        except sqlite3.Error as err:
            self._give_up("read", err)
            return {}
        return found

    def save_many(self, entries: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        """Store every entry in one transaction (an existing key is overwritten)."""
        database = self._database()
        if database is None or not entries:
            return
        rows = [(key, pack(arrays)) for key, arrays in entries.items()]
        try:
            with database:
                database.executemany("INSERT OR REPLACE INTO entries (key, arrays) VALUES (?, ?)", rows)
        except sqlite3.Error as err:
            self._give_up("written", err)

    def close(self) -> None:
        if self._connection is not None and self._pid == os.getpid():
            self._connection.close()
        self._connection = None

    def _database(self) -> Optional[sqlite3.Connection]:
        if not self.enabled:
            return None
        if self._connection is not None and self._pid == os.getpid():
            return self._connection
        # A connection must not cross a fork: a child process opens its own.
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=_TIMEOUT_S)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, arrays BLOB NOT NULL)")
        except (sqlite3.Error, OSError) as err:
            self._give_up("opened", err)
            return None
        self._connection, self._pid = connection, os.getpid()
        return connection

    def _give_up(self, what: str, err: Exception) -> None:
        # A damaged or unwritable cache makes this run and the next slower; it must not fail them.
        if not self._failed:
            warnings.warn(f"{self.what} cache {self.path} could not be {what} ({err}); going on without it",
                          stacklevel=3)
        self._failed = True
        self._connection = None


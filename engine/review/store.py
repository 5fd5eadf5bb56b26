"""The answers, in one SQLite file: every answer its own transaction, acknowledged only once committed.

An answer names its two images by image id (stable across runs, so `eval.py review=FILE` applies
it to a new run of the same images), its verdict, the reviewer's name and the client session, the
probability the run gave the pair, and a status: `active`, `undone` (the reviewer took it back)
or `overruled` (a contradicting answer was kept instead). Nothing is ever deleted or rewritten
but the status. A unique index allows one active answer per pair, so two reviewers cannot both
answer a pair: the second is refused, not written over the first.

The file is opened in WAL mode with full synchronisation: a committed answer survives the process
being killed, and a reader never sees half an answer. The file carries its own marker (a `meta`
row naming reidzoo review), so a file of anything else is never written to.
"""
from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, List, Optional

from core.errors import DataError
from engine.review.constraints import VERDICTS

TOOL = "reidzoo review"
SCHEMA_VERSION = "1"
ACTIVE, UNDONE, OVERRULED = "active", "undone", "overruled"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image_a TEXT NOT NULL, image_b TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ({", ".join(repr(v) for v in VERDICTS)})),
    reviewer TEXT NOT NULL, client TEXT NOT NULL DEFAULT '',
    dataset TEXT NOT NULL DEFAULT '', probability REAL,
    created TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT '{ACTIVE}' CHECK (status IN ('{ACTIVE}', '{UNDONE}', '{OVERRULED}')),
    changed TEXT,
    CHECK (image_a < image_b)
);
CREATE UNIQUE INDEX IF NOT EXISTS one_active_answer ON answers (image_a, image_b) WHERE status = '{ACTIVE}';
"""


class AnswerClash(Exception):
    """The pair has an active answer already (another reviewer's, or this one's)."""


@dataclass(frozen=True)
class StoredAnswer:
    id: int
    image_a: str
    image_b: str
    verdict: str
    reviewer: str
    client: str
    dataset: str
    probability: Optional[float]
    created: str
    status: str


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def ordered(a: str, b: str) -> tuple:
    return (a, b) if a < b else (b, a)


class AnswerStore:
    def __init__(self, path, read_only: bool = False):
        """Open (or, unless read_only, create) the answers file at `path`."""
        self.path = Path(path).expanduser().absolute()
        if read_only and not self.path.is_file():
            raise DataError(f"{self.path} does not exist: no answers were stored there")
        fresh = not self.path.exists()
        try:
            if read_only:
                self.db = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, isolation_level=None,
                                          check_same_thread=False, timeout=30)
            else:
                self.db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=30)
            if not fresh:
                self._check_ours()
            if not read_only:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")
            if fresh:
                self.db.executescript(_SCHEMA)
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('tool', ?), ('schema', ?)", (TOOL, SCHEMA_VERSION))
        except sqlite3.DatabaseError as err:
            raise DataError(f"{self.path} is not an answers file of {TOOL}: {err}") from err
        self.lock = threading.Lock()

    def _check_ours(self) -> None:
        try:
            found = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as err:
            raise DataError(f"{self.path} is not an answers file of {TOOL} ({err}): choose another file") from err
        if found.get("tool") != TOOL or found.get("schema") != SCHEMA_VERSION:
            raise DataError(f"{self.path} is not an answers file of this version of {TOOL}: choose another file")

    def close(self) -> None:
        self.db.close()

    def _rows(self, query: str, args: Iterable = ()) -> List[StoredAnswer]:
        fields = "id, image_a, image_b, verdict, reviewer, client, dataset, probability, created, status"
        return [StoredAnswer(*row) for row in self.db.execute(f"SELECT {fields} FROM answers {query}", tuple(args))]

    def add(self, image_a: str, image_b: str, verdict: str, reviewer: str, *, client: str = "", dataset: str = "",
            probability: Optional[float] = None, status: str = ACTIVE, overrule: Iterable[int] = ()) -> int:
        """Store one answer (and mark `overrule` overruled) in one transaction; its id once committed.
        AnswerClash when the pair has an active answer already."""
        a, b = ordered(image_a, image_b)
        with self.lock:
            try:
                self.db.execute("BEGIN IMMEDIATE")
                for earlier in overrule:
                    self.db.execute("UPDATE answers SET status = ?, changed = ? WHERE id = ? AND status = ?",
                                    (OVERRULED, _now(), int(earlier), ACTIVE))
                cursor = self.db.execute(
                    "INSERT INTO answers (image_a, image_b, verdict, reviewer, client, dataset, probability, created, status) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (a, b, verdict, reviewer, client, dataset, probability, _now(), status))
                self.db.execute("COMMIT")
            except sqlite3.IntegrityError as err:
                self.db.execute("ROLLBACK")
                raise AnswerClash(f"the pair {a} / {b} has an answer already") from err
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
            return int(cursor.lastrowid)

    def set_status(self, answer_id: int, status: str) -> bool:
        """Mark an active answer undone or overruled; False when it was not active."""
        with self.lock:
            cursor = self.db.execute("UPDATE answers SET status = ?, changed = ? WHERE id = ? AND status = ?",
                                     (status, _now(), int(answer_id), ACTIVE))
            return cursor.rowcount == 1

    def active(self) -> List[StoredAnswer]:
        """The active answers, in the order they were given."""
        with self.lock:
            return self._rows("WHERE status = ? ORDER BY id", (ACTIVE,))

    def everything(self) -> List[StoredAnswer]:
        with self.lock:
            return self._rows("ORDER BY id")

    def last_active(self, reviewer: str) -> Optional[StoredAnswer]:
        with self.lock:
            found = self._rows("WHERE status = ? AND reviewer = ? ORDER BY id DESC LIMIT 1", (ACTIVE, reviewer))
        return found[0] if found else None

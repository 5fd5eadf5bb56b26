"""Where a command will write, tried before the long work; the disk's refusals turned into one line.

`probe_folder` creates a folder, writes a file in it and removes both where a command is about to
write, so that a read-only, unwritable or full disk stops eval.py or train.py before the
extraction or the training, not after it. `disk_errors` turns a refusal met later (the disk fills
up, a permission changes) into an OutputError: `error: ...` and exit status 2, not a traceback.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional

from core.errors import ConfigError, UserError

# Refusals that the user fixes on the disk (space, quota, permissions, a read-only mount).
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})
# safetensors' writer is Rust: its exception carries the OS error in the message only.
_OS_ERROR_IN_TEXT = re.compile(r"\(os error (\d+)\)")
# Enough to need fresh blocks of a disk that is full, not merely a directory entry.
PROBE_BYTES = 64 * 1024


class OutputError(UserError):
    """The disk refused to take a command's outputs: no space, no permission, read-only."""


def probe(folder: Path) -> None:
    """Create a folder in `folder`, write PROBE_BYTES into a file there, remove both; raises the
    OSError of the first step the disk refuses."""
    made = tempfile.mkdtemp(prefix=".reidzoo-probe-", dir=folder)
    try:
        with open(os.path.join(made, "probe"), "wb") as handle:
            handle.write(bytes(PROBE_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        shutil.rmtree(made, ignore_errors=True)


def nearest_existing(folder: Path) -> Path:
    """`folder`, or the closest folder above it that exists (where `folder` would be made)."""
    folder = Path(folder).expanduser().absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def probe_folder(folder: Path, what: str) -> None:
    """`what` will be written in `folder` (made if missing): probe it, or the nearest existing
    folder above it. ConfigError when that is a file, OutputError when the disk refuses."""
    existing = nearest_existing(folder)
    if not existing.is_dir():
        raise ConfigError(f"{what}: {existing} is a file, not a folder")
    try:
        probe(existing)
    except OSError as err:
        raise OutputError(f"{what}: cannot write in {existing}: {reason(err)}") from err


def reason(err: OSError) -> str:
    """'No space left on device (/path)': the refusal and, when known, the file it concerned."""
    text = os.strerror(err.errno) if err.errno else str(err)
    return f"{text} ({err.filename})" if err.filename else text


def disk_error(err: BaseException) -> Optional[OSError]:
    """The disk refusal (an errno of DISK_ERRNOS) that `err` or its cause reports; None otherwise."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError):
            if err.errno in DISK_ERRNOS:
                return err
        else:
            found = _OS_ERROR_IN_TEXT.search(str(err))
            if found and int(found.group(1)) in DISK_ERRNOS:
                code = int(found.group(1))
                return OSError(code, os.strerror(code))
        err = err.__cause__
    return None


def _inside(filename, folder: Path) -> bool:
    real = Path(os.path.realpath(os.fsdecode(filename)))
    top = Path(os.path.realpath(folder))
    return real == top or top in real.parents


@contextlib.contextmanager
def disk_errors(what: str, after: str = "", within: Optional[Path] = None) -> Iterator[None]:
    """A disk refusal raised in the block becomes OutputError('<what>: <reason><after>'); with
    `within`, only one about a file in that folder (or about no named file: a writer's own error)."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:
        cause = disk_error(err)
        if cause is None or (within is not None and cause.filename is not None and not _inside(cause.filename, within)):
            raise
        raise OutputError(f"{what}: {reason(cause)}{after}") from err

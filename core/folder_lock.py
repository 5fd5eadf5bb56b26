"""One process at a time in a folder: train.py holds its run folder's lock while it runs.

The lock is an advisory lock (flock) on a file in the folder that records the holder's pid, host
and start time. The system releases it when the holder's process ends, however it ends, so a
lock file found unlocked but still naming a holder was left by a process that died: it is taken
over, with a message. On a platform without flock (Windows) the folder is not locked.

A forked child (a DataLoader worker) inherits the lock's open file, and flock stays held while any
process holds that file: a run killed with SIGKILL would keep its folder locked until its orphaned
workers noticed. So every child forked while a lock is held lets go of its copy at once.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

from core.errors import UserError

try:
    import fcntl
except ImportError:
    fcntl = None

_HELD_FDS: set[int] = set()


def _let_go_in_child() -> None:
    # Pointing the descriptor at /dev/null drops the child's hold on the lock file while the number
    # stays valid for the file object that will close it.
    if not _HELD_FDS:
        return
    devnull = os.open(os.devnull, os.O_RDONLY)
    for fd in _HELD_FDS:
        os.dup2(devnull, fd, inheritable=False)
    os.close(devnull)
    _HELD_FDS.clear()


if fcntl is not None:
    os.register_at_fork(after_in_child=_let_go_in_child)


def _holder(handle) -> str:
    handle.seek(0)
    try:
        record = json.loads(handle.read() or "null")
    except ValueError:
        return "an unknown process"
    if not isinstance(record, dict):
        return ""
    return f"process {record.get('pid')} on {record.get('host')}, started {record.get('started')}"


@contextlib.contextmanager
def folder_lock(folder: Path, name: str, *, what: str, say: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the lock file `name` in `folder` while the block runs. A UserError when a live process
    holds it; `what` names the holders in that message ("train.py run"). A folder this makes is
    removed again when the block leaves it empty."""
    if fcntl is None:
        yield
        return
    folder = Path(folder)
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(handle) or "another process"
            handle.close()
            raise UserError(f"{folder} is in use by another {what} ({holder}; lock file {path}): "
                            "wait for it to end, or choose another output_dir") from None
        # The previous holder removes the file before it unlocks: a lock taken on a file that is no
        # longer at `path` locks nothing, so it is tried again.
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(handle.fileno()), os.stat(path)):
                break
        handle.close()
    try:
        stale = _holder(handle)
        if stale:
            say(f"{folder}: taking over the lock of {stale}, which is no longer running")
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": datetime.now().isoformat(timespec="seconds")}))
        handle.flush()
        _HELD_FDS.add(handle.fileno())
        yield
    finally:
        _HELD_FDS.discard(handle.fileno())
        path.unlink(missing_ok=True)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
        if made:
            with contextlib.suppress(OSError):
                folder.rmdir()

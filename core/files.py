"""Crash-safe writes and content identities, one helper each, shared by every writer in reidzoo.

* `atomic_folder`: build a folder under a temporary sibling name, then swap it into place in one
  rename; a crash or an exception at any point leaves the previous folder (or none) as it was.
* `atomic_write_text` / `atomic_write_bytes` / `save_npy_atomic` / `save_npz_atomic`: the same for a single file.
* `file_identity`: what identifies an image file for caches (absolute path, size, mtime).
* `weights_checksum`: one sha256 for a model's weights, the same whatever device or wrapper holds them.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Tuple, Union

import numpy as np

PathLike = Union[str, Path]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_folder(final: PathLike, *, may_replace: Optional[Callable[[Path], bool]] = None,
                  keep_if_present: Optional[Callable[[Path], bool]] = None) -> Iterator[Path]:
    """Yield an empty staging folder next to `final`; on a normal exit it becomes `final`.

    An existing `final` is replaced only if `may_replace(final)` says so (default: always); the old
    one is set aside first and restored if the swap fails, then deleted. `keep_if_present(final)`
    handles a race with another writer: if the rename fails and the folder now there passes it, the
    staged copy is dropped instead of raising. On an exception the staging folder is removed and
    `final` is untouched.
    """
    final = Path(final).expanduser().absolute()
    if final.exists() and may_replace is not None and not may_replace(final):
        raise FileExistsError(f"{final} exists and is not ours to replace")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    set_aside = None
    if final.exists():
        set_aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent)) / "previous"
        os.replace(final, set_aside)
    try:
        os.replace(staging, final)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if set_aside is not None and not final.exists():
            os.replace(set_aside, final)  # put the previous folder back
        elif keep_if_present is None or not keep_if_present(final):
            raise
    finally:
        if set_aside is not None:
            shutil.rmtree(set_aside.parent, ignore_errors=True)


def _atomic_file(path: Path, write: Callable[[object], None], mode: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result is an ordinary file
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write `text` under a temporary name, then rename: readers see the old file or the new one."""
    _atomic_file(Path(path), lambda handle: handle.write(text), "w")


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write `data` under a temporary name, then rename: readers see the old file or the new one."""
    _atomic_file(Path(path), lambda handle: handle.write(data), "wb")


def save_npy_atomic(path: PathLike, array: np.ndarray) -> None:
    """Write `array` as .npy under a temporary name, then rename: readers never see half a file."""
    _atomic_file(Path(path), lambda handle: np.save(handle, np.ascontiguousarray(array)), "wb")


def save_npz_atomic(path: PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Write named arrays as one uncompressed .npz the same way: readers see all of them or none."""
    clashing = [name for name in arrays if name in ("file", "allow_pickle")]  # np.savez's own parameters
    if clashing:
        raise ValueError(f"array name {clashing[0]!r} is reserved by np.savez; use another name")
    arrays = {name: np.ascontiguousarray(array) for name, array in arrays.items()}
    _atomic_file(Path(path), lambda handle: np.savez(handle, **arrays), "wb")


def file_identity(path: PathLike) -> Tuple[str, int, int]:
    """(absolute path, size, mtime in ns) of a file: a cache entry made from it is stale when any
    changes. Raises OSError when the file cannot be read."""
    absolute = os.path.abspath(os.path.expanduser(str(path)))
    stat = os.stat(absolute)
    return absolute, int(stat.st_size), int(stat.st_mtime_ns)


def weights_checksum(state: Mapping[str, object]) -> str:
    """sha256 over a state dict's tensors in name order (name, dtype, shape, bytes).

    Computed on CPU copies, so the same weights give the same checksum on any device, inside or
    outside a DDP/compile wrapper once the caller has unwrapped it.
    """
    import torch  # the rest of this module must not pull torch in (config checks import it)

    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor):
            continue
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def file_sha256(path: PathLike) -> str:
    """sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def visible_files(folder: Path) -> Iterator[Path]:
    """Files under `folder`, recursively, following links once, in sorted order, hidden entries skipped."""
    seen = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link cycle: this folder was already listed through another path
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        yield from (Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))

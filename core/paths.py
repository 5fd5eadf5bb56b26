"""Where reidzoo keeps its caches (synthetic datasets, resized images, embeddings), and how it writes them."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np


def cache_base() -> Path:
    """$REIDZOO_CACHE, else ~/.cache/reidzoo."""
    base = os.environ.get("REIDZOO_CACHE")
    return Path(base).expanduser() if base else Path.home() / ".cache" / "reidzoo"


def resolve_cache_setting(value: Optional[str], kind: str) -> Optional[str]:
    """A cache config value -> folder: "" = cache_base()/kind, "none" (or None) = off, else that path."""
    if value is None or value.strip().lower() == "none":
        return None
    if value.strip() == "":
        return str(cache_base() / kind)
    return os.path.expanduser(value)


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """Write `array` as .npy under a temporary name, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, np.ascontiguousarray(array))
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise

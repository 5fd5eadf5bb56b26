"""Where reidzoo keeps its caches (synthetic datasets, resized images, embeddings)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


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

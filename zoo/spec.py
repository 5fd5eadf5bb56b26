"""What a model spec (`models=[...]`, a fusion member) names: a folder, or a name to look up.

A fusion model's export records its members' specs. A member that is an export folder is recorded
relative to the fusion model's own export folder, so that it is found from any working folder
and wherever the two are moved together; names (zoo, timm, `hf-hub:`) are recorded as they are.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def looks_like_path(spec: str) -> bool:
    """Whether a spec names a folder (it has a path separator or starts with . or ~), not a model name."""
    return ":" not in spec and (any(sep in spec for sep in ("/", "\\")) or spec.startswith((".", "~")))


def member_spec(spec: str, export: Path) -> str:
    """How the fusion export at `export` records the member `spec` (a folder from the working folder)."""
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        return spec
    try:
        relative = os.path.relpath(folder.resolve(), Path(export).expanduser().resolve())
    except ValueError:  # another drive (Windows): no relative path, the absolute one is as good
        return str(folder.resolve())
    return relative if looks_like_path(relative) else os.path.join(".", relative)


def recorded_member(spec: str, export: Optional[Path]) -> str:
    """The spec to load a member by, as the fusion export at `export` recorded it (`export` None: the
    fusion model is not a folder, e.g. a zoo name, whose members are names)."""
    if export is None or not looks_like_path(spec) or spec.startswith("~") or Path(spec).is_absolute():
        return spec
    folder = Path(export) / spec
    # An export written before members were recorded relative to it holds them relative to the
    # working folder it was trained in: read from there, as then (the checksum check still applies).
    return str(folder.resolve()) if folder.is_dir() else spec

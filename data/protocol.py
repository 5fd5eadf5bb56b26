"""The open-set protocol of any labelled dataset written as folders: identity-disjoint train,
validation and test parts in AnimalCLEF 2025 layout (scripts/make_openset_protocol.py, the
benchmarks). The parts link the source images; nothing is copied."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict

import pandas as pd

from core.errors import ConfigError, DataError
from core.files import atomic_folder, atomic_write_text
from data.splits import identity_split, open_set_split

COLUMNS = ["image_id", "identity", "path", "split", "dataset", "species", "orientation", "date", "bbox"]
PROTOCOL_FILE = "protocol.json"
MARKER = ".reidzoo-protocol"
MARKER_TEXT = "made by scripts/make_openset_protocol.py, which may replace this folder as a whole\n"
RECORD_KEYS = {"source", "arguments", "parts"}  # protocol.json, as versions before the marker wrote it
SPLIT_DEFAULTS = {"train_fraction": 0.5, "val_fraction": 0.0, "unknown_fraction": 0.2, "query_fraction": 0.2, "seed": 0}


def _under_root(path: str, root: Path) -> Path:
    """`path` relative to `root`, by their absolute names: links inside the root are kept as they are
    (the root may itself be a protocol part, whose images/ links another folder)."""
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
    except ValueError:
        raise DataError(f"{path} lies outside the dataset root {root}: a protocol links only images under its root") from None


def write_part(table: pd.DataFrame, source_root: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    link = out / "images"
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(os.path.abspath(source_root), link, target_is_directory=True)
    rows = table.copy()
    rows["path"] = [str(Path("images") / _under_root(p, source_root)) for p in rows["path"]]
    rows["image_id"] = range(len(rows))
    rows["bbox"] = [None if b is None else str(list(b)) for b in rows["bbox"]]
    rows[COLUMNS].to_csv(out / "metadata.csv", index=False)


def describe_part(part: pd.DataFrame) -> Dict[str, int]:
    """Counts of one part: identities and images, and for an open-set part its database, query and new ones."""
    counts = {"identities": int(part["identity"].nunique()), "images": len(part)}
    query = part[part["split"] == "query"]
    if len(query):
        known = set(part.loc[part["split"] == "database", "identity"])
        new = query[~query["identity"].isin(known)]
        counts.update(database_images=len(part) - len(query), query_images=len(query),
                      new_identities=int(new["identity"].nunique()), new_images=len(new))
    return counts


def split_protocol(table: pd.DataFrame, *, train_fraction: float, val_fraction: float, unknown_fraction: float,
                   query_fraction: float, seed: int) -> Dict[str, pd.DataFrame]:
    """{"train", "test"[, "val"]}: identity-disjoint parts; test and val are open-set (database/query) sets."""
    if not 0 < train_fraction < 1:
        raise ConfigError(f"--train-fraction must be between 0 and 1, got {train_fraction}")
    test, train = identity_split(table, train_fraction, seed)
    held_out = {"test": test}
    if val_fraction > 0:
        train, held_out["val"] = identity_split(train, val_fraction, seed)
    parts = {"train": train}
    for name in ("val", "test"):
        if name in held_out:
            parts[name] = open_set_split(held_out[name], unknown_fraction=unknown_fraction,
                                         query_fraction=query_fraction, seed=seed)
    return parts


def _is_protocol_folder(folder: Path) -> bool:
    """Only an empty folder or one build_protocol made may be replaced: its `out` could name anything (a
    dataset's own train/metadata.csv says nothing about who made it)."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    if not any(folder.iterdir()) or (folder / MARKER).is_file():
        return True
    try:
        record = json.loads((folder / PROTOCOL_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and set(record) == RECORD_KEYS


def build_protocol(table: pd.DataFrame, source_root: Path, out: Path, **split_args) -> Dict:
    """Write the parts of `split_protocol(table, **split_args)` under `out` (replaced as a whole, so an
    interrupted build leaves no half protocol) and return what protocol.json records."""
    out = Path(out)
    if out.exists() and not _is_protocol_folder(out):
        raise ConfigError(f"{out} exists and is not a protocol folder this script made: choose a new or empty "
                          "folder; nothing was written")
    arguments = {**SPLIT_DEFAULTS, **split_args}
    parts = split_protocol(table, **arguments)
    record = {"source": str(Path(source_root).resolve()), "arguments": arguments,
              "parts": {name: describe_part(part) for name, part in parts.items()}}
    with atomic_folder(out, may_replace=_is_protocol_folder) as staging:
        for name, part in parts.items():
            write_part(part, Path(source_root), staging / name)
        atomic_write_text(staging / PROTOCOL_FILE, json.dumps(record, indent=2) + "\n")
        (staging / MARKER).write_text(MARKER_TEXT)
    return record

"""Which folders a reidzoo command may replace or clear, and which it must never write into.

A command deletes or replaces only a folder that carries its own marker: a JSON file at the top of
the folder whose "tool" names the command and whose "run" names the run that wrote it. eval.py
and reproduce mark their folders with manifest.json, train.py with reidzoo-run.json, reidzoo-review
(its applied outputs, simulations and exported galleries) with reviewed.json; the tool names differ, so eval.py never replaces a reproduce or train folder although they hold a
manifest.json too.

Whatever its markers say, an output folder may not be the working folder, the home folder or
the filesystem root, nor contain one of them or anything the run reads (data.root,
data.query_root, a model export): replacing or clearing it would take those along.
"""
from __future__ import annotations

import json
import os
import socket
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from core.errors import ConfigError

EVAL = "reidzoo eval"
TRAIN = "reidzoo train"
REPRODUCE = "reidzoo reproduce"
REVIEW = "reidzoo review"
MARKER_FILES = {EVAL: "manifest.json", REPRODUCE: "manifest.json", TRAIN: "reidzoo-run.json", REVIEW: "reviewed.json"}
# What earlier versions wrote as the tool's name (train.py's marker called the key "created_by").
FORMER_NAMES = {"reidzoo eval (task=cluster)": EVAL, "reidzoo train.py": TRAIN}


def run_marker(tool: str) -> Dict[str, Any]:
    """The keys that make a JSON file `tool`'s marker: {"tool", "run": {id, started, host, pid}}."""
    if tool not in MARKER_FILES:
        raise ValueError(f"unknown tool {tool!r}")
    return {"tool": tool, "run": {"id": uuid.uuid4().hex, "started": datetime.now().isoformat(timespec="seconds"),
                                  "host": socket.gethostname(), "pid": os.getpid()}}


def marker_tool(folder: Path, name: str) -> Optional[str]:
    """The tool named by the marker file `name` in `folder`; None when it is absent, unreadable or names none."""
    try:
        record = json.loads((Path(folder) / name).read_text())
    except (OSError, ValueError):
        return None
    tool = record.get("tool", record.get("created_by")) if isinstance(record, dict) else None
    return FORMER_NAMES.get(tool, tool) if isinstance(tool, str) else None


def marked_by(folder: Path, tool: str) -> bool:
    """`folder` carries `tool`'s marker and no marker file of another tool."""
    folder = Path(folder)
    own = MARKER_FILES[tool]
    if marker_tool(folder, own) != tool:
        return False
    return not any((folder / name).exists() for name in set(MARKER_FILES.values()) - {own})


def may_replace(folder: Path, tool: str) -> bool:
    """`tool` may replace `folder` as a whole: it is an empty folder, or one that `tool` marked."""
    folder = Path(folder)
    return folder.is_dir() and (not any(folder.iterdir()) or marked_by(folder, tool))


def check_marker_file(folder: Path, tool: str) -> None:
    """`tool` is about to write its marker into `folder`: a marker file of that name written by
    anything else is refused rather than overwritten."""
    name = MARKER_FILES[tool]
    path = Path(folder) / name
    if path.exists() and marker_tool(folder, name) != tool:
        raise ConfigError(f"{folder} holds a {name} that {tool} did not write: choose another folder")


def _real(path: Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_output_folder(folder: Path, reads: Optional[Mapping[str, str]] = None) -> None:
    """Refuse `folder` as an output folder when it is, or contains, the working folder, the home
    folder, the filesystem root, or one of `reads` ({what: path} the run reads; empty or missing
    paths are skipped). Symbolic links are followed."""
    target = _real(folder)
    shown = str(folder) or "''"
    if target == Path(target.anchor):
        raise ConfigError(f"output_dir {shown} is the filesystem root: choose a folder of its own")
    for what, place in (("the working folder", Path.cwd()), ("your home folder", Path.home())):
        if _within(_real(place), target):
            relation = "is" if _real(place) == target else "contains"
            raise ConfigError(f"output_dir {shown} {relation} {what} ({place}): choose a folder of its own")
    for what, value in (reads or {}).items():
        if not value or not Path(value).expanduser().exists():
            continue
        if _within(_real(Path(value)), target):
            relation = "is" if _real(Path(value)) == target else "contains"
            raise ConfigError(f"output_dir {shown} {relation} {what} ({value}), which this run reads: "
                              "choose an output folder outside it")


def check_replaceable(folder: Path, tool: str, reads: Optional[Mapping[str, str]] = None) -> None:
    """`tool` is to replace `folder` as a whole: refused unless it is new, empty or `tool`'s own,
    and not a folder that check_output_folder refuses."""
    check_output_folder(folder, reads)
    path = Path(folder).expanduser().absolute()
    if path.exists() and not may_replace(path, tool):
        raise ConfigError(f"output_dir {path} exists and is not a {tool} output folder ({_whose(path, tool)}): "
                          "choose a new or empty folder")


def _whose(folder: Path, tool: str) -> str:
    """Why `folder` is not `tool`'s, for the refusal's message."""
    own = MARKER_FILES[tool]
    others = [f"{name} of {marker_tool(folder, name) or 'another program'}"
              for name in sorted(set(MARKER_FILES.values()) - {own}) if (folder / name).exists()]
    if others:
        return f"it holds {', '.join(others)}"
    owner = marker_tool(folder, own)
    return f"its {own} was written by {owner}" if owner else f"it holds other files and no {own} of {tool}"

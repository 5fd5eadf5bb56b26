"""Identities of what a stage's result depends on: the code, the data and the stage's own settings.

A stage is skipped when its fingerprint equals the one stored after its last successful run, so
each part must change whenever the result could: the code version hashes every Python file of the
repository as it is on disk (committed or not), the data fingerprint every file's name, size and
modification time, and a stage's fingerprint includes those of the stages whose folders it reads.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping

from core.files import visible_files

REPO = Path(__file__).resolve().parents[2]
# Not part of what a recipe computes: tests and the docs change no stage's result.
CODE_EXCLUDED = ("tests/",)


def _sha256(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _python_files(repo: Path) -> List[str]:
    """The repository's .py files (tracked or new, not ignored) relative to it; without git, a walk."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "*.py"],
                                cwd=repo, capture_output=True, timeout=30, check=True).stdout.decode()
        names = [name for name in listed.split("\0") if name]
    except (OSError, subprocess.SubprocessError):
        names = [str(path.relative_to(repo).as_posix()) for path in repo.rglob("*.py")
                 if not any(part.startswith(".") for part in path.relative_to(repo).parts)]
    return sorted(name for name in set(names) if not name.startswith(CODE_EXCLUDED))


def code_version(repo: Path = REPO) -> str:
    """sha256 over the path and bytes of every Python file of the repository."""
    digest = hashlib.sha256()
    for name in _python_files(repo):
        path = repo / name
        if not path.is_file():  # listed by git but deleted in the working tree
            continue
        digest.update(name.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _walk(root: Path) -> Iterable[tuple]:
    for path in visible_files(root):  # hidden files are lock files and editors' temporary files
        stat = path.stat()
        yield path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns


def data_fingerprint(root: Path) -> Dict[str, Any]:
    """{sha256, files, bytes} over every file under `root` (name, size, modification time)."""
    digest, files, size = hashlib.sha256(), 0, 0
    for name, nbytes, mtime in _walk(Path(root)):
        digest.update(f"{name}\0{nbytes}\0{mtime}\n".encode())
        files, size = files + 1, size + nbytes
    return {"sha256": digest.hexdigest(), "files": files, "bytes": size}


def stage_parts(*, script: str, config: Mapping[str, Any], args: List[str], code: str, data: str,
                references: Mapping[str, str]) -> Dict[str, Any]:
    """The parts of a stage's fingerprint, each hashed on its own so that a change can be named."""
    return {"script": script, "config": _sha256(config), "arguments": _sha256(args), "code": code, "data": data,
            "stages": dict(sorted(references.items()))}


def stage_fingerprint(parts: Mapping[str, Any]) -> str:
    return _sha256(parts)


def changed_parts(old: Mapping[str, Any], new: Mapping[str, Any]) -> List[str]:
    """What differs between two stage_parts, in words ('config', "stage 'x'")."""
    changed = [key if key != "arguments" else "overrides" for key in ("script", "config", "arguments", "code", "data")
               if old.get(key) != new.get(key)]
    old_refs, new_refs = old.get("stages") or {}, new.get("stages") or {}
    changed += [f"stage '{name}'" for name in sorted(set(old_refs) | set(new_refs)) if old_refs.get(name) != new_refs.get(name)]
    return changed

"""The local model store: published exports by name, every file's sha256 checked before use.

Layout under the store root (`--zoo`, else $REIDZOO_ZOO, else ~/.cache/reidzoo/zoo):
  zoo.json                          the index: name -> folder, files and their sha256, summary
  <name>@<first 12 hex of the weights' sha256>/
      model.safetensors, config.json  the export, as train.py wrote it
      README.md                       the model card (Hugging Face format)
      reidzoo.json                    name and every other file's sha256 (travels to the Hub too)
Publishing writes a new version folder first and then the index (one atomic rename: the commit
point), and only then removes the folder the name pointed to before. A publish interrupted at any
point leaves the index and the folders it names as they were; an unlisted folder is ignored.
Nothing is ever unpickled: weights are safetensors, metadata JSON. An index may come from someone
else (a shared cache, a copied zoo): every entry must name a version folder by the store's own
naming, directly under the store, and only the store's own file names, before anything is read
or removed; publishing removes only a version folder that carries its reidzoo.json.

The store knows files, names and hashes, not what an export holds: each kind of export (`model`
for re-identification models in zoo/, `detector` in detectors/) registers a `PublishedKind` in
PUBLISHED_KINDS that checks the export, summarises it for the index and writes its model card.
Re-ID models and detectors share the store this way without either package importing the other.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from abc import ABC, abstractmethod
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from core.errors import ConfigError, DataError
from core.files import atomic_folder, atomic_write_text, file_sha256
from core.paths import cache_base
from core.registry import Registry
from core.suggest import did_you_mean

INDEX = "zoo.json"
MANIFEST = "reidzoo.json"
CARD = "README.md"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
INDEX_VERSION = 1
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
VERSION_FOLDER = re.compile(r"(?P<name>[a-z0-9][a-z0-9._-]{0,63})@[0-9a-f]{12}(-[0-9]{14})?")
SHA256 = re.compile(r"[0-9a-f]{64}")
STORE_FILES = (WEIGHTS_FILE, CONFIG_FILE, CARD)  # what a version folder's `files` may list
# An index entry's fields and what each must be (as _stage writes them); `kind` came later.
TEXT, MAPPING, INTEGER, COUNT = (str,), (dict,), (int,), (int, type(None))
ENTRY_FIELDS = {"name": TEXT, "folder": TEXT, "files": MAPPING, "architecture": TEXT, "embed_dim": COUNT,
                "num_classes": COUNT, "input_size": INTEGER, "licence": TEXT, "source": TEXT, "published": TEXT,
                "model_checksum": TEXT}
OPTIONAL_FIELDS = {"kind": TEXT}
TYPE_WORDS = {TEXT: "text", MAPPING: "a mapping", INTEGER: "an integer", COUNT: "an integer or null"}

# (name, files) -> the model card's text, once the weights and config are in the version folder.
CardWriter = Callable[[str, Dict[str, str]], str]
# (export folder of a member, the name it is published under) -> None; see PublishedKind.prepare.
StageMember = Callable[[Path, str], None]


class PublishedKind(ABC):
    """What the store needs to know about one kind of export (the `kind` of its config.json)."""

    @abstractmethod
    def prepare(self, source: Path, config: Dict[str, Any], name: str, stage_member: StageMember,
                licence: str) -> tuple:
        """(summary for the index, CardWriter). Loads the export to refuse one that would not load back;
        may rewrite `config` (it is written as the published config.json) and publish exports it
        depends on first through `stage_member`."""


PUBLISHED_KINDS = Registry("published kind")


def store_root(root: Optional[str | Path] = None) -> Path:
    """`root`, else $REIDZOO_ZOO, else the cache base's zoo/ folder."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get("REIDZOO_ZOO")
    return Path(env).expanduser() if env else cache_base() / "zoo"


def read_index(root: Optional[str | Path] = None) -> Dict[str, Dict[str, Any]]:
    """name -> entry of the store at `root` ({} for a store nothing was published to)."""
    path = store_root(root) / INDEX
    if not path.is_file():
        return {}
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"the zoo index {path} is not valid JSON: {err}") from err
    if not isinstance(index, dict) or not isinstance(index.get("models"), dict):
        raise DataError(f"the zoo index {path} is not a reidzoo zoo index (no 'models' mapping)")
    for name, entry in index["models"].items():
        problem = _entry_problem(name, entry)
        if problem:
            raise DataError(f"the zoo index {path}: entry {name!r} {problem}; nothing was read or changed "
                            "(fix or remove that entry, or publish again into a new zoo)")
    return index["models"]


def _entry_problem(name: Any, entry: Any) -> Optional[str]:
    """What is wrong with one index entry (None when it is as _stage writes it)."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        return "is not a zoo name"
    if not isinstance(entry, dict):
        return "is not a mapping"
    for field, types in {**ENTRY_FIELDS, **OPTIONAL_FIELDS}.items():
        if field not in entry:
            if field in ENTRY_FIELDS:
                return f"has no '{field}'"
        elif isinstance(entry[field], bool) or not isinstance(entry[field], types):
            return f"has {field} {entry[field]!r}, which must be {TYPE_WORDS[types]}"
    if entry["name"] != name:
        return f"is named {entry['name']!r}"
    folder = VERSION_FOLDER.fullmatch(entry["folder"])
    if folder is None or folder.group("name") != name:
        return (f"names the folder {entry['folder']!r}, not a version folder of this store "
                f"({name}@<12 hex digits>, directly under the store)")
    return _files_problem(entry["files"])


def _files_problem(files: Any) -> Optional[str]:
    """What is wrong with a `files` listing (name -> sha256) of a version folder, if anything."""
    if not isinstance(files, dict):
        return "lists no files mapping"
    for filename, digest in files.items():
        if filename not in STORE_FILES:
            return f"lists the file {filename!r}; a version folder holds only {', '.join(STORE_FILES)}"
        if not isinstance(digest, str) or not SHA256.fullmatch(digest):
            return f"gives {filename} the sha256 {digest!r}, not 64 hex digits"
    missing = [filename for filename in (WEIGHTS_FILE, CONFIG_FILE) if filename not in files]
    return f"lists no {' or '.join(missing)}" if missing else None


def list_entries(root: Optional[str | Path] = None) -> List[Dict[str, Any]]:
    """Every published export's entry, by name."""
    index = read_index(root)
    return [index[name] for name in sorted(index)]


def check_name(name: str) -> str:
    if not NAME.fullmatch(name or ""):
        raise ConfigError(f"zoo name {name!r} must be 1-64 lowercase letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit")
    return name


def check_files(files: Any, what: str) -> Dict[str, str]:
    """`files` (name -> sha256, from an index or a Hub manifest), once it lists only the store's own
    file names with well-formed hashes; else one DataError."""
    problem = _files_problem(files)
    if problem:
        raise DataError(f"{what}: its manifest {problem}")
    return dict(files)


def verify_files(folder: Path, files: Dict[str, str], what: str) -> None:
    """Every file of `files` (name -> sha256) is in `folder` with that hash; else one DataError naming it.
    `files` may come from someone else (an index, a Hub manifest): only the store's own file names
    are looked up, so nothing outside `folder` is read."""
    for filename, expected in sorted(check_files(files, what).items()):
        path = folder / filename
        if not path.is_file():
            raise DataError(f"{what}: {path} is missing; publish the model again")
        if file_sha256(path) != expected:
            raise DataError(f"{what}: {path} has changed since it was published (sha256 differs); "
                            "it is refused: publish the model again, or restore the file")


def entry_of(name: str, root: Optional[str | Path] = None) -> Dict[str, Any]:
    """The index entry of `name`; a DataError naming the closest name when there is none."""
    index = read_index(root)
    if name not in index:
        raise DataError(f"no model '{name}' in the zoo at {store_root(root)}"
                        f"{did_you_mean(name, index) if index else ' (nothing is published there)'}")
    return index[name]


def published_folder(name: str, root: Optional[str | Path] = None) -> Optional[Path]:
    """The folder of entry `name` once every file's hash is checked; None when there is no such name."""
    entry = read_index(root).get(name)
    if entry is None:
        return None
    folder = store_root(root) / entry["folder"]
    verify_files(folder, entry["files"], f"zoo model '{name}'")
    return folder


def model_card(name: str, pipeline_tag: str, summary: List[str], training: List[str], metrics: Dict[str, Any],
               usage: List[str], files: Dict[str, str], licence: str) -> str:
    """A model card in the Hugging Face format (YAML front matter, then markdown)."""
    lines = ["---", f"license: {licence}", "library_name: reidzoo", f"pipeline_tag: {pipeline_tag}",
             "tags:", "- animal-re-identification", "- reidzoo", "---", "", f"# {name}", "", *summary,
             "## Training", "", *training, "- recipe: the training config is in `config.json` (`train_config`)", "",
             "## Metrics (validation during training)", ""]
    lines += [f"- {key}: {value}" for key, value in sorted(metrics.items()) if isinstance(value, (int, float))] or ["- none recorded"]
    lines += ["", "## Licence", "", f"Weights: {licence}. Check the licence of the training data before using them.", "",
              *usage, "## Files", "", "| file | sha256 |", "|---|---|",
              *[f"| {filename} | {digest} |" for filename, digest in sorted(files.items())], ""]
    return "\n".join(lines)


def publish(export_dir: str | Path, name: str, *, root: Optional[str | Path] = None, force: bool = False,
            licence: str = "other") -> Dict[str, Any]:
    """Publish an export folder under `name`; returns its index entry. An existing name needs `force`.

    Exports it depends on (a fusion model's members) are published with it. Every version folder is
    written first and the index once, at the end (the commit point).
    """
    check_name(name)
    store = store_root(root)
    index = read_index(store)
    staged: Dict[str, Dict[str, Any]] = {}
    store.mkdir(parents=True, exist_ok=True)
    _stage(Path(export_dir).expanduser(), name, store, index, staged, force=force, licence=licence)
    previous = {key: index.get(key) for key in staged}
    index.update(staged)
    atomic_write_text(store / INDEX, json.dumps({"format_version": INDEX_VERSION, "models": index}, indent=2) + "\n")
    for key, entry in previous.items():
        if entry is not None and entry["folder"] != staged[key]["folder"]:
            _remove_version(store / entry["folder"], key)
    return staged[name]


def _remove_version(folder: Path, name: str) -> None:
    """Remove a version folder the index no longer lists, only when it is one this store wrote (a real
    folder carrying reidzoo.json with its name); anything else is left where it is, unlisted."""
    try:
        own = not folder.is_symlink() and json.loads((folder / MANIFEST).read_text()).get("name") == name
    except (OSError, ValueError, AttributeError):
        own = False
    if own:
        shutil.rmtree(folder, ignore_errors=True)


def _stage(source: Path, name: str, store: Path, index: Dict[str, Dict[str, Any]],
           staged: Dict[str, Dict[str, Any]], *, force: bool, licence: str) -> None:
    """Write `source`'s version folder (and those it depends on first) into the store; add their entries to `staged`."""
    if name in index and not force:
        raise ConfigError(f"'{name}' is already in the zoo at {store}: publish with --force to replace it")
    config = _read_config(source)
    kind_name = config.get("kind", "model")
    if kind_name not in PUBLISHED_KINDS:
        raise ConfigError(f"{source} is an export of kind '{kind_name}', which nothing registered to publish "
                          f"(registered: {', '.join(PUBLISHED_KINDS.names()) or 'none'}); import the package "
                          "that defines it first (`python -m zoo publish` imports every built-in kind)")

    def stage_member(member: Path, member_name: str) -> None:
        _stage(member, member_name, store, index, staged, force=force, licence=licence)

    summary, describe = PUBLISHED_KINDS.get(kind_name)().prepare(source, config, name, stage_member, licence)
    folder = f"{name}@{file_sha256(source / WEIGHTS_FILE)[:12]}"
    if name in index and index[name]["folder"] == folder:
        folder += "-" + datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")  # the same weights again
    listed = {e["folder"] for e in index.values()}
    with atomic_folder(store / folder, may_replace=lambda path: path.name not in listed) as staging:
        shutil.copyfile(source / WEIGHTS_FILE, staging / WEIGHTS_FILE)
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
        files = {filename: file_sha256(staging / filename) for filename in (WEIGHTS_FILE, CONFIG_FILE)}
        (staging / CARD).write_text(describe(name, files))
        files[CARD] = file_sha256(staging / CARD)
        (staging / MANIFEST).write_text(json.dumps({"name": name, "files": files}, indent=2) + "\n")
    staged[name] = {"name": name, "folder": folder, "files": files, **summary, "licence": licence,
                    "source": str(source.absolute()), "published": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def _read_config(source: Path) -> Dict[str, Any]:
    path = source / CONFIG_FILE
    if not (source / WEIGHTS_FILE).is_file() or not path.is_file():
        raise DataError(f"{source} is not an export folder: it needs {WEIGHTS_FILE} and {CONFIG_FILE} "
                        "(train.py writes them into <output_dir>/export)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise DataError(f"{path} is not a reidzoo export config")
    return config

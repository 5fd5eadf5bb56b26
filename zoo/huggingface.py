"""Published models on the Hugging Face Hub: push a zoo folder, load `hf-hub:ORG/NAME` back.

A reidzoo model on the Hub is a zoo folder (core/store.py): its `reidzoo.json` names every file
and its sha256, so a download is checked exactly like a local zoo model. When that file cannot be
had (a plain timm backbone, no such repo, offline), `load_from_hub` returns None and the caller
treats the name as a timm backbone, whose loader may still find it in its cache and otherwise says
what failed. A failed push stops with one message (offline, not logged in, ...).
"""
from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, Dict, Optional, Tuple
from urllib.parse import urlparse

from core.errors import DataError
from core.store import MANIFEST, check_files, read_index, verify_files
from zoo.base import ReIDModel
from zoo.export import load_export
from zoo.spec import looks_like_path


def _hub():
    try:
        import huggingface_hub
    except ImportError as err:
        raise DataError("the Hugging Face Hub needs the huggingface_hub package: pip install huggingface_hub") from err
    return huggingface_hub


def push(folder: Path, repo: str) -> str:
    """Upload a published zoo folder to the Hub repo `repo` (created if needed); returns its URL."""
    members = (_config(folder).get("model_args") or {}).get("members") or []
    published_here = read_index(folder.parent) if members else {}  # the zoo this folder was published to
    local = [m["spec"] for m in members if _local(m["spec"], published_here)]
    if local:
        raise DataError(f"not pushed to {repo}: this fusion model's members {local} are on this machine only, so the "
                        "Hub copy could not find them. Push each member first (python -m zoo publish MEMBER_EXPORT "
                        "--name NAME --hf-repo ORG/NAME) and train the fusion on members named hf-hub:ORG/NAME. "
                        "The model is published locally.")
    hub = _hub()
    try:
        api = hub.HfApi()
        api.create_repo(repo, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo, commit_message=f"reidzoo publish {folder.name}")
    except Exception as err:  # noqa: BLE001  every failure of the push (network, auth, quota) is one message
        raise DataError(f"could not push to the Hugging Face Hub repo {repo}: {type(err).__name__}: {err}. "
                        "Offline, or not logged in (`hf auth login`)? The model is published locally; "
                        "push again later with --hf-repo.") from err
    return f"https://huggingface.co/{repo}"


def _local(spec: str, published_here: Dict[str, Any]) -> bool:
    """Whether a model spec names something of this machine only: a folder or a name of a local zoo."""
    return looks_like_path(spec) or Path(spec).expanduser().is_dir() or spec in published_here or spec in read_index()


def _config(folder: Path) -> Dict[str, Any]:
    return json.loads((folder / "config.json").read_text())


def _reachable(hub) -> bool:
    """Whether the Hub's host resolves (and offline mode is off): the Hub client retries for about
    30 s before giving up on a machine without network, a name lookup fails at once."""
    if hub.constants.HF_HUB_OFFLINE:
        return False
    try:
        socket.getaddrinfo(urlparse(hub.constants.ENDPOINT).hostname or "", 443)
    except OSError:
        return False
    return True


def load_from_hub(repo: str) -> Optional[Tuple[ReIDModel, Dict[str, Any]]]:
    """(model, meta) of a reidzoo model published to `repo`, its files' hashes checked; None when the
    repo holds no reidzoo.json (a plain timm / Hub backbone) or the Hub cannot be reached."""
    hub = _hub()
    cached = hub.try_to_load_from_cache(repo, MANIFEST)
    if not isinstance(cached, str) and not _reachable(hub):
        return None
    try:
        manifest_path = hub.hf_hub_download(repo, MANIFEST)
    except hub.errors.EntryNotFoundError:
        return None
    except Exception:  # noqa: BLE001  offline, no such repo, private: timm's loader (its own cache) says what failed
        return None
    try:
        manifest = json.loads(Path(manifest_path).read_text())
        files = dict(manifest["files"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise DataError(f"hf-hub:{repo}: {MANIFEST} is not a reidzoo manifest: {err}") from err
    files = check_files(files, f"hf-hub:{repo}")  # its names become download patterns: the store's own only
    try:
        folder = Path(hub.snapshot_download(repo, allow_patterns=sorted(files) + [MANIFEST]))
    except Exception as err:  # noqa: BLE001
        raise DataError(f"cannot download hf-hub:{repo}: {type(err).__name__}: {err}") from err
    verify_files(folder, files, f"hf-hub:{repo}")
    model, meta = load_export(folder)
    return model, {**meta, "zoo": {"name": f"hf-hub:{repo}", "folder": str(folder)}}


MIEWID_FILES = ("config.json", "model.safetensors")  # the only files of a MiewID repo read (zoo.miewid)


def is_miewid_repo(repo: str) -> bool:
    """Whether `repo` (ORG/NAME) is a MiewID release, e.g. conservationxlabs/miewid-msv3: loaded by
    zoo.miewid, never by the repo's own (remote) code."""
    return repo.rsplit("/", 1)[-1].lower().startswith("miewid")


def miewid_snapshot(repo: str) -> Path:
    """The folder of the repo's config.json and model.safetensors (downloaded once, then the Hub cache)."""
    hub = _hub()
    cached = hub.try_to_load_from_cache(repo, MIEWID_FILES[1])
    if not isinstance(cached, str) and not _reachable(hub):
        raise DataError(f"cannot download hf-hub:{repo} ({', '.join(MIEWID_FILES)}): the Hugging Face Hub cannot be "
                        "reached (offline or HF_HUB_OFFLINE) and the files are not in its cache. Run once online, or "
                        "give a folder holding those two files to zoo.miewid.from_folder")
    try:
        return Path(hub.snapshot_download(repo, allow_patterns=list(MIEWID_FILES)))
    except Exception as err:  # noqa: BLE001  offline, no such repo, gated: one message
        raise DataError(f"cannot download hf-hub:{repo} ({', '.join(MIEWID_FILES)}): {type(err).__name__}: {err}") from err


def load_miewid(repo: str) -> Tuple[ReIDModel, Dict[str, Any]]:
    """(MiewID model in eval mode, meta) of a MiewID Hub repo, built by zoo.miewid from its
    config.json and model.safetensors: no remote code runs, nothing is unpickled."""
    from zoo.export import export_config
    from zoo.miewid import from_folder

    folder = miewid_snapshot(repo)
    model, config = from_folder(folder, source=f"hf-hub:{repo}")
    return model, export_config(model, extra={"source": f"hf-hub:{repo}", "hub_config": config})

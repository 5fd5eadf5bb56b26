"""Versions of Python and of installed packages, for the manifests that say what made a result."""
from __future__ import annotations

import platform
from importlib import metadata
from typing import Dict, Iterable


def installed_versions(packages: Iterable[str]) -> Dict[str, str]:
    """{"python": ..., package: version} for each of `packages` that is installed."""
    found = {"python": platform.python_version()}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found

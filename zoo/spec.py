"""What a model spec (`models=[...]`, a fusion member) names: a folder, or a name to look up."""
from __future__ import annotations


def looks_like_path(spec: str) -> bool:
    """Whether a spec names a folder (it has a path separator or starts with . or ~), not a model name."""
    return ":" not in spec and (any(sep in spec for sep in ("/", "\\")) or spec.startswith((".", "~")))

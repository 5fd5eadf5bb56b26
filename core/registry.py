"""One registry pattern for models, losses, detectors and datasets.

A component is a function or class registered under a name and built from a config block
``{name: ..., args: {...}}``. Unknown names and unknown arguments are errors that suggest the
closest valid spelling, so a typo in a YAML file never silently falls back to a default.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Mapping, Optional

from core.errors import ConfigError
from core.suggest import did_you_mean


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Callable[..., Any]] = {}

    def register(self, name: Optional[str] = None) -> Callable:
        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            key = name or fn.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
            self._entries[key] = fn
            return fn

        return decorator

    def names(self) -> list:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} '{name}'{did_you_mean(name, self._entries)}")
        return self._entries[name]

    def accepted_args(self, name: str) -> Optional[set]:
        """Keyword arguments the entry accepts; None when it takes **kwargs."""
        params = inspect.signature(self.get(name)).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return None
        return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def build(self, name: str, args: Optional[Mapping[str, Any]] = None, **extra: Any) -> Any:
        """Build `name` with config `args` plus runtime `extra` arguments (e.g. num_classes)."""
        args = dict(args or {})
        accepted = self.accepted_args(name)
        if accepted is not None:
            for key in args:
                if key not in accepted:
                    raise ConfigError(
                        f"{self.kind} '{name}' has no argument '{key}'"
                        f"{did_you_mean(key, accepted - set(extra))}"
                    )
        try:
            return self.get(name)(**args, **extra)
        except TypeError as err:  # a missing required argument, reported in the config's words
            raise ConfigError(f"cannot build {self.kind} '{name}' from {args}: {err}") from err

"""The one registry pattern: models, losses, samplers, data formats, matchers, detectors, scorers
and the model store's export kinds are each a `Registry`, filled by one decorator.

    MATCHERS = Registry("matcher", name_attribute="name")

    @MATCHERS.register("sift")
    class SIFT(Matcher): ...

A component is a function or class registered under a name and built from a config block
``{name: ..., args: {...}}``. Unknown names and unknown arguments are errors that suggest the
closest valid spelling, so a typo in a YAML file never silently falls back to a default.

Every registry is listed by its kind in a catalogue (`registry(kind)`), which is how the config
schema checks a name without keeping a copy of the names. An entry whose module needs an optional
package is declared with `register_lazy`: its name is known at once, its module imported on first
use (a missing package is then one error that says what to install). A user's own components
register the same way from their own module, imported by `load_plugins` (see docs/extending.md).
"""
from __future__ import annotations

import importlib
import inspect
import os
from typing import Any, Callable, Dict, Iterable, Mapping, Optional

from core.errors import ConfigError
from core.suggest import did_you_mean

PLUGINS_ENV = "REIDZOO_PLUGINS"
_CATALOGUE: Dict[str, Registry] = {}


class Registry:
    """Named components of one kind.

    `name_attribute`: a registered class gets its name in this attribute (a model's `architecture`,
    a matcher's `name`). `constructor`: the classmethod that builds a class from its config arguments
    (default: the class itself, or the function).
    """

    def __init__(self, kind: str, *, name_attribute: Optional[str] = None, constructor: Optional[str] = None):
        if kind in _CATALOGUE:
            raise ValueError(f"a registry of {kind}s exists already")
        self.kind = kind
        self.name_attribute = name_attribute
        self.constructor = constructor
        self._entries: Dict[str, Any] = {}
        self._lazy: Dict[str, tuple] = {}  # name -> (module, what installs its requirements)
        _CATALOGUE[kind] = self

    def register(self, name: Optional[str] = None) -> Callable:
        def decorator(obj: Any) -> Any:
            key = name or obj.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
            if inspect.isclass(obj) and self.name_attribute:
                setattr(obj, self.name_attribute, key)
            self._entries[key] = obj
            self._lazy.pop(key, None)
            return obj

        return decorator

    def register_lazy(self, name: str, module: str, *, requires: str) -> None:
        """`name` is registered by `module` when imported, on first use; `requires` says how to install
        what the module needs (e.g. "ultralytics: pip install -e '.[detect]'")."""
        if name not in self._entries:
            self._lazy[name] = (module, requires)

    def names(self) -> list:
        return sorted({*self._entries, *self._lazy})

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._lazy

    def get(self, name: str) -> Any:
        """The registered class or function (importing a lazily declared entry's module first)."""
        if name in self._lazy and name not in self._entries:
            module, requires = self._lazy[name]
            try:
                importlib.import_module(module)
            except ImportError as err:
                raise ConfigError(f"{self.kind} '{name}' needs {requires} ({err})") from err
            if name not in self._entries:
                raise ConfigError(f"{self.kind} '{name}': importing {module} did not register it")
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} '{name}'{did_you_mean(name, self.names())} (a {self.kind} of your "
                              "own? name its module in `plugins: [...]`, docs/extending.md)")
        return self._entries[name]

    def _builder(self, name: str) -> Callable[..., Any]:
        entry = self.get(name)
        return getattr(entry, self.constructor) if self.constructor and inspect.isclass(entry) else entry

    def accepted_args(self, name: str) -> Optional[set]:
        """Keyword arguments the entry accepts; None when it takes **kwargs."""
        params = inspect.signature(self._builder(name)).parameters.values()
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
            return self._builder(name)(**args, **extra)
        except TypeError as err:  # a missing required argument, reported in the config's words
            raise ConfigError(f"cannot build {self.kind} '{name}' from {args}: {err}") from err


def registry(kind: str) -> Optional[Registry]:
    """The registry of `kind` ("model", "matcher", ...), or None while no module defining it is imported."""
    return _CATALOGUE.get(kind)


def load_plugins(modules: Iterable[str] = ()) -> list:
    """Import a user's own component modules (`plugins: [...]` of a config, then $REIDZOO_PLUGINS,
    comma-separated), whose decorators register them; returns the modules imported."""
    names = [*modules, *(m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip())]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ConfigError(f"plugin module '{name}' cannot be imported: {err} (is its folder on PYTHONPATH, "
                              "or its package installed?)") from err
    return names

"""Every built-in component, registered: importing this module fills the registries (models, losses,
samplers, data formats, matchers, keypoint weightings, detectors, scorers, the store's export kinds), so that a config
can be checked against them. train.py, eval.py and the scripts import it before reading a config;
a user's own components come in through core.registry.load_plugins (docs/extending.md).

reidzoo's packages have the short names of the repository's layout (data, zoo, losses, ...), so a
user's own module of the same name, earlier on sys.path, would shadow one: that is checked here first
and named, rather than failing later on a missing attribute (docs/install.md).
"""
from __future__ import annotations

import importlib
from pathlib import Path

import core

PACKAGES = ("data", "zoo", "losses", "matchers", "detectors", "engine")
HOME = Path(core.__file__).resolve().parent.parent


def check_not_shadowed(home: Path = HOME) -> None:
    for name in PACKAGES:
        try:
            module = importlib.import_module(name)
        except ImportError as err:
            raise ImportError(f"reidzoo's package '{name}' cannot be imported ({err}); is reidzoo installed "
                              "(pip install -e .)?") from err
        where = Path(getattr(module, "__file__", None) or "?").resolve()
        if where.parent.parent != home:
            raise ImportError(f"'{name}' is imported from {where}, not from reidzoo ({home / name}): a module of "
                              f"yours with the same name comes first on sys.path. Rename it, or run from another "
                              "folder (docs/install.md)")


check_not_shadowed()

import data.formats  # noqa: E402,F401
import data.samplers  # noqa: E402,F401
import detectors  # noqa: E402,F401
import engine.cluster.criteria  # noqa: E402,F401
import engine.cluster.methods  # noqa: E402,F401
import engine.cluster.unlabelled  # noqa: E402,F401
import engine.matching.scorer  # noqa: E402,F401
import engine.scoring.scorers  # noqa: E402,F401
import losses  # noqa: E402,F401
import matchers  # noqa: E402,F401
import zoo  # noqa: E402,F401

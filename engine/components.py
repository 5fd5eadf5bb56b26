"""Every built-in component, registered: importing this module fills the registries (models, losses,
samplers, data formats, matchers, detectors, scorers, the store's export kinds), so that a config
can be checked against them. train.py, eval.py and the scripts import it before reading a config;
a user's own components come in through core.registry.load_plugins (docs/extending.md)."""
from __future__ import annotations

import data.formats  # noqa: F401
import data.samplers  # noqa: F401
import detectors  # noqa: F401
import engine.evaluation.scorers  # noqa: F401
import engine.matching.scorer  # noqa: F401
import losses  # noqa: F401
import matchers  # noqa: F401
import zoo  # noqa: F401

"""A model eval.py builds only when it has to run it.

eval.py needs three things of a model before any image: its checksum (the key of its cached
outputs), its meta (input size, normalisation, label map) and what one forward pass says about it
(embedding size, number of classes, pair head). For an export folder the meta is its config.json,
and the checksum and probe are remembered in the embedding cache, keyed by the export's two files
as they are on disk (path, size, modification time: the same identity the cache keeps of each
image). A later run whose outputs are all cached then builds no model, so it neither loads the
weights nor imports timm (with the torchvision and torch._dynamo it pulls in, a large share of a
small set's run: docs/results.md). Rewriting either file (a new training run) changes its identity, and the model is built,
checksummed and probed again.

Anything else (a zoo name, a timm or `hf-hub:` name, a fusion model, which runs on its members'
features) is built at once, as before.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from core.array_cache import ArrayCache
from core.files import file_identity
from core.store import CONFIG_FILE, WEIGHTS_FILE
from zoo.export import export_meta
from zoo.loading import load_for_eval, probe
from zoo.registry import model_inputs

FACTS_VERSION = 1  # bump when what is remembered (or how the checksum is computed) changes
FACTS = {"checksum", "embed_dim", "classes", "pair_head"}


class LazyModel:
    """A model's spec and meta at once; `identify(size)` gives its checksum and probe, `model()` the
    model itself, each building it only when the cache cannot answer."""

    def __init__(self, spec: str, device: torch.device, cache: ArrayCache):
        self.spec, self.device, self._cache = spec, device, cache
        self._model: Optional[torch.nn.Module] = None
        self._files = _file_identities(spec) if cache.enabled else None
        if self._files is not None:
            self.meta = export_meta(spec)
            self.inputs = model_inputs(self.meta["architecture"])  # "member_features" for a fusion model
            if self.inputs != "images":
                self._files = None
        if self._files is None:
            self._build()
            self.inputs = getattr(self._model, "inputs", "images")

    def model(self) -> torch.nn.Module:
        """The model in eval mode on the device, built (once) on first call."""
        if self._model is None:
            self._build()
        return self._model

    def identify(self, size: int) -> Tuple[str, Dict[str, Any]]:
        """(checksum, zoo.loading.probe's answer at `size`), remembered for the export's files."""
        key = self._key(size)
        facts = self._cache.load_group(key) if self._files is not None else None
        if facts is not None and set(facts) == FACTS and all(a.size == 1 for a in facts.values()):
            embed_dim, classes, pair_head = (int(facts[name].item()) for name in ("embed_dim", "classes", "pair_head"))
            return str(facts["checksum"].item()), {"embed_dim": embed_dim, "classes": None if classes < 0 else classes,
                                                   "pair_head": bool(pair_head)}
        probed = probe(self.model(), self.spec, size, self.device)
        if self._files is not None:
            classes = -1 if probed["classes"] is None else probed["classes"]
            self._cache.save_group(key, {"checksum": np.array([self.checksum]), "embed_dim": np.array([probed["embed_dim"]]),
                                         "classes": np.array([classes]), "pair_head": np.array([int(probed["pair_head"])])})
        return self.checksum, probed

    def _build(self) -> None:
        model, meta, self.checksum = load_for_eval(self.spec)
        self._model = model.to(self.device).eval()
        if self._files is None:
            self.meta = meta

    def _key(self, size: int) -> str:
        payload = {"version": FACTS_VERSION, "model files": self._files, "probed at": int(size)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _file_identities(spec: str) -> Optional[list]:
    """The identities of an export folder's weights and config, None when `spec` is no export folder."""
    folder = Path(spec).expanduser()
    try:
        return [list(file_identity(folder / WEIGHTS_FILE)), list(file_identity(folder / CONFIG_FILE))]
    except OSError:
        return None

"""The interface every zoo model offers to the trainer, the evaluator and the export."""
from __future__ import annotations

import inspect
from typing import Any, Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.trunk import Trunk


class ReIDModel(nn.Module):
    """forward(images) -> {"embedding": (B, D) raw, "logits"?: (B, num_classes), "features": [maps]}.

    Attributes the export records: `architecture` (registry name), `model_args` (JSON-serialisable
    arguments that rebuild it), `embed_dim`, `num_classes`, `input_size`, `mean`, `std`.
    """

    architecture: str = ""
    embed_dim: int
    num_classes: int
    model_args: Dict[str, Any]
    input_size: int
    mean: List[float]
    std: List[float]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings, the vectors retrieval compares by inner product."""
        return F.normalize(self(images)["embedding"].float(), dim=1)

    def _record(self, init_locals: Dict[str, Any], trunk: Trunk) -> None:
        """Keep the constructor's arguments (minus runtime ones) so the export can rebuild the model."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p not in ("self", "num_classes")]
        args = {name: init_locals[name] for name in names}
        # A hub name is recorded as its timm architecture and arguments: rebuilding needs no network.
        args["backbone"] = trunk.architecture
        args["backbone_args"] = dict(trunk.resolved_args)
        for key in ("feature_layers", "mean", "std"):
            if args.get(key) is not None:
                args[key] = list(args[key])
        self.model_args = args

    def _set_data_config(
        self,
        trunk: Trunk,
        input_size: int | None,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        img_size: int | None,
    ) -> None:
        """Input size and normalisation: explicit arguments, else what timm knows of the backbone's weights."""
        cfg = trunk.data_config
        self.input_size = int(input_size or img_size or cfg["input_size"][-1])
        self.mean = [float(v) for v in (mean if mean is not None else cfg["mean"])]
        self.std = [float(v) for v in (std if std is not None else cfg["std"])]

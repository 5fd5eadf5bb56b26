"""`TrunkConfig`: the settings every zoo model shares (backbone, weights, pooling, input), as one block.

Configs may give these settings flat next to the model's own arguments (`model: {name: embedder,
args: {backbone: resnet50, pool: gem, embed_dim: 512}}`, and exports written before the block
existed hold them that way) or nested under `trunk:`; `split_model_args` turns either into one
`TrunkConfig` plus the model's own arguments, refusing unknown keys with the closest valid one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from core.errors import ConfigError
from core.suggest import did_you_mean

TRUNK = "trunk"


@dataclass(frozen=True)
class TrunkConfig:
    """backbone: any timm name, or `hf-hub:org/repo`.
    pretrained: false | true (timm / hub download) | path of a .safetensors/.pth/.bin file.
    pool: None = the backbone's own (avg for CNNs, class token for ViTs) | avg | max | avgmax | token | gem.
    drop_rate: dropout on the pooled features, in training.
    freeze_stages: freeze the stem and the first N stages (0 = train everything).
    feature_layers: indices into timm's feature_info whose maps forward() returns under "features"
      (resnet: 0 = stem, 1-4 = layer1-4; ViT: blocks).
    img_size: input size a ViT is built for; input_size/mean/std: override what timm knows of the
      weights (the trainer sets them from the data config before export).
    backbone_args: further timm architecture settings, e.g. {drop_path_rate: 0.1}; only those of
      zoo/backbone_args.py's allowlist (never a path: an export may come from someone else).
    """

    backbone: str = "resnet18"
    pretrained: Union[bool, str] = False
    pool: Optional[str] = None
    drop_rate: float = 0.0
    freeze_stages: int = 0
    feature_layers: Optional[List[int]] = None
    img_size: Optional[int] = None
    input_size: Optional[int] = None
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    backbone_args: Dict[str, Any] = field(default_factory=dict)

    def to_args(self) -> Dict[str, Any]:
        """The block as JSON-ready config arguments (what an export records)."""
        args = dataclasses.asdict(self)
        for key in ("feature_layers", "mean", "std"):
            if args[key] is not None:
                args[key] = list(args[key])
        return args

    @classmethod
    def from_args(cls, args: Mapping[str, Any], *, model: str = "") -> TrunkConfig:
        """A block from its settings; an unknown one is refused with the closest valid name."""
        unknown = [key for key in args if key not in TRUNK_KEYS]
        if unknown:
            raise ConfigError(f"{_owner(model)}trunk has no setting '{unknown[0]}'{did_you_mean(unknown[0], TRUNK_KEYS)}")
        return cls(**{key: _copied(value) for key, value in args.items()})


TRUNK_KEYS: Tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrunkConfig))


def split_model_args(model: str, args: Mapping[str, Any], own: Iterable[str]) -> Tuple[TrunkConfig, Dict[str, Any]]:
    """A model's config arguments -> (its trunk block, the rest, which must all be in `own`).

    Trunk settings may be flat, under `trunk:`, or both, but each only once.
    """
    own = set(own)
    rest = dict(args)
    nested = rest.pop(TRUNK, None)
    if nested is None:
        nested = {}
    elif isinstance(nested, TrunkConfig):
        nested = nested.to_args()
    elif not isinstance(nested, Mapping):
        raise ConfigError(f"{_owner(model)}trunk must be a mapping of {', '.join(TRUNK_KEYS)}, got {nested!r}")
    flat = {key: rest.pop(key) for key in list(rest) if key in TRUNK_KEYS}
    unknown = [key for key in rest if key not in own]
    if unknown:
        valid = own | set(TRUNK_KEYS) | {TRUNK}
        raise ConfigError(f"{_owner(model)}has no argument '{unknown[0]}'{did_you_mean(unknown[0], valid)}")
    twice = sorted(set(flat) & set(nested))
    if twice:
        raise ConfigError(f"{_owner(model)}sets {', '.join(twice)} both flat and under trunk: keep one")
    return TrunkConfig.from_args({**nested, **flat}, model=model), rest


def _owner(model: str) -> str:
    return f"model '{model}' " if model else ""


def _copied(value: Any) -> Any:
    """Lists and dicts copied, so a block never shares mutable state with the config it came from."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (list, tuple)):
        return list(value)
    return value

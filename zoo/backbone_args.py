"""`backbone_args`: the timm model-constructor arguments a trunk passes on, checked against an allowlist.

timm.create_model takes more than architecture settings: `checkpoint_path` reads a file,
`pretrained_cfg_overlay` can name one to download or read, `features_only` changes what the model
returns. Exports carry these arguments and may come from someone else, so only architecture
settings are passed on, each a number, true/false, a short name or a list of numbers: never a path.
Configs are held to the same list, so that every trained model's export loads back.
"""
from __future__ import annotations

import math
import re
from typing import Any, Dict, Mapping

from core.errors import ConfigError
from core.suggest import did_you_mean

# Architecture settings of timm's model families (ViT, Swin, ConvNeXt, ResNet, EfficientNet, EVA...).
BACKBONE_ARGS = frozenset({
    # regularisation while training
    "drop_path_rate", "drop_block_rate", "attn_drop_rate", "proj_drop_rate", "pos_drop_rate", "patch_drop_rate",
    # input
    "in_chans", "patch_size", "dynamic_img_size", "dynamic_img_pad", "output_stride",
    # sizes
    "embed_dim", "embed_dims", "depth", "depths", "dims", "num_heads", "mlp_ratio", "mlp_ratios", "widths", "channels",
    "layers", "stem_width", "stem_chs", "base_width", "cardinality", "channel_multiplier", "depth_multiplier",
    "window_size", "head_dim", "head_hidden_size",
    # tokens and position embeddings
    "class_token", "reg_tokens", "no_embed_class", "pos_embed", "use_abs_pos", "use_rot_pos_emb",
    # layers, by the names timm looks up
    "act_layer", "norm_layer", "se_layer", "attn_layer", "pre_norm", "fc_norm", "final_norm", "qkv_bias", "qk_norm",
    "init_values", "ls_init_value", "layer_scale_init_value", "layer_scale_init_values", "use_grn", "conv_mlp",
    "conv_bias", "head_norm_first", "stem_type", "avg_down", "down_kernel_size", "block_type", "weight_init",
    "fix_init", "zero_init_last",
})
# Arguments timm takes that are not architecture: why each is refused.
REFUSED = {
    "checkpoint_path": "it names a file to read weights from",
    "pretrained_cfg": "it names where weights come from",
    "pretrained_cfg_overlay": "it names where weights come from",
    "pretrained_strict": "weights come from the trunk's `pretrained` setting or the export",
    "cache_dir": "it names a folder",
    "pretrained": "give it as the trunk's own `pretrained` setting",
    "features_only": "the trunk returns pooled features (feature maps: feature_layers)",
    "out_indices": "the trunk's feature_layers says which maps it returns",
    "num_classes": "the trunk has no classifier head of timm's (set by the model)",
    "global_pool": "give it as the trunk's `pool` setting",
    "img_size": "give it as the trunk's `img_size` setting",
}
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a layer or mode name; no separator, dot or colon: never a path
MAX_ITEMS = 64


def check_backbone_args(args: Any, where: str = "backbone_args") -> Dict[str, Any]:
    """A copy of `args`, each key on the allowlist and each value a plain setting; a ConfigError otherwise."""
    if not isinstance(args, Mapping):
        raise ConfigError(f"{where} must be a mapping of timm architecture settings, got {args!r}")
    checked = {}
    for key, value in args.items():
        if key in REFUSED:
            raise ConfigError(f"{where}.{key} is not passed to timm: {REFUSED[key]}")
        if key not in BACKBONE_ARGS:
            raise ConfigError(f"{where}.{key} is not a timm architecture setting reidzoo passes on"
                              f"{did_you_mean(str(key), BACKBONE_ARGS)} (allowed: {', '.join(sorted(BACKBONE_ARGS))})")
        checked[key] = _value(value, f"{where}.{key}")
    return checked


def _value(value: Any, where: str, depth: int = 0) -> Any:
    if value is None or isinstance(value, (bool, int)) or (isinstance(value, float) and math.isfinite(value)):
        return value
    if isinstance(value, str) and NAME.fullmatch(value):
        return value
    if isinstance(value, (list, tuple)) and depth < 2 and len(value) <= MAX_ITEMS \
            and not any(isinstance(item, str) for item in value):
        return [_value(item, where, depth + 1) for item in value]
    raise ConfigError(f"{where} must be a number, true/false, null, a name of letters, digits, '_' or '-', or a "
                      f"list of numbers, got {value!r}")


def check_recorded_backbone(backbone: Any, where: str) -> str:
    """A backbone named by a file from someone else (an export, a Hub config): a timm architecture
    itself. A name with a source (`hf-hub:`, `local-dir:`) would make timm download or read a file;
    exports record the architecture a hub name resolved to when training."""
    if not isinstance(backbone, str) or not backbone or ":" in backbone or "/" in backbone or "\\" in backbone:
        raise ConfigError(f"{where} must be a timm architecture name, got {backbone!r}")
    return backbone

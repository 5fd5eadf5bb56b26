"""What values each key of the config schema (core/schema.py) accepts.

A rule takes (key, value) and returns what is wrong, naming the key, the value and what is
valid, or None. The names users may choose from are listed here, where the config is read;
tests/test_bad_inputs.py checks they match what the registries and modules that use them accept.
core/config.py applies `value_problem` whenever a config is built, so a bad value stops before any
data is read or model built; core/detector_schema.py adds the rules of its own dataclasses.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional

from core.registry import registry
from core.schema import (
    SYNTHETIC,
    AugmentConfig,
    ClusterConfig,
    CropConfig,
    DataConfig,
    EvalConfig,
    LossConfig,
    MemberFeaturesConfig,
    RerankConfig,
    RetrievalConfig,
    SamplerConfig,
    SyntheticConfig,
    ThresholdConfig,
    TrainConfig,
    TrainLoopConfig,
    ValidationConfig,
)
from core.suggest import closest

Rule = Callable[[str, Any], Optional[str]]

OPTIMIZERS = ("adamw", "sgd")
MIXED_PRECISIONS = ("auto", "no", "fp16", "bf16")
VALIDATION_METRICS = ("rank1", "mAP", "BAKS", "BAUS", "geometric_mean")
EXPORTED_WEIGHTS = ("best", "last")
TTA_VIEWS = ("identity", "hflip", "fivecrop")
CALIBRATIONS = ("isotonic", "logistic", "none")
SUBMISSIONS = ("auto", "animalclef", "humpback", "animalclef2026")
INDEXES = ("flat", "ivf", "hnsw")
AGGREGATIONS = ("max", "mean_top_m")
BOX_CHOICES = ("confident", "central")
TASKS = ("reid", "detector")
EVAL_TASKS = ("identify", "cluster")
PAIR_SCORES = ("inliers", "matches")
NEIGHBOUR_RERANKERS = ("kreciprocal", "alpha_qe", "dba")


def _rule(accepts: Callable[[Any], bool], valid: str) -> Rule:
    def check(key: str, value: Any) -> Optional[str]:
        return None if accepts(value) else f"'{key}' must be {valid}, got {value!r}"
    return check


def one_of(*choices: str) -> Rule:
    def check(key: str, value: Any) -> Optional[str]:
        if value in choices:
            return None
        match = closest(str(value), choices)
        hint = f"; did you mean '{match}'?" if match else ""
        return f"'{key}' must be one of {', '.join(choices)}, got {value!r}{hint}"
    return check


def registered(kind: str, *, also: tuple = ()) -> Rule:
    """A name of the registry of `kind` (core/registry.py), or one of `also`; read when the value is
    checked, so components registered by plugins count."""
    def check(key: str, value: Any) -> Optional[str]:
        found = registry(kind)
        if found is None:
            return (f"'{key}' = {value!r} names a {kind}, but no module defining {kind}s is imported "
                    "(import engine.components, as train.py and eval.py do)")
        return one_of(*also, *found.names())(key, value)
    return check


def at_least(low: float) -> Rule:
    return _rule(lambda v: math.isfinite(v) and v >= low, f">= {low}")


def above(low: float) -> Rule:
    return _rule(lambda v: math.isfinite(v) and v > low, f"> {low}")


def within(low: float, high: float, *, open_low: bool = False, open_high: bool = False) -> Rule:
    def accepts(v: float) -> bool:
        return (v > low if open_low else v >= low) and (v < high if open_high else v <= high)
    return _rule(accepts, f"in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}")


def numbers(count: int, *, positive: bool = False) -> Rule:
    """A list of exactly `count` finite numbers (> 0 with `positive`)."""
    def accepts(v: list) -> bool:
        return len(v) == count and all(math.isfinite(x) and (x > 0 or not positive) for x in v)
    return _rule(accepts, f"a list of {count} {'positive ' if positive else ''}numbers")


def increasing_pair(low: float, high: float) -> Rule:
    """[min, max] with low < min <= max <= high."""
    return _rule(lambda v: len(v) == 2 and low < v[0] <= v[1] <= high and math.isfinite(v[1]),
                 f"[min, max] with {low} < min <= max <= {high}")


def each(rule: Rule, *, non_empty: bool) -> Rule:
    """Every entry of a list passes `rule` (its key gets the index: `tta[1]`)."""
    def check(key: str, value: list) -> Optional[str]:
        if non_empty and not value:
            return f"'{key}' must list at least one value, got []"
        return next((p for i, v in enumerate(value) if (p := rule(f"{key}[{i}]", v))), None)
    return check


COUNT, SIZE, OPTIONAL_COUNT = at_least(1), at_least(1), at_least(0)
PROBABILITY, FRACTION = within(0, 1), within(0, 1, open_low=True, open_high=True)

# Dataclass -> field -> rule. Fields not listed accept any value of their type.
VALUE_RULES: Dict[type, Dict[str, Rule]] = {
    SyntheticConfig: {"individuals": COUNT, "images_per_individual": COUNT, "seed": at_least(0), "sites": at_least(0)},
    DataConfig: {
        "format": registered("dataset format", also=(SYNTHETIC,)), "image_size": SIZE, "bbox_padding": at_least(0),
        "num_workers": at_least(0), "identity_parts": COUNT, "identity_part": at_least(0), "mean": numbers(3),
        "std": numbers(3, positive=True),
    },
    AugmentConfig: {
        "scale": increasing_pair(0, 1), "ratio": increasing_pair(0, math.inf), "hflip": PROBABILITY,
        "color": PROBABILITY, "rotate": within(0, 180), "rotate_p": PROBABILITY, "blur": PROBABILITY,
        "gray": PROBABILITY,
    },
    SamplerConfig: {"name": registered("sampler"), "k": COUNT},
    LossConfig: {"weight": above(0)},
    TrainLoopConfig: {
        "epochs": COUNT, "max_steps": OPTIONAL_COUNT, "max_minutes": at_least(0), "batch_size": SIZE,
        "optimizer": one_of(*OPTIMIZERS), "lr": above(0), "weight_decay": at_least(0),
        "momentum": within(0, 1, open_high=True), "head_lr_mult": above(0), "warmup_steps": OPTIONAL_COUNT,
        "min_lr_ratio": PROBABILITY, "grad_accum": COUNT, "clip_grad": at_least(0),
        "mixed_precision": one_of(*MIXED_PRECISIONS), "ema_decay": FRACTION,
        "checkpoint_every": OPTIONAL_COUNT, "keep_last": COUNT, "log_every": COUNT,
    },
    ValidationConfig: {
        "fraction": FRACTION, "unknown_fraction": within(0, 1, open_high=True), "every_epochs": COUNT,
        "best_metric": one_of(*VALIDATION_METRICS), "export": one_of(*EXPORTED_WEIGHTS), "max_images": COUNT,
    },
    CropConfig: {"min_confidence": PROBABILITY, "choose": one_of(*BOX_CHOICES),
                 "batch_size": SIZE},
    MemberFeaturesConfig: {"tta": each(one_of(*TTA_VIEWS), non_empty=True),
                           "train_views": each(one_of(*TTA_VIEWS), non_empty=False), "batch_size": SIZE},
    TrainConfig: {"task": one_of("reid"), "seed": at_least(0), "losses": _rule(bool, "a list of at least one loss")},
    RetrievalConfig: {
        "k": COUNT, "index": one_of(*INDEXES), "nlist": OPTIONAL_COUNT, "nprobe": COUNT, "hnsw_m": COUNT,
        "ef_search": COUNT, "ef_construction": COUNT, "aggregation": one_of(*AGGREGATIONS), "m": COUNT,
    },
    ThresholdConfig: {
        "value": _rule(lambda v: v is None or math.isfinite(v), "a number, or null to tune it"),
        "holdout_fraction": FRACTION, "unknown_fraction": FRACTION, "min_queries": COUNT, "max_splits": COUNT,
    },
    RerankConfig: {
        "matcher": registered("matcher", also=("none",)), "shortlist": COUNT, "weight": at_least(0), "side": at_least(32),
        "max_keypoints": at_least(8), "score": one_of(*PAIR_SCORES), "geometry": registered("geometry"),
        "ransac_threshold": above(0), "region": within(0, 1, open_low=True), "calibration_queries": COUNT,
        "min_matches": OPTIONAL_COUNT, "neighbours": each(one_of(*NEIGHBOUR_RERANKERS), non_empty=False),
        "weighting": each(registered("keypoint weighting"), non_empty=False),
        "geometries": each(registered("geometry"), non_empty=False),
    },
    ClusterConfig: {
        "method": registered("clusterer"), "criterion": registered("cluster_criterion"),
        "count_criterion": registered("cluster_criterion"), "unlabelled": registered("unlabelled_threshold"),
        "neighbours": COUNT,
        "threshold": _rule(lambda v: v is None or math.isfinite(v), "a number, or null to tune it"),
        "grid": each(within(0, 1), non_empty=True), "holdout_fraction": FRACTION,
        "unknown_fraction": within(0, 1, open_high=True), "splits": COUNT,
    },
    EvalConfig: {
        "task": one_of(*EVAL_TASKS), "seed": at_least(0), "models": _rule(bool, "a list of at least one model"),
        "weights": each(at_least(0), non_empty=False), "tta": each(one_of(*TTA_VIEWS), non_empty=True),
        "batch_size": SIZE, "calibration": one_of(*CALIBRATIONS), "submission": one_of(*SUBMISSIONS),
    },
}


def _sites_in_scenes(cfg: SyntheticConfig) -> Optional[str]:
    if cfg.sites and not cfg.scenes:
        return "'data.synthetic.sites' are camera sites of scene mode: set 'data.synthetic.scenes' = true too"
    return None


def _pk_batches(cfg: TrainConfig) -> Optional[str]:
    if cfg.sampler.name == "pk" and cfg.train.batch_size % cfg.sampler.k:
        return (f"'sampler.k' = {cfg.sampler.k} must divide 'train.batch_size' = {cfg.train.batch_size} "
                "(P identities x K images per batch)")
    return None


def _model_weights(cfg: EvalConfig) -> Optional[str]:
    if cfg.weights and len(cfg.weights) != len(cfg.models):
        return f"'weights' has {len(cfg.weights)} values for {len(cfg.models)} models (one per model, or [] for equal)"
    if cfg.weights and sum(cfg.weights) <= 0:
        return f"'weights' must have a positive sum, got {cfg.weights}"
    return None


def _identity_part(cfg: DataConfig) -> Optional[str]:
    if cfg.identity_part >= cfg.identity_parts:
        return (f"'data.identity_part' = {cfg.identity_part} must be below 'data.identity_parts' = {cfg.identity_parts} "
                f"(parts are numbered 0 .. {cfg.identity_parts - 1})")
    return None


QUERY_ROOT_FORMATS = ("folders", "csv")


def _query_root_format(cfg: DataConfig) -> Optional[str]:
    if cfg.query_root and cfg.format not in QUERY_ROOT_FORMATS:
        return (f"'data.query_root' adds a folder of query photos to a labelled gallery of data.format="
                f"{' or '.join(QUERY_ROOT_FORMATS)}; data.format={cfg.format} brings its own queries: leave it empty")
    return None


def _no_queries_in_training(cfg: TrainConfig) -> Optional[str]:
    if cfg.data.query_root:
        return ("'data.query_root' names unlabelled photos to identify with eval.py; train.py learns from labelled "
                "images only: leave it empty")
    return None


def _scores_every_identity(cfg: EvalConfig) -> Optional[str]:
    if cfg.data.identity_parts != 1:
        return ("'data.identity_parts' chooses the identities a model trains on; eval.py scores every image of "
                "data.root: leave it at 1")
    return None


# Rules that relate several keys of one dataclass.
JOINT_RULES: Dict[type, List[Callable[[Any], Optional[str]]]] = {
    SyntheticConfig: [_sites_in_scenes],
    DataConfig: [_identity_part, _query_root_format],
    TrainConfig: [_pk_batches, _no_queries_in_training],
    EvalConfig: [_model_weights, _scores_every_identity],
}


def value_problem(cfg: Any, prefix: str = "") -> Optional[str]:
    """The first value of dataclass `cfg` (not of its sections) that breaks a rule, or None."""
    for name, rule in VALUE_RULES.get(type(cfg), {}).items():
        problem = rule(prefix + name, getattr(cfg, name))
        if problem:
            return problem
    return next((p for check in JOINT_RULES.get(type(cfg), []) if (p := check(cfg))), None)

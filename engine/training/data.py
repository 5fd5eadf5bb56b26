"""Training and validation data of a run: identity-disjoint split, datasets, loader."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Dict, Optional

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from core.errors import DataError
from core.schema import TrainConfig
from data.dataset import ReIDDataset, build_label_map
from data.images import ImageLoader, resolve_cache_dir
from data.samplers import build_batch_sampler
from data.splits import identity_part, identity_split, open_set_split
from data.transforms import build_eval_transform, build_train_transform
from engine.accel import say
from engine.tables import dataset_table
from engine.training.seeding import SeededBatchSampler, SeededDataset

MIN_VAL_IDENTITIES = 4


@dataclass
class TrainData:
    train_table: pd.DataFrame
    val_table: Optional[pd.DataFrame]  # open-set: split column says database / query
    label_map: Dict[str, int]
    loader: DataLoader
    batch_sampler: SeededBatchSampler
    val_dataset: Optional[Dataset]  # items {"image", ...} and load_image(i), like ReIDDataset
    setup_model: Callable[[nn.Module], None]  # sets the built model's data-given state (input size; fusion's PCA)
    model_args: Optional[Dict[str, Any]] = None  # the full model arguments where the data gives them (fusion)


def training_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Labelled database images: query identities, even where a dev set labels them, are never trained on."""
    rows = table[(table["split"] == "database") & table["identity"].notna()]
    if rows.empty:
        raise DataError("the training set is empty: no labelled images in the database split")
    return rows.reset_index(drop=True)


def training_part(table: pd.DataFrame, cfg: TrainConfig, accelerator=None) -> pd.DataFrame:
    """The rows of the identity part this run trains on (data.identity_parts; all rows when 1)."""
    parts, part = cfg.data.identity_parts, cfg.data.identity_part
    if parts == 1:
        return table
    rows = identity_part(table, parts, part)
    trained = training_rows(rows)
    say(accelerator, f"training on identity part {part} of 0..{parts - 1}: {trained['identity'].nunique()} "
                     f"identities, {len(trained)} images")
    return rows


def split_validation(rows: pd.DataFrame, cfg: TrainConfig):
    """Hold out identities for open-set validation; skipped when there are too few of them."""
    if not cfg.val.enabled or cfg.val.fraction <= 0:
        return rows, None
    train, held = identity_split(rows, cfg.val.fraction, cfg.seed)
    if held["identity"].nunique() < MIN_VAL_IDENTITIES or train.empty:
        print(f"validation skipped: fewer than {MIN_VAL_IDENTITIES} identities could be held out")
        return rows, None
    if len(held) > cfg.val.max_images:
        keep = held["identity"].drop_duplicates().sample(frac=1.0, random_state=cfg.seed)
        counts = held.groupby("identity").size().reindex(keep)
        held = held[held["identity"].isin(counts[counts.cumsum() <= cfg.val.max_images].index)]
    val = open_set_split(held, unknown_fraction=cfg.val.unknown_fraction, query_fraction=0.2, seed=cfg.seed)
    return train.reset_index(drop=True), val.reset_index(drop=True)


def _lower_priority(worker_id: int) -> None:
    # On a few cores the workers compete with the training threads: let them take idle time first.
    with contextlib.suppress(OSError, AttributeError):
        os.nice(10)


def build_train_data(cfg: TrainConfig, *, num_replicas: int = 1, rank: int = 0, pin_memory: bool = False,
                     accelerator=None) -> TrainData:
    table = training_part(dataset_table(cfg.data), cfg, accelerator)
    train_table, val_table = split_validation(training_rows(table), cfg)
    label_map = build_label_map(train_table["identity"])
    image_loader = ImageLoader(
        cfg.data.image_size,
        resolve_cache_dir(cfg.data.cache_dir),
        crop_to_bbox=cfg.data.crop_to_bbox,
        bbox_padding=cfg.data.bbox_padding,
    )
    train_set = ReIDDataset(
        train_table,
        image_loader,
        build_train_transform(cfg.augment, cfg.data.image_size, cfg.data.mean, cfg.data.std),
        label_map=label_map,
        orientation_rules=cfg.data.orientation_rules,
    )
    labels = [label_map[i] for i in train_table["identity"]]
    sampler = build_batch_sampler(
        cfg.sampler, labels, cfg.train.batch_size, cfg.seed, num_replicas=num_replicas, rank=rank
    )
    if len(sampler) == 0:
        raise DataError(
            f"the training set ({len(train_table)} images) gives no full batch of {cfg.train.batch_size}; "
            "lower train.batch_size"
        )
    batches = SeededBatchSampler(sampler, cfg.seed)
    workers = cfg.data.num_workers
    loader = DataLoader(
        SeededDataset(train_set),
        batch_sampler=batches,
        num_workers=workers,
        pin_memory=pin_memory,
        # Workers outlive the epoch: re-forking them each epoch cost a few % of a short run's
        # steps. They hold no state (each item carries its seed), so exact resume is unchanged.
        persistent_workers=workers > 0,
        worker_init_fn=_lower_priority,
        # A private generator keeps the global torch RNG (dropout) independent of data loading.
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    val_set = None
    if val_table is not None:
        val_set = ReIDDataset(
            val_table,
            image_loader,
            build_eval_transform(cfg.data.image_size, cfg.data.mean, cfg.data.std),
            orientation_rules=cfg.data.orientation_rules,
        )
    return TrainData(train_table, val_table, label_map, loader, batches, val_set, setup_model=partial(_record_input, cfg))


def _record_input(cfg: TrainConfig, model: nn.Module) -> None:
    """The input size and normalisation the model trains with, for its export."""
    model.input_size, model.mean, model.std = cfg.data.image_size, cfg.data.mean, cfg.data.std

"""A detector run's data: annotations -> ultralytics layout -> seeded datasets and sharded loaders.

The annotated images are written to `<output_dir>/yolo_data/` (ultralytics' images/ + labels/
layout, hard links, split by identity), then read back by the detector's own dataset (for YOLO:
mosaic, HSV, flips, affine). Every item's augmentation is drawn from generators reseeded per sample
(engine/training/seeding.py, as for the re-identification models), so an epoch replays identically
whatever the worker count, and a run resumed mid-epoch continues with the very batches it would have seen.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import List

import cv2
import numpy as np
from torch.utils.data import DataLoader, Dataset

from core.detector_schema import DetectorTrainConfig
from core.errors import DataError
from data.formats import load_table_with_root
from data.samplers import RandomBatchSampler
from detectors.base import Detector
from engine.detection.annotations import AnnotatedImage, load_annotations, write_yolo_dataset
from engine.training.seeding import SeededBatchSampler, SeededDataset, seed_global_rngs

LAYOUT_DIR = "yolo_data"


def annotated_images(cfg: DetectorTrainConfig) -> List[AnnotatedImage]:
    """The run's annotations, from the source `cfg.annotations` names ("auto": YOLO labels in
    ROOT/labels when that folder exists, else the table's bbox column)."""
    table, root = load_table_with_root(cfg.data)
    source, path = cfg.annotations.source, cfg.annotations.path
    if source == "auto":
        source = "yolo" if (Path(path) if path else root / "labels").is_dir() else "bbox"
    if source == "yolo":
        items = load_annotations("yolo", images=str(root / "images"), path=path or str(root / "labels"))
        # Label files carry no identities; the table's keep the held-out images' animals unseen.
        identities = {os.path.abspath(p): i for p, i in zip(table["path"], table["identity"])}
        return [replace(item, identity=identities.get(item.path)) for item in items]
    if source == "csv":  # Humpback keeps its training images (the ones the CSV boxes) in ROOT/train
        images = root / "train" if cfg.data.format == "humpback" else root
        return load_annotations("csv", path=path or str(root / "bboxes.csv"), images=str(images))
    return load_annotations("bbox", table=table)


def _single_threaded_worker(worker_id: int) -> None:
    # Each worker augments with OpenCV; its own threads would compete with the training threads
    # (ultralytics turns them off for the same reason).
    cv2.setNumThreads(0)


@dataclass
class DetectorData:
    layout: Path  # the ultralytics data.yaml
    train: SeededDataset
    val: Dataset
    batch_sampler: SeededBatchSampler
    loader: DataLoader
    num_train: int
    num_val: int


def build_detector_data(cfg: DetectorTrainConfig, detector: Detector, *, num_replicas: int, rank: int,
                        is_main: bool, wait) -> DetectorData:
    """Write the layout on the main process (the others wait), then build datasets and loader."""
    out = Path(cfg.output_dir) / LAYOUT_DIR
    if is_main:
        items = annotated_images(cfg)
        write_yolo_dataset(items, out, val_fraction=cfg.annotations.val_fraction, seed=cfg.seed)
    wait()
    train = detector.build_dataset(str(out / "images" / "train"), train=True, batch_size=cfg.train.batch_size)
    val = detector.build_dataset(str(out / "images" / "val"), train=False, batch_size=cfg.train.batch_size)
    if len(train) < cfg.train.batch_size * num_replicas:
        raise DataError(f"{len(train)} training images cannot fill a batch of {cfg.train.batch_size} on "
                        f"{num_replicas} process(es): lower train.batch_size or annotate more images")
    seeded = SeededDataset(train, reseed=seed_global_rngs)
    sampler = SeededBatchSampler(RandomBatchSampler(np.zeros(len(train), dtype=np.int64), cfg.train.batch_size,
                                                    seed=cfg.seed, num_replicas=num_replicas, rank=rank), cfg.seed)
    loader = DataLoader(seeded, batch_sampler=sampler, collate_fn=detector.collate, num_workers=cfg.data.num_workers,
                        worker_init_fn=_single_threaded_worker, persistent_workers=False)
    return DetectorData(out / "data.yaml", seeded, val, sampler, loader, len(train), len(val))

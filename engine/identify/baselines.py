"""Reference points a trained model must beat: nearest neighbours on raw pixels.

The same open-set procedure as eval.py (threshold tuned on held-out database identities, never
on query labels) runs on pixel vectors instead of model embeddings, so the two scores compare.
"""
from __future__ import annotations

from typing import Any, Dict

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from core.schema import EvalConfig
from data.dataset import ReIDDataset
from data.images import ImageLoader
from engine.identify.decision import evaluate_outputs
from engine.identify.pipeline import load_identify_data
from engine.identify.query_metrics import query_metrics
from engine.scoring.scorers import ModelOutput

PIXEL_SIZE = 32


def pixel_embeddings(table: pd.DataFrame, size: int = PIXEL_SIZE, crop_to_bbox: bool = True,
                     bbox_padding: float = 0.1, orientation_rules=None) -> np.ndarray:
    """(N, 3*size*size) unit vectors: each image (cropped, oriented) squashed to size x size, its
    mean brightness removed so that lighting alone does not decide the match."""
    dataset = ReIDDataset(table, ImageLoader(size, None, crop_to_bbox, bbox_padding), transform=lambda image: image,
                          orientation_rules=orientation_rules)
    vectors = np.empty((len(table), 3 * size * size), dtype=np.float32)
    for i in tqdm(range(len(table)), desc="raw pixels", unit="img", disable=len(table) < 500):
        image = cv2.resize(dataset.load_image(i), (size, size), interpolation=cv2.INTER_AREA)
        vector = image.astype(np.float32).ravel()
        vectors[i] = vector - vector.mean()
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def pixel_baseline(cfg: EvalConfig, size: int = PIXEL_SIZE) -> Dict[str, Any]:
    """Query metrics (as in metrics.json) of raw-pixel nearest neighbours on cfg.data."""
    data = load_identify_data(cfg)
    embeddings = pixel_embeddings(data.rows, size, cfg.data.crop_to_bbox, cfg.data.bbox_padding,
                                  cfg.data.orientation_rules)
    evaluation = evaluate_outputs(cfg, data.gallery, data.query, [ModelOutput("raw pixels", embeddings)], data.kind)
    return query_metrics(cfg.threshold, data.gallery, data.query, evaluation)

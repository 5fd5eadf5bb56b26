"""The table a run works on: the dataset as its format reads it, then cropped by the detector
that data.crop.detector names (each image's `bbox` becomes the detector's box)."""
from __future__ import annotations

import pandas as pd

from core.schema import DataConfig
from data.formats import load_table


def dataset_table(cfg: DataConfig) -> pd.DataFrame:
    table = load_table(cfg)
    if cfg.crop.detector:
        from engine.crops import crop_table  # loads the detector (ultralytics) only when asked

        table = crop_table(table, cfg.crop)
    return table

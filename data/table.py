"""The one metadata table every source format is turned into.

Columns (pandas DataFrame, one row per image):
  image_id     str, unique
  identity     str, or None where unknown (query images, `new_individual`, `new_whale`)
  path         str, absolute path of the image file (resolved inside the dataset root)
  split        'database' (labelled reference) or 'query' (to predict)
  dataset      str, source dataset / group (e.g. 'LynxID2025'); never empty
  species      str or None
  orientation  str or None ('left', 'right', 'top', ...)
  date         str or None (ISO date; used by time-aware splits)
  bbox         list [x, y, w, h] in pixels of the original image, or None
"""
from __future__ import annotations

import json
import math
from typing import Any, Optional

import pandas as pd

COLUMNS = ["image_id", "identity", "path", "split", "dataset", "species", "orientation", "date", "bbox"]
SPLITS = ("database", "query")
# Labels competitions use for "not a known individual"; they are never identities.
UNKNOWN_LABELS = frozenset({"new_individual", "new_whale"})
NEW_INDIVIDUAL = "new_individual"


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() == "" or value is pd.NA


def clean_identity(value: Any) -> Optional[str]:
    """Identity as a string, or None for missing and unknown labels."""
    if is_missing(value):
        return None
    text = str(value).strip()
    return None if text in UNKNOWN_LABELS else text


def clean_text(value: Any) -> Optional[str]:
    return None if is_missing(value) else str(value).strip()


def parse_bbox(value: Any) -> Optional[list]:
    """Accept [x, y, w, h] as a list, a JSON/Python list string, or 'x y w h'; None if missing."""
    if is_missing(value):
        return None
    if isinstance(value, str):
        text = value.strip()
        parsed = json.loads(text) if text.startswith("[") else [float(v) for v in text.replace(",", " ").split()]
    else:
        parsed = list(value)
    if len(parsed) != 4:
        raise ValueError(f"bbox must have 4 numbers [x, y, w, h], got {value!r}")
    return [float(v) for v in parsed]


def make_table(rows: list) -> pd.DataFrame:
    """Build a table from dicts, filling absent columns with None, in the canonical column order."""
    df = pd.DataFrame(rows, columns=COLUMNS) if rows else pd.DataFrame(columns=COLUMNS)
    df = df.astype(object).where(pd.notna(df), None)
    df["image_id"] = df["image_id"].map(str)
    return df.reset_index(drop=True)


def labelled(df: pd.DataFrame) -> pd.DataFrame:
    """Rows whose identity is known (training material)."""
    return df[df["identity"].notna()]

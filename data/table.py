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


def parse_numbers(value: Any, count: int = 4) -> list:
    """'1 2 3 4', '1,2,3,4', '[1, 2, 3, 4]' or a sequence -> `count` finite floats; a ValueError
    says what is wrong (the caller names the row)."""
    if isinstance(value, str):
        text = value.strip()
        try:
            if text.startswith("["):
                items = json.loads(text)
            else:  # split on commas where there are any, so that '1,,3,4' shows its empty value
                items = [part.strip() for part in text.split(",")] if "," in text else text.split()
        except ValueError:
            raise ValueError(f"not a list of {count} numbers") from None
        if not isinstance(items, list):
            raise ValueError(f"not a list of {count} numbers")
    else:
        try:
            items = list(value)
        except TypeError:
            raise ValueError(f"not a list of {count} numbers") from None
    if not items or any(is_missing(v) for v in items):
        raise ValueError("an empty value")
    if len(items) != count:
        raise ValueError(f"{len(items)} value{'s' if len(items) != 1 else ''}, not {count}")
    try:
        numbers = [float(v) for v in items]
    except (TypeError, ValueError):
        raise ValueError("not numbers") from None
    if not all(math.isfinite(v) for v in numbers):
        raise ValueError("not finite numbers")
    return numbers


def bbox_problem(box: list) -> Optional[str]:
    """Why [x, y, w, h] cannot be a crop, or None. Boxes that reach past the image border are fine
    (the loader clips them); whether a box overlaps its image at all is checked where the image
    size is known (data/validate.py)."""
    _, _, w, h = box
    if w < 0 or h < 0:
        return "inverted: negative width or height"
    if w == 0 or h == 0:
        return "zero width or height"
    return None


def parse_bbox(value: Any) -> Optional[list]:
    """Accept [x, y, w, h] as a list, a JSON/Python list string, or 'x y w h'; None if missing.
    A ValueError says what is wrong with any other value."""
    if is_missing(value):
        return None
    box = parse_numbers(value)
    problem = bbox_problem(box)
    if problem:
        raise ValueError(problem)
    return box


def make_table(rows: list) -> pd.DataFrame:
    """Build a table from dicts, filling absent columns with None, in the canonical column order."""
    df = pd.DataFrame(rows, columns=COLUMNS) if rows else pd.DataFrame(columns=COLUMNS)
    df = df.astype(object).where(pd.notna(df), None)
    df["image_id"] = df["image_id"].map(str)
    return df.reset_index(drop=True)


def labelled(df: pd.DataFrame) -> pd.DataFrame:
    """Rows whose identity is known (training material)."""
    return df[df["identity"].notna()]

"""Image grids of queries and their top matches, framed green (correct) or red (wrong)."""
from __future__ import annotations

import base64
import io
from typing import List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from data.table import is_missing

GREEN = (40, 180, 60)
RED = (220, 40, 40)
GREY = (128, 128, 128)
# The same verdicts as HTML colours, for the report's captions.
CORRECT, WRONG, NEUTRAL = "#28b43c", "#dc2828", "#a0a0a0"


def framed(image: np.ndarray, colour: Sequence[int], width: int = 3) -> np.ndarray:
    out = image.copy()
    out[:width], out[-width:], out[:, :width], out[:, -width:] = colour, colour, colour, colour
    return out


def match_grid(
    queries: List[np.ndarray],
    matches: List[List[np.ndarray]],
    correct: List[List[Optional[bool]]],
) -> torch.Tensor:
    """One row per query: the query (grey frame) then its matches; returns (3, H, W) uint8."""
    # Imported here, not at the top: torchvision pulls in torch._dynamo (slow to import), and eval.py's report,
    # which uses this module's other functions, draws no grid (training's validation does).
    from torchvision.utils import make_grid

    columns = 1 + max((len(m) for m in matches), default=0)
    blank = np.zeros_like(queries[0])
    tiles = []
    for query, row, flags in zip(queries, matches, correct):
        tiles.append(framed(query, GREY))
        for image, ok in zip(row, flags):
            tiles.append(framed(image, GREEN if ok else RED))
        tiles.extend([blank] * (columns - 1 - len(row)))
    batch = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2)
    return make_grid(batch, nrow=columns, padding=2)


def jpeg_data_uri(image: np.ndarray, longest: Optional[int] = None, quality: int = 75) -> str:
    """A base64 JPEG data URI of the image (shrunk to `longest` px on its longer side if given)."""
    picture = Image.fromarray(image)
    if longest is not None:
        picture.thumbnail((longest, longest))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def truth_caption(truth, gallery_ids: set) -> str:
    """A query's true identity as captions show it: the identity, `X (new)` for a labelled query whose
    individual the database lacks, `unknown` for a query without a label."""
    if is_missing(truth):
        return "unknown"
    return str(truth) if truth in gallery_ids else f"{truth} (new)"

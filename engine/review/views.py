"""What the page shows: a pair's two photos with their metadata, the other photos of the candidate
individual or cluster, the scorers' probabilities and the run's current decision; photos as JPEG
bytes by image row (the only way the server hands out an image)."""
from __future__ import annotations

import io
from functools import lru_cache
from typing import Any, Dict, List

import numpy as np
from PIL import Image

from data.images import ImageLoader
from engine.review.session import ReviewSession

SIZES = {"thumb": 200, "screen": 1000, "full": 2400}  # longer side, pixels
CONTEXT = 8  # other photos shown per side
METADATA = ("dataset", "species", "orientation", "date")


def _image(session: ReviewSession, row: int) -> Dict[str, Any]:
    images = session.run.images
    out = {"id": int(row), "name": str(images["image_id"].iloc[row]),
           "meta": {k: str(images[k].iloc[row]) for k in METADATA if images[k].iloc[row]}}
    if images["identity"].iloc[row]:
        out["identity"] = str(images["identity"].iloc[row])
    return out


def _others(rows: np.ndarray, but: int) -> List[int]:
    return [int(r) for r in rows if r != but][:CONTEXT]


def pair_view(session: ReviewSession, pair: int) -> Dict[str, Any]:
    """The JSON the page renders for `pair`."""
    data, state = session.run.data, session.state
    a, b = int(data.pair_a[pair]), int(data.pair_b[pair])
    dataset = str(state.pair_dataset[pair])
    view: Dict[str, Any] = {"pair": int(pair), "task": session.run.task, "dataset": dataset,
                            "probability": round(float(data.pair_p[pair]), 4),
                            "threshold": round(float(session.thresholds[dataset]), 4),
                            "left": _image(session, a), "right": _image(session, b)}
    scores = data.pair_scores[pair] if data.pair_scores.shape[1] else []
    view["scorers"] = [{"name": n, "probability": round(float(s), 4)}
                       for n, s in zip(data.settings.scorers, scores, strict=True) if np.isfinite(s)]
    identity = session.run.images["identity"].to_numpy(dtype=object)
    if session.run.task == "identify":
        same_identity = np.flatnonzero(identity == identity[b])
        view["right_context"] = {"title": f"other photos of {identity[b]}", "ids": _others(same_identity, b)}
        view["left_context"] = {"title": "", "ids": []}
        decision = state.decide(session.closure).values[int(state.query_position[a])]
        view["decision"] = f"now: {'new individual' if decision == 'new_individual' else decision}"
    else:
        labels = state.labels
        for side, row in (("left", a), ("right", b)):
            members = np.flatnonzero(labels == labels[row])
            view[f"{side}_context"] = {"title": f"its cluster ({len(members)} photos)", "ids": _others(members, row)}
        view["decision"] = "now: one cluster" if labels[a] == labels[b] else "now: two clusters"
    return view


@lru_cache(maxsize=512)
def _encoded(path: str, bbox: tuple, size: int) -> bytes:
    loader = ImageLoader(size, cache_dir=None, fit="long")
    array = loader.load(path, list(bbox) if bbox else None)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=88)
    return buffer.getvalue()


def image_bytes(session: ReviewSession, row: int, size: str) -> bytes:
    """JPEG of image `row` (cropped to its box, if it has one) with its longer side at most SIZES[size]."""
    images = session.run.images
    bbox = images["bbox"].iloc[row]
    return _encoded(str(images["path"].iloc[row]), tuple(bbox) if bbox else (), SIZES[size])

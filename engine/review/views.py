"""What the page shows: a pair's two photos with their metadata, the other photos of the candidate
individual or cluster, the scorers' probabilities and the run's current decision; photos as JPEG
bytes by image row (the only way the server hands out an image); and where the run re-scored
pairs with a keypoint matcher, the pair's correspondences drawn by that matcher (built from the
run's config.yaml, its keypoints and matches read from the run's caches where they are)."""
from __future__ import annotations

import io
import threading
from functools import lru_cache
from typing import Any, Dict, List, Optional

import numpy as np
from PIL import Image

from core.config import load_config
from core.errors import UserError
from core.schema import EvalConfig
from data.images import ImageLoader
from engine.review.run import ReviewRun
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


def pair_view(session: ReviewSession, pair: int, matches: bool = False) -> Dict[str, Any]:
    """The JSON the page renders for `pair` (`matches`: the run's matcher can draw it)."""
    data, state = session.run.data, session.state
    a, b = int(data.pair_a[pair]), int(data.pair_b[pair])
    dataset = str(state.pair_dataset[pair])
    view: Dict[str, Any] = {"pair": int(pair), "task": session.run.task, "dataset": dataset,
                            "probability": round(session.shown(dataset, float(data.pair_p[pair])), 4),
                            "threshold": round(session.shown(dataset, session.thresholds[dataset]), 4),
                            # the run's own probability, where the answers re-calibrated the one shown
                            "model_probability": (round(float(data.pair_p[pair]), 4)
                                                  if dataset in session.calibrations else None),
                            "left": _image(session, a), "right": _image(session, b)}
    scores = data.pair_scores[pair] if data.pair_scores.shape[1] else []
    view["matches"] = matches
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
    return _jpeg(array)


def image_bytes(session: ReviewSession, row: int, size: str) -> bytes:
    """JPEG of image `row` (cropped to its box, if it has one) with its longer side at most SIZES[size]."""
    images = session.run.images
    bbox = images["bbox"].iloc[row]
    return _encoded(str(images["path"].iloc[row]), tuple(bbox) if bbox else (), SIZES[size])


def _jpeg(array: np.ndarray, quality: int = 88) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


class MatchDrawer:
    """The run's keypoint matcher, built on first use from its config.yaml (None: the run had none)."""

    def __init__(self, run: ReviewRun):
        self.run = run
        self.lock = threading.Lock()
        self.scorer = None
        self.cfg: Optional[EvalConfig] = None
        path = run.folder / "config.yaml"
        try:
            cfg = load_config(EvalConfig, path) if path.is_file() else None
        except UserError:
            cfg = None  # a config this version cannot read: the page goes without matches
        if cfg is not None and cfg.rerank.matcher != "none":
            self.cfg = cfg

    @property
    def available(self) -> bool:
        return self.cfg is not None

    def _built(self):
        if self.scorer is None:
            from engine.matching.scorer import build_matcher_scorer

            images = self.run.images
            rows = images.assign(**{c: images[c].replace("", None) for c in ("identity", "species", "orientation", "date")})
            self.scorer = build_matcher_scorer(self.cfg, rows)
        return self.scorer

    def draw(self, a: int, b: int, height: int = 360) -> bytes:
        from engine.matching.drawing import draw_matches

        with self.lock:
            pairs = self._built().pairs
            record = pairs.records(np.array([a]), np.array([b]))[0]
            points0, points1 = pairs.keypoints(a)[record.first], pairs.keypoints(b)[record.second]
            picture = draw_matches(pairs.store.image(a), pairs.store.image(b), points0, points1, record.inlier, height)
        return _jpeg(picture)


def matches_bytes(drawer: MatchDrawer, session: ReviewSession, pair: int) -> bytes:
    """JPEG of the pair's keypoint correspondences (green: geometric inliers), by the run's matcher."""
    data = session.run.data
    return drawer.draw(int(data.pair_a[pair]), int(data.pair_b[pair]))

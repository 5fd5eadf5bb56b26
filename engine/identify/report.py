"""report.html: one self-contained page a person can open anywhere.

Inline CSS, histograms drawn as inline SVG, thumbnails embedded as small base64 JPEGs: no
external file, script or plotting library. Sections: run summary, thresholds, per-dataset
metrics (tuned and hindsight), retrieval metrics, histograms of the best score of known and
unknown queries with the thresholds drawn, and a grid of queries with their top-5 identities
(frame green when correct, red when wrong, grey when the query's identity is not known; its caption
then says "true: unknown").
"""
from __future__ import annotations

import html
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from core.files import atomic_write_text
from core.schema import DataConfig, EvalConfig
from data.dataset import ReIDDataset
from data.images import ImageLoader
from data.table import NEW_INDIVIDUAL
from engine.identify.report_rerank import rerank_section
from engine.outputs.html import (
    CSS,
    THUMBNAIL,
    fmt,
    models_row,
    review_section,
    short_model_names,
    shortened,
    svg_histogram,
    table,
    thumbnail_uri,
    tile,
)
from engine.scoring.calibration import Calibrator
from engine.visual import CORRECT, NEUTRAL, WRONG, truth_caption

GRID_QUERIES = 20
TOP = 5
QUANTILES = (0.1, 0.5, 0.9)
KNOWN_COLOUR, UNKNOWN_COLOUR, ALL_COLOUR = "#2b7bb9", "#e07b39", "#7a7a7a"


def _threshold_of(threshold: Dict[str, Any], dataset: str) -> float:
    """A dataset's threshold in a threshold record as metrics.json and manifest.json hold it."""
    return float(threshold.get("per_dataset", {}).get(dataset, threshold.get("global", math.nan)))


def _histograms(query: pd.DataFrame, gallery_ids: set, ev, metrics: Optional[dict]) -> str:
    datasets = query["dataset"].to_numpy(dtype=object)
    truth = query["identity"].to_numpy(dtype=object)
    labelled = metrics is not None
    known = pd.Series(truth, dtype=object).isin(gallery_ids).to_numpy()
    hindsight = (metrics or {}).get("hindsight", {}).get("threshold")
    blocks = []
    for name in sorted(set(datasets.tolist())):
        rows = datasets == name
        scores = ev.best_scores[rows]
        if labelled:
            series = [("known queries", scores[known[rows]], KNOWN_COLOUR),
                      ("new individuals", scores[~known[rows]], UNKNOWN_COLOUR)]
        else:
            series = [("all queries (labels unknown)", scores, ALL_COLOUR)]
        lines = [("tuned threshold" if ev.tuning is not None else "threshold", _threshold_of(ev.threshold.to_dict(), name), "#222")]
        if hindsight:
            lines.append(("hindsight", _threshold_of(hindsight, name), "#b02"))
        blocks.append(f'<div class="hist">{svg_histogram(series, lines, f"{name}: best score per query")}</div>')
        if ev.tuning is not None:
            in_set = ev.tuning.datasets == name
            val = ev.tuning.best_scores[in_set]
            val_known = ev.tuning.known[in_set]
            series = [("held-out known", val[val_known], KNOWN_COLOUR), ("held-out new", val[~val_known], UNKNOWN_COLOUR)]
            blocks.append(f'<div class="hist">{svg_histogram(series, lines[:1], f"{name}: tuning split (database)")}</div>')
    return "".join(blocks)


def _best_images(ev, gallery: pd.DataFrame) -> Dict[Tuple[int, str], int]:
    """(query, identity) -> gallery row of that identity's best retrieved image (first model's ranking)."""
    best: Dict[Tuple[int, str], int] = {}
    if not ev.rankings:
        return best
    ranking = next(iter(ev.rankings.values()))
    labels = ranking.labels(gallery["identity"].to_numpy(dtype=object))
    for q in range(labels.shape[0]):
        for identity, row in zip(labels[q], ranking.indices[q], strict=True):
            if identity is not None and row >= 0:
                best.setdefault((q, identity), int(row))
    return best


def _grid(rows: pd.DataFrame, gallery: pd.DataFrame, query: pd.DataFrame, ev, data: DataConfig,
          gallery_ids: set, names: Dict[str, str]) -> str:
    dataset = ReIDDataset(rows, ImageLoader(THUMBNAIL, None, data.crop_to_bbox, data.bbox_padding),
                          transform=lambda image: image, orientation_rules=data.orientation_rules)
    first_image = {identity: i for i, identity in reversed(list(enumerate(gallery["identity"])))}
    best = _best_images(ev, gallery)
    n_gallery = len(gallery)
    picks = np.unique(np.linspace(0, len(query) - 1, num=min(GRID_QUERIES, len(query))).round().astype(int))
    out: List[str] = []
    for q in picks:
        truth = query["identity"].iloc[q]
        caption = (f"<b>{html.escape(str(query['image_id'].iloc[q]))}</b><br>true: {html.escape(truth_caption(truth, gallery_ids))}"
                   f"<br>pred: {html.escape(str(ev.decided[q]))}")
        tiles = [tile(thumbnail_uri(dataset.load_image(n_gallery + q)), caption, "#444", "query"), '<div class="sep"></div>']
        for identity, score in ev.candidates[q][:TOP]:
            row = best.get((q, identity), first_image.get(identity))
            if row is None:
                continue
            colour = NEUTRAL if truth is None else (CORRECT if identity == truth else WRONG)
            raw = _raw_scores(ev, q, identity, names)
            tiles.append(tile(thumbnail_uri(dataset.load_image(row)),
                               f"{html.escape(str(identity))}<br>{score:.3f}<br><small>{raw}</small>", colour))
        out.append(f'<div class="row">{"".join(tiles)}</div>')
    return "".join(out)


def _raw_scores(ev, q: int, identity: str, names: Dict[str, str]) -> str:
    """Each scorer's raw score for (query q, identity), '-' where it did not list the identity."""
    parts = []
    for name, candidates in ev.raw.items():
        found = dict(candidates[q]).get(identity)
        parts.append(f"{html.escape(shortened(name, names))}: {'-' if found is None else f'{found:.3f}'}")
    return "raw " + "; ".join(parts)


def _scorers_section(ev, names: Dict[str, str]) -> str:
    """Per scorer: kind, weight, and what its calibrator makes of the queries' best raw scores."""
    rows = []
    for name, info in ev.scorers.items():
        best_raw = np.array([c[0][1] for c in ev.raw[name] if c], dtype=np.float64)
        calibrator = Calibrator.from_dict(info.calibrator)
        quantiles = np.quantile(best_raw, QUANTILES) if len(best_raw) else np.full(len(QUANTILES), np.nan)
        mapped = calibrator(quantiles) if len(best_raw) else quantiles
        rows.append([shortened(name, names), info.kind, info.stage, info.weight, info.calibrator["method"],
                     " / ".join(f"{r:.3f} -> {c:.3f}" for r, c in zip(quantiles, mapped, strict=True))])
    return (table(["scorer", "kind", "stage", "weight", "calibration",
                    "best raw score -> calibrated (10th / 50th / 90th percentile of queries)"], rows)
            + '<p class="note">Calibrations are strictly increasing, fitted on labelled database pairs; the '
              "threshold is tuned and applied on the soft vote of calibrated scores.</p>")


def _metrics_section(metrics: Optional[dict], names: Dict[str, str]) -> str:
    if metrics is None:
        return '<p class="note">The query images carry no identities, so no metrics can be computed.</p>'
    tuned, hindsight = metrics["tuned"], metrics.get("hindsight", {})
    rows = []
    for name in sorted(tuned["per_dataset"]):
        t, h = tuned["per_dataset"][name], hindsight.get("per_dataset", {}).get(name, {})
        rows.append([name, t["queries"], t["BAKS"], t["BAUS"], t["score"], h.get("BAKS"), h.get("BAUS"), h.get("score")])
    rows.append(["all (mean over datasets)", metrics["queries"], tuned["BAKS"], tuned["BAUS"], tuned["score"],
                 hindsight.get("BAKS"), hindsight.get("BAUS"), hindsight.get("score")])
    header = ["dataset", "queries", "BAKS", "BAUS", "score", "BAKS (hindsight)", "BAUS (hindsight)", "score (hindsight)"]
    retrieval = [[shortened(name, names), m.get("rank1"), m.get("rank5"), m.get("mAP")] for name, m in metrics["retrieval"].items()]
    return (table(header, rows)
            + f'<p class="note">score = AnimalCLEF 2025 (per dataset sqrt(BAKS x BAUS), then the mean). MAP@5 with '
              f'the tuned threshold: {fmt(tuned.get("MAP@5"))}. <b>Hindsight</b>: '
              f'{html.escape(hindsight.get("note", ""))}.</p>'
            + "<h2>Retrieval</h2>" + table(["model", "CMC rank-1", "CMC rank-5", "mAP"], retrieval)
            + '<p class="note">Known queries only. Per model: image-level ranking; ensemble: identity ranking '
              "after calibration and soft voting.</p>")


def render_report(*, cfg: EvalConfig, gallery: pd.DataFrame, query: pd.DataFrame, evaluation, metrics: Optional[dict],
                  rows: pd.DataFrame, matcher=None) -> str:
    """The page; `matcher` (a re-ranking MatcherScorer) adds the re-ranking section."""
    ev = evaluation
    gallery_ids = set(gallery["identity"])
    names = short_model_names(cfg.models)
    tuned = ev.threshold.threshold
    threshold_rows = [["global", tuned.overall]] + [[d, t] for d, t in sorted(tuned.per_dataset.items())]
    summary = table(["", ""], [
        models_row(cfg.models, names), ["data", f"{cfg.data.format} {cfg.data.root}".strip()],
        *([["query photos (unlabelled)", cfg.data.query_root]] if cfg.data.query_root else []),
        ["database images (labelled)", len(gallery)], ["query images", len(query)],
        ["test-time augmentation", ", ".join(cfg.tta)], ["calibration", cfg.calibration],
        ["predicted new individuals", int(sum(d == NEW_INDIVIDUAL for d in ev.decided))],
        ["written", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")],
    ])
    return "".join([
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>reidzoo evaluation</title>",
        f"<style>{CSS}</style></head><body><h1>reidzoo evaluation</h1>", summary,
        "<h2>Thresholds</h2>", table(["dataset", "threshold"], threshold_rows),
        f'<p class="note">{html.escape(ev.threshold.source)}. A query whose best score is below '
        "its dataset's threshold is predicted as a new individual.</p>",
        "<h2>Metrics</h2>", _metrics_section(metrics, names),
        "<h2>Scorers</h2>", _scorers_section(ev, names),
        "<h2>Best score per query</h2>", _histograms(query, gallery_ids, ev, metrics),
        f"<h2>Queries and their top-{TOP} identities</h2>",
        '<p class="note">Frames: green = correct identity, red = wrong, grey = query identity unknown.</p>',
        _grid(rows, gallery, query, ev, cfg.data, gallery_ids, names), rerank_section(matcher, ev, gallery, query),
        review_section(cfg.output_dir, cfg.review), "</body></html>",
    ])


def write_report(path: Path, **kwargs) -> Path:
    path = Path(path)
    atomic_write_text(path, render_report(**kwargs))
    return path

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
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from core.files import atomic_write_text
from core.schema import EvalConfig
from data.dataset import ReIDDataset
from data.images import ImageLoader
from data.table import NEW_INDIVIDUAL
from engine.evaluation.calibration import Calibrator
from engine.evaluation.report_rerank import rerank_section
from engine.visual import CORRECT, NEUTRAL, WRONG, jpeg_data_uri, truth_caption

THUMBNAIL = 96  # px, longer side
GRID_QUERIES = 20
TOP = 5
QUANTILES = (0.1, 0.5, 0.9)
BINS = 30
JPEG_QUALITY = 75
KNOWN_COLOUR, UNKNOWN_COLOUR, ALL_COLOUR = "#2b7bb9", "#e07b39", "#7a7a7a"

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:4px 10px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.note{color:#666;font-size:.9em}.hist{display:inline-block;margin:0 16px 16px 0;vertical-align:top}
.row{display:flex;gap:6px;align-items:flex-start;margin-bottom:10px}
.tile{width:104px;font-size:11px;text-align:center;word-break:break-all}
.tile img{border:4px solid;display:block;margin:0 auto 2px auto;max-width:96px;max-height:96px}
.query img{border-color:#444}.sep{width:14px}
"""


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def svg_histogram(series: Sequence[Tuple[str, np.ndarray, str]], lines: Sequence[Tuple[str, float, str]],
                  title: str, width: int = 440, height: int = 210, bins: int = BINS) -> str:
    """Overlaid histograms of `series` (label, values, colour) with vertical `lines` (label, x, colour)."""
    values = [np.asarray(v, dtype=float)[np.isfinite(v)] for _, v, _ in series]
    xs = np.concatenate(values + [np.array([x for _, x, _ in lines if math.isfinite(x)])])
    left, right, top, bottom = 40, 24, 24, 64
    plot_w, plot_h = width - left - right, height - top - bottom
    if len(xs) == 0:
        return f'<svg width="{width}" height="40"><text x="4" y="20">{html.escape(title)}: no scores</text></svg>'
    lo, hi = float(xs.min()), float(xs.max())
    pad = (hi - lo) * 0.03 or 0.05
    lo, hi = lo - pad, hi + pad
    edges = np.linspace(lo, hi, bins + 1)
    counts = [np.histogram(v, bins=edges)[0] for v in values]
    peak = max(1, max((int(c.max()) for c in counts if len(c)), default=1))

    def x_of(v: float) -> float:
        return left + (v - lo) / (hi - lo) * plot_w

    def y_of(c: float) -> float:
        return top + plot_h - c / peak * plot_h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11">',
             f'<text x="{left}" y="14" font-weight="bold">{html.escape(title)}</text>']
    bar_w = plot_w / bins
    for (_, _, colour), c in zip(series, counts, strict=True):
        for i, count in enumerate(c):
            if count:
                parts.append(f'<rect x="{x_of(edges[i]):.1f}" y="{y_of(count):.1f}" width="{bar_w:.1f}" '
                             f'height="{plot_h - (y_of(count) - top):.1f}" fill="{colour}" fill-opacity="0.55"/>')
    axis_y = top + plot_h
    parts.append(f'<line x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}" stroke="#333"/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{axis_y}" stroke="#333"/>')
    digits = max(2, math.ceil(-math.log10(hi - lo)) + 1)  # enough to tell the ticks apart
    for tick in np.linspace(lo, hi, 5):
        parts.append(f'<text x="{x_of(tick):.1f}" y="{axis_y + 13}" text-anchor="middle">{tick:.{digits}f}</text>')
    parts.append(f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{peak}</text>')
    parts.append(f'<text x="{left - 4}" y="{axis_y}" text-anchor="end">0</text>')
    for i, (_, x, colour) in enumerate(lines):
        if math.isfinite(x):
            parts.append(f'<line x1="{x_of(x):.1f}" y1="{top}" x2="{x_of(x):.1f}" y2="{axis_y}" stroke="{colour}" '
                         f'stroke-width="2" stroke-dasharray="{"5,3" if i else "none"}"/>')
    legend = [(f"{label} ({len(v)})", colour, False) for (label, _, colour), v in zip(series, values, strict=True)]
    legend += [(f"{label} = {x:.3f}", colour, True) for label, x, colour in lines if math.isfinite(x)]
    x, y = left, axis_y + 30
    for text, colour, is_line in legend:
        if x > left and x + 22 + 6 * len(text) > width:
            x, y = left, y + 16
        mark = (f'<line x1="{x}" y1="{y - 4}" x2="{x + 12}" y2="{y - 4}" stroke="{colour}" stroke-width="2"/>' if is_line
                else f'<rect x="{x}" y="{y - 9}" width="12" height="9" fill="{colour}" fill-opacity="0.55"/>')
        parts.append(mark + f'<text x="{x + 15}" y="{y}">{html.escape(text)}</text>')
        x += 22 + 6 * len(text)
    parts.append("</svg>")
    return "".join(parts)


def thumbnail_uri(image: np.ndarray) -> str:
    """A base64 JPEG data URI of the image shrunk to THUMBNAIL px on its longer side."""
    return jpeg_data_uri(image, THUMBNAIL, JPEG_QUALITY)


def _tile(uri: str, caption: str, colour: str, extra_class: str = "") -> str:
    return (f'<div class="tile {extra_class}"><img src="{uri}" style="border-color:{colour}" alt="">'
            f"{caption}</div>")


def _threshold_of(threshold: Dict[str, Any], dataset: str) -> float:
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
        lines = [("tuned threshold" if ev.tuning is not None else "threshold", _threshold_of(ev.threshold, name), "#222")]
        if hindsight:
            lines.append(("hindsight", _threshold_of(hindsight, name), "#b02"))
        blocks.append(f'<div class="hist">{svg_histogram(series, lines, f"{name}: best score per query")}</div>')
        if ev.tuning is not None:
            in_set = ev.tuning["datasets"] == name
            val = ev.tuning["best_scores"][in_set]
            val_known = ev.tuning["known"][in_set]
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


def _grid(rows: pd.DataFrame, gallery: pd.DataFrame, query: pd.DataFrame, ev, cfg: EvalConfig,
          gallery_ids: set) -> str:
    dataset = ReIDDataset(rows, ImageLoader(THUMBNAIL, None, cfg.data.crop_to_bbox, cfg.data.bbox_padding),
                          transform=lambda image: image, orientation_rules=cfg.data.orientation_rules)
    first_image = {identity: i for i, identity in reversed(list(enumerate(gallery["identity"])))}
    best = _best_images(ev, gallery)
    n_gallery = len(gallery)
    picks = np.unique(np.linspace(0, len(query) - 1, num=min(GRID_QUERIES, len(query))).round().astype(int))
    out: List[str] = []
    for q in picks:
        truth = query["identity"].iloc[q]
        caption = (f"<b>{html.escape(str(query['image_id'].iloc[q]))}</b><br>true: {html.escape(truth_caption(truth, gallery_ids))}"
                   f"<br>pred: {html.escape(str(ev.decided[q]))}")
        tiles = [_tile(thumbnail_uri(dataset.load_image(n_gallery + q)), caption, "#444", "query"), '<div class="sep"></div>']
        for identity, score in ev.candidates[q][:TOP]:
            row = best.get((q, identity), first_image.get(identity))
            if row is None:
                continue
            colour = NEUTRAL if truth is None else (CORRECT if identity == truth else WRONG)
            raw = _raw_scores(ev, q, identity)
            tiles.append(_tile(thumbnail_uri(dataset.load_image(row)),
                               f"{html.escape(str(identity))}<br>{score:.3f}<br><small>{raw}</small>", colour))
        out.append(f'<div class="row">{"".join(tiles)}</div>')
    return "".join(out)


def _raw_scores(ev, q: int, identity: str) -> str:
    """Each scorer's raw score for (query q, identity), '-' where it did not list the identity."""
    parts = []
    for name, candidates in ev.raw.items():
        found = dict(candidates[q]).get(identity)
        parts.append(f"{html.escape(name)}: {'-' if found is None else f'{found:.3f}'}")
    return "raw " + "; ".join(parts)


def _scorers_section(ev) -> str:
    """Per scorer: kind, weight, and what its calibrator makes of the queries' best raw scores."""
    rows = []
    for name, info in ev.scorers.items():
        best_raw = np.array([c[0][1] for c in ev.raw[name] if c], dtype=np.float64)
        calibrator = Calibrator.from_dict(info["calibrator"])
        quantiles = np.quantile(best_raw, QUANTILES) if len(best_raw) else np.full(len(QUANTILES), np.nan)
        mapped = calibrator(quantiles) if len(best_raw) else quantiles
        rows.append([name, info["kind"], info["stage"], info["weight"], info["calibrator"]["method"],
                     " / ".join(f"{r:.3f} -> {c:.3f}" for r, c in zip(quantiles, mapped, strict=True))])
    return (_table(["scorer", "kind", "stage", "weight", "calibration",
                    "best raw score -> calibrated (10th / 50th / 90th percentile of queries)"], rows)
            + '<p class="note">Calibrations are strictly increasing, fitted on labelled database pairs; the '
              "threshold is tuned and applied on the soft vote of calibrated scores.</p>")


def _metrics_section(metrics: Optional[dict]) -> str:
    if metrics is None:
        return '<p class="note">The query images carry no identities, so no metrics can be computed.</p>'
    tuned, hindsight = metrics["tuned"], metrics.get("hindsight", {})
    rows = []
    names = sorted(tuned["per_dataset"])
    for name in names:
        t, h = tuned["per_dataset"][name], hindsight.get("per_dataset", {}).get(name, {})
        rows.append([name, t["queries"], t["BAKS"], t["BAUS"], t["score"], h.get("BAKS"), h.get("BAUS"), h.get("score")])
    rows.append(["all (mean over datasets)", metrics["queries"], tuned["BAKS"], tuned["BAUS"], tuned["score"],
                 hindsight.get("BAKS"), hindsight.get("BAUS"), hindsight.get("score")])
    header = ["dataset", "queries", "BAKS", "BAUS", "score", "BAKS (hindsight)", "BAUS (hindsight)", "score (hindsight)"]
    retrieval = [[name, m.get("rank1"), m.get("rank5"), m.get("mAP")] for name, m in metrics["retrieval"].items()]
    return (_table(header, rows)
            + f'<p class="note">score = AnimalCLEF 2025 (per dataset sqrt(BAKS x BAUS), then the mean). MAP@5 with '
              f'the tuned threshold: {_fmt(tuned.get("MAP@5"))}. <b>Hindsight</b>: '
              f'{html.escape(hindsight.get("note", ""))}.</p>'
            + "<h2>Retrieval</h2>" + _table(["model", "CMC rank-1", "CMC rank-5", "mAP"], retrieval)
            + '<p class="note">Known queries only. Per model: image-level ranking; ensemble: identity ranking '
              "after calibration and soft voting.</p>")


def render_report(*, cfg: EvalConfig, gallery: pd.DataFrame, query: pd.DataFrame, evaluation, metrics: Optional[dict],
                  rows: pd.DataFrame, matcher=None) -> str:
    """The page; `matcher` (a re-ranking MatcherScorer) adds the re-ranking section."""
    ev = evaluation
    gallery_ids = set(gallery["identity"])
    threshold_rows = [["global", ev.threshold.get("global")]] + [[d, t] for d, t in sorted(ev.threshold.get("per_dataset", {}).items())]
    summary = _table(["", ""], [
        ["models", ", ".join(cfg.models)], ["data", f"{cfg.data.format} {cfg.data.root}".strip()],
        *([["query photos (unlabelled)", cfg.data.query_root]] if cfg.data.query_root else []),
        ["database images (labelled)", len(gallery)], ["query images", len(query)],
        ["test-time augmentation", ", ".join(cfg.tta)], ["calibration", cfg.calibration],
        ["predicted new individuals", int(sum(d == NEW_INDIVIDUAL for d in ev.decided))],
        ["written", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")],
    ])
    return "".join([
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>reidzoo evaluation</title>",
        f"<style>{CSS}</style></head><body><h1>reidzoo evaluation</h1>", summary,
        "<h2>Thresholds</h2>", _table(["dataset", "threshold"], threshold_rows),
        f'<p class="note">{html.escape(str(ev.threshold.get("source", "")))}. A query whose best score is below '
        "its dataset's threshold is predicted as a new individual.</p>",
        "<h2>Metrics</h2>", _metrics_section(metrics),
        "<h2>Scorers</h2>", _scorers_section(ev),
        "<h2>Best score per query</h2>", _histograms(query, gallery_ids, ev, metrics),
        f"<h2>Queries and their top-{TOP} identities</h2>",
        '<p class="note">Frames: green = correct identity, red = wrong, grey = query identity unknown.</p>',
        _grid(rows, gallery, query, ev, cfg, gallery_ids), rerank_section(matcher, ev, gallery, query),
        "</body></html>",
    ])


def write_report(path: Path, **kwargs) -> Path:
    path = Path(path)
    atomic_write_text(path, render_report(**kwargs))
    return path

"""report.html of eval.py task=cluster: one self-contained page (inline SVG, base64 thumbnails).

Sections: run summary and thresholds (who set each, the validation curve of each dataset), population
estimate per dataset (clusters, their 90 % interval, and individuals where the test images carry labels), a
cluster-size histogram per dataset, sample clusters as image grids, and, with labels, the largest
wrong merges (clusters holding several individuals) and splits (individuals spread over clusters).
"""
from __future__ import annotations

import html
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional

import numpy as np
import pandas as pd

from core.files import atomic_write_text
from core.schema import DataConfig, EvalConfig
from data.dataset import ReIDDataset
from data.images import ImageLoader
from engine.cluster.population import PopulationEstimate
from engine.cluster.tuning import ClusterThresholds
from engine.outputs.html import (
    CSS,
    THUMBNAIL,
    models_row,
    review_section,
    short_model_names,
    svg_histogram,
    table,
    thumbnail_uri,
)
from engine.visual import CORRECT, NEUTRAL, WRONG

SAMPLE_CLUSTERS = 8  # per dataset: the largest ones
WORST = 5  # wrong merges and splits shown per dataset
PER_ROW = 10  # images per grid row


def _tile(uri: str, caption: str, colour: str) -> str:
    return (f'<div class="tile"><img src="{uri}" style="border-color:{colour}" alt="">{caption}</div>')


class _Thumbs:
    def __init__(self, rows: pd.DataFrame, data: DataConfig, n_gallery: int):
        self.dataset = ReIDDataset(rows, ImageLoader(THUMBNAIL, None, data.crop_to_bbox, data.bbox_padding),
                                   transform=lambda image: image, orientation_rules=data.orientation_rules)
        self.n_gallery = n_gallery

    def query(self, q: int) -> str:
        return thumbnail_uri(self.dataset.load_image(self.n_gallery + q))


def _row(thumbs: _Thumbs, positions: List[int], query: pd.DataFrame, names: np.ndarray, colour_of) -> str:
    tiles = []
    for q in positions[:PER_ROW]:
        truth = query["identity"].iloc[q]
        caption = f"{html.escape(str(query['image_id'].iloc[q]))}<br>true: {html.escape(str(truth) if truth else '?')}"
        tiles.append(_tile(thumbs.query(q), caption, colour_of(q)))
    more = f'<div class="note">+{len(positions) - PER_ROW} more</div>' if len(positions) > PER_ROW else ""
    return f'<div class="row">{"".join(tiles)}{more}</div>'


def _population(estimates: List[PopulationEstimate], metrics: Optional[dict]) -> str:
    rows = []
    for e in estimates:
        labelled = (metrics or {}).get("per_dataset", {}).get(e.dataset, {})
        rows.append([e.dataset, e.test_images, e.individuals, "" if e.low is None else f"{e.low} .. {e.high}",
                     e.joined_train_identities, e.true_individuals, labelled.get("ARI")])
    return table(["dataset", "test images", "estimated individuals (clusters)", "90 % interval",
                  "of them train identities", "true individuals", "ARI"], rows) + (
        '<p class="note">Estimated individuals: the clusters of the test images at the count\'s own threshold '
        '(the clusters written may be more or fewer). The interval: that count at the thresholds its choice could '
        'as well have been, each corrected by how far such a count landed from the truth on held-out identities or '
        'on a labelled dataset left out, in either direction (docs/clustering.md). Also in population.csv.</p>')


def _scores(metrics: Optional[dict]) -> str:
    if metrics is None:
        return '<p class="note">The test images carry no identities, so the clusters cannot be scored.</p>'
    keys = ["ARI", "AMI", "pairwise_precision", "pairwise_recall", "pairwise_F1", "bcubed_F1", "clusters", "individuals"]
    rows = [[d, *[m.get(k) for k in keys]] for d, m in sorted(metrics["per_dataset"].items())]
    rows.append(["mean over datasets", *[metrics.get(k) for k in keys[:6]], None, None])
    return table(["dataset", *keys], rows) + '<p class="note">docs/metrics.md explains each score.</p>'


def _thresholds(thresholds: ClusterThresholds) -> str:
    rows = [[d, c.threshold, c.strategy, c.why + (f" (warning: at the {c.at_end} end of the searched range)" if c.at_end else "")]
            for d, c in sorted(thresholds.choices.items())]
    out = table(["dataset", "threshold", "set by", "why"], rows) + f'<p class="note">{html.escape(thresholds.source)}</p>'
    for dataset, curve in sorted((thresholds.validation or {}).items()):
        out += (f'<div class="hist">{_curve(thresholds.grid, curve, dataset, thresholds.criterion.upper())}</div>')
    return out


def _curve(grid, curve, title: str, criterion: str, width: int = 360, height: int = 160) -> str:
    """The validation criterion against the threshold, as an inline SVG polyline; the threshold on a
    log-odds axis, so that a search widened towards 0 or 1 stays readable."""
    left, top, plot_w, plot_h = 36, 20, width - 50, height - 44
    odds = np.log(np.asarray(grid) / (1 - np.asarray(grid)))
    lo, hi = float(odds.min()), float(odds.max())
    span = (hi - lo) or 1.0
    top_value = max(max(curve), 1e-9)
    points = " ".join(f"{left + (g - lo) / span * plot_w:.1f},{top + plot_h - max(v, 0) / top_value * plot_h:.1f}"
                      for g, v in zip(odds, curve, strict=True))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11">'
            f'<text x="{left}" y="12" font-weight="bold">{html.escape(title)}: validation {criterion} by threshold</text>'
            f'<polyline points="{points}" fill="none" stroke="#2b7bb9" stroke-width="2"/>'
            f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#333"/>'
            f'<text x="{left}" y="{top + plot_h + 14}">{min(grid):.3g}</text>'
            f'<text x="{left + plot_w}" y="{top + plot_h + 14}" text-anchor="end">{max(grid):.3g}</text>'
            f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{top_value:.2f}</text></svg>')


def _dataset_section(thumbs: _Thumbs, query: pd.DataFrame, names: np.ndarray, dataset: str, labelled: bool) -> str:
    at = np.flatnonzero((query["dataset"] == dataset).to_numpy())
    frame = pd.DataFrame({"q": at, "cluster": names[at], "truth": query["identity"].to_numpy(dtype=object)[at]})
    sizes = frame.groupby("cluster").size().sort_values(ascending=False, kind="stable")
    parts = [f"<h3>{html.escape(dataset)}</h3>",
             f'<div class="hist">{svg_histogram([("clusters", sizes.to_numpy(dtype=float), "#2b7bb9")], [], f"{dataset}: cluster sizes (images)")}</div>']
    majority = frame.dropna(subset=["truth"]).groupby("cluster")["truth"].agg(lambda s: s.value_counts().index[0]).to_dict()

    def colour(q: int) -> str:
        truth = query["identity"].iloc[q]
        if truth is None or names[q] not in majority:
            return NEUTRAL
        return CORRECT if truth == majority[names[q]] else WRONG

    parts.append("<p><b>Largest clusters</b> (frame green: the cluster's majority individual, red: another one)</p>")
    for cluster in sizes.index[:SAMPLE_CLUSTERS]:
        members = frame.loc[frame["cluster"] == cluster, "q"].tolist()
        parts.append(f"<p class='note'>{html.escape(str(cluster))}: {len(members)} images</p>"
                     + _row(thumbs, members, query, names, colour))
    if labelled:
        known = frame.dropna(subset=["truth"])
        mixed = known.groupby("cluster")["truth"].agg(lambda s: len(s) - s.value_counts().iloc[0])
        mixed = mixed[mixed > 0].sort_values(ascending=False, kind="stable")[:WORST]
        parts.append("<p><b>Largest wrong merges</b> (clusters holding several individuals; red: not the majority)</p>")
        for cluster, wrong in mixed.items():
            members = known.loc[known["cluster"] == cluster].sort_values("truth")["q"].tolist()
            parts.append(f"<p class='note'>{html.escape(str(cluster))}: {wrong} of {len(members)} images of other "
                         "individuals</p>" + _row(thumbs, members, query, names, colour))
        spread = known.groupby("truth")["cluster"].nunique()
        spread = spread[spread > 1].sort_values(ascending=False, kind="stable")[:WORST]
        parts.append("<p><b>Largest splits</b> (individuals spread over several clusters)</p>")
        for truth, count in spread.items():
            members = known.loc[known["truth"] == truth].sort_values("cluster")["q"].tolist()
            captioned = ", ".join(sorted(set(known.loc[known["truth"] == truth, "cluster"])))
            parts.append(f"<p class='note'>{html.escape(str(truth))}: in {count} clusters ({html.escape(captioned)})</p>"
                         + _row(thumbs, members, query, names, colour))
    return "".join(parts)


def render_cluster_report(*, cfg: EvalConfig, rows: pd.DataFrame, query: pd.DataFrame, names: np.ndarray,
                          joined: np.ndarray, metrics: Optional[dict], thresholds: ClusterThresholds,
                          population: List[PopulationEstimate]) -> str:
    thumbs = _Thumbs(rows, cfg.data, len(rows) - len(query))
    labelled = metrics is not None
    summary = table(["", ""], [
        models_row(cfg.models, short_model_names(cfg.models)), ["data", f"{cfg.data.format} {cfg.data.root} {cfg.data.query_root}".strip()],
        ["train images (anchors)", len(rows) - len(query)], ["test images (clustered)", len(query)],
        ["method", f"{cfg.cluster.method} {cfg.cluster.args or ''}".strip()],
        ["graph", f"{cfg.cluster.neighbours} nearest neighbours per image and global scorer"
                  + (f", edges re-scored by {cfg.rerank.matcher}" if cfg.rerank.matcher != "none" else "")],
        ["test images that joined a train identity", int(sum(j is not None for j in joined))],
        ["written", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")],
    ])
    sections = "".join(_dataset_section(thumbs, query, names, d, labelled) for d in sorted(set(query["dataset"])))
    return "".join([
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>reidzoo clustering</title>",
        f"<style>{CSS}</style></head><body><h1>reidzoo clustering</h1>", summary,
        "<h2>Thresholds</h2>", _thresholds(thresholds),
        "<h2>Population estimate</h2>", _population(population, metrics),
        "<h2>Scores</h2>", _scores(metrics),
        "<h2>Clusters</h2>", sections, review_section(cfg.output_dir, cfg.review), "</body></html>"])


def write_cluster_report(path: Path, **kwargs) -> Path:
    atomic_write_text(Path(path), render_cluster_report(**kwargs))
    return Path(path)


"""The HTML pieces both reports (identify, cluster) are made of: one self-contained page, inline CSS,
histograms as inline SVG and thumbnails as small base64 JPEGs, so a report opens anywhere offline."""
from __future__ import annotations

import html
import math
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from engine.scoring.cached_outputs import model_label
from engine.visual import jpeg_data_uri

THUMBNAIL = 96  # px, longer side
BINS = 30
JPEG_QUALITY = 75

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


def fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
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


def tile(uri: str, caption: str, colour: str, extra_class: str = "") -> str:
    return (f'<div class="tile {extra_class}"><img src="{uri}" style="border-color:{colour}" alt="">'
            f"{caption}</div>")


def short_model_names(specs: Sequence[str]) -> Dict[str, str]:
    """A short name for each model a report names: an export folder by its run folder's name (runs/a/export
    -> a) or its own, a zoo or timm name as it is; told apart by number where two would read the same."""
    names: Dict[str, str] = {}
    for spec in dict.fromkeys(specs):
        short = model_label(spec)
        taken = set(names.values())
        candidate, n = short, 2
        while candidate in taken:
            candidate, n = f"{short} ({n})", n + 1
        names[spec] = candidate
    return names


def shortened(text: str, names: Dict[str, str]) -> str:
    """`text` with each model spec of `names` (the longest first) replaced by its short name."""
    for spec in sorted(names, key=len, reverse=True):
        text = text.replace(spec, names[spec])
    return text


def models_row(specs: Sequence[str], names: Dict[str, str]) -> List[str]:
    """The report header's models row: each short name with its full path, once."""
    return ["models", "; ".join(names[s] if names[s] == s else f"{names[s]} = {s}" for s in dict.fromkeys(specs))]


def review_section(output_dir: str, answers: str = "") -> str:
    """The report's pointer to the review page, and whether a person's answers were applied."""
    command = f"reidzoo-review {html.escape(str(output_dir))}"
    parts = ["<h2>Review</h2><p>A person can confirm or correct the decisions that matter most, one pair of "
             f"photos at a time: <code>{command}</code> (or <code>python review.py {html.escape(str(output_dir))}</code>"
             " from a clone) opens the review page; docs/review.md.</p>"]
    if answers:
        parts.append(f"<p><b>A person's answers are applied</b> ({html.escape(answers)}): the submission and the "
                     "table hold the reviewed decisions, those a person made marked <code>decided_by = person</code>; "
                     "review.html lists them.</p>")
    return "".join(parts)

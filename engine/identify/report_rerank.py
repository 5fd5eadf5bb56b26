"""report.html's re-ranking section: for a sample of queries, the best database image before
re-ranking (the global stage's first) and after (the best image of the fused best identity), each
drawn with its keypoint correspondences and raw matcher score."""
from __future__ import annotations

import html
from typing import List

import numpy as np
import pandas as pd

from engine.matching.drawing import draw_matches
from engine.matching.scorer import counted_mask
from engine.visual import CORRECT, NEUTRAL, WRONG, jpeg_data_uri, truth_caption

SAMPLE_QUERIES = 8


def _panel(matcher, q_row: int, g_row: int, title: str, identity, truth, weights: np.ndarray) -> str:
    pairs = matcher.pairs
    record = pairs.records(np.array([q_row]), np.array([g_row]))[0]
    points0 = pairs.keypoints(q_row)[record.first]
    points1 = pairs.keypoints(g_row)[record.second]
    picture = draw_matches(pairs.store.image(q_row), pairs.store.image(g_row), points0, points1, record.inlier,
                           weights=weights)
    colour = NEUTRAL if truth is None else (CORRECT if identity == truth else WRONG)
    caption = (f"{html.escape(title)}: {html.escape(str(identity))} &middot; {len(record.first)} matches, "
               f"{int(record.inlier.sum())} inliers")
    if matcher.weightings and matcher.off != set(matcher.weightings):
        counted = counted_mask(record, matcher.cfg.score)
        caption += (f", weighted score {float((weights * counted).sum()):.1f} "
                    f"({int((counted & (weights == 0)).sum())} dropped)")
    return (f'<figure style="display:inline-block;margin:0 12px 12px 0"><img style="border:4px solid {colour}" '
            f'src="{jpeg_data_uri(picture)}"><figcaption class="note">{caption}</figcaption></figure>')


def rerank_section(matcher, ev, gallery: pd.DataFrame, query: pd.DataFrame) -> str:
    if matcher is None or ev.shortlist is None or len(query) == 0:
        return ""
    labels = gallery["identity"].to_numpy(dtype=object)
    gallery_ids = set(labels)
    n_gallery = len(gallery)
    picks = np.unique(np.linspace(0, len(query) - 1, num=min(SAMPLE_QUERIES, len(query))).round().astype(int))
    blocks: List[str] = []
    for q in picks:
        short = ev.shortlist[q][ev.shortlist[q] >= 0]
        if len(short) == 0 or not ev.candidates[q]:
            continue
        q_row, truth = n_gallery + q, query["identity"].iloc[q]
        fused_best = ev.candidates[q][0][0]
        own = short[labels[short] == fused_best]
        weights = dict(zip(short.tolist(), matcher.match_weights(labels, q_row, short), strict=True))
        after = own[0] if len(own) else short[0]
        if len(own) > 1:  # the identity's image the matcher scored highest (its weighted count of matches)
            records = matcher.pairs.records(np.full(len(own), q_row), own)
            after = own[int(np.argmax([(weights[int(g)] * counted_mask(r, matcher.cfg.score)).sum()
                                       for g, r in zip(own, records, strict=True)]))]
        shown = truth_caption(truth, gallery_ids)
        blocks.append(f"<h3>{html.escape(str(query['image_id'].iloc[q]))} (true: {html.escape(shown)})</h3>"
                      + _panel(matcher, q_row, int(short[0]), "before", labels[short[0]], truth, weights[int(short[0])])
                      + _panel(matcher, q_row, int(after), "after", labels[after], truth, weights[int(after)]))
    return ("<h2>Re-ranking</h2>"
            f'<p class="note">{html.escape(matcher.name)}: each query against the best database image before '
            "re-ranking (global stage) and after (fused vote). Green lines: geometric inliers; red: other "
            "matches; with keypoint weightings (rerank.weighting), an inlier fades to grey as its weight falls "
            "and one weighing nothing (background, a confuser) is crossed out.</p>" + "".join(blocks))

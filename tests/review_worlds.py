"""Tiny eval.py run folders for the review tests, made without a model: photos drawn with PIL, the
pairs and probabilities planted, review.npz and the eval marker written as eval.py writes them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from core.ownership import EVAL, run_marker
from engine.cluster.graph import Graph
from engine.cluster.methods import CLUSTERERS
from engine.outputs.review_file import REVIEW_FILE, ReviewData, ReviewSettings, image_frame, image_roots
from engine.outputs.submission import write_submission

COLOURS = [(200, 60, 40), (40, 140, 60), (50, 80, 200), (210, 180, 40), (140, 60, 170), (40, 170, 180)]


def _photo(path: Path, group: int, k: int) -> None:
    picture = Image.new("RGB", (160, 120), (235, 235, 225))
    draw = ImageDraw.Draw(picture)
    colour = COLOURS[group % len(COLOURS)]
    draw.ellipse((30 + 6 * k, 25, 130 - 4 * k, 95), fill=colour)
    for stripe in range(group + 1):
        draw.line((40 + 14 * stripe, 30, 50 + 14 * stripe, 90), fill=(20, 20, 20), width=3)
    picture.save(path, quality=90)


def _rows(folder: Path, identities: list, splits: list, datasets: list) -> pd.DataFrame:
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, (identity, split, dataset) in enumerate(zip(identities, splits, datasets, strict=True)):
        path = images / f"img{n:03d}.jpg"
        _photo(path, int(identity[1:]), n % 4)
        rows.append({"image_id": f"img{n:03d}", "identity": identity, "path": str(path), "split": split,
                     "dataset": dataset, "species": "testfish", "orientation": None, "date": f"2026-01-{n % 28 + 1:02d}",
                     "bbox": None})
    return pd.DataFrame(rows)


def _finish(run: Path, data: ReviewData, truth: pd.DataFrame) -> Path:
    from engine.outputs.review_file import save_review

    (run / "manifest.json").write_text(json.dumps(run_marker(EVAL)))
    save_review(run / REVIEW_FILE, data)
    truth.to_csv(run.parent / "truth.csv", index=False)
    return run


def cluster_run(folder: Path, groups: int = 4, size: int = 4, seed: int = 0) -> Path:
    """One dataset, `groups` individuals of `size` photos; the first photo of groups 0 and 1 are train
    images (anchors); the planted graph joins two individuals and splits another at threshold 0.5."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(groups), size)
    train = np.zeros(len(truth), bool)
    train[[0, size]] = True
    order = np.argsort(~train, kind="stable")  # train rows first, as eval.py orders them
    truth, train = truth[order], train[order]
    rows = _rows(folder, [f"g{t}" for t in truth], ["database" if t else "query" for t in train], ["A"] * len(truth))
    a, b = np.triu_indices(len(truth), 1)
    same = truth[a] == truth[b]
    p = np.where(same, 0.8, 0.15) + rng.normal(0, 0.03, len(a))
    p[(truth[a] == 2) & (truth[b] == 3)] = 0.62  # two individuals the model takes for one
    last = truth == groups - 1
    split_off = np.flatnonzero(last)[-1]
    p[(a == split_off) & last[b]] = 0.3  # one photo the model leaves alone
    p[(b == split_off) & last[a]] = 0.3
    keep = same | (rng.random(len(a)) < 0.5) | ((truth[a] == 2) & (truth[b] == 3))
    a, b, p = a[keep], b[keep], np.clip(p[keep], 0.01, 0.99)
    anchors = np.where(train, truth, -1)
    labels = CLUSTERERS.build("agglomerative").labels(Graph(len(truth), a, b, p), anchors, [0.5])[0]
    run = folder / "run"
    run.mkdir(parents=True)
    n_gallery = int(train.sum())
    settings = ReviewSettings("cluster", "animalclef2026", {"A": 0.5}, {"A": False}, ["embedding", "matcher"],
                              ["global", "shortlist"], "agglomerative", {}, True, image_roots(rows["path"]))
    scores = np.stack([p, np.clip(p + rng.normal(0, 0.2, len(p)), 0, 1)], axis=1)
    data = ReviewData(settings, image_frame(rows, n_gallery), a, b, p, scores, labels)
    query = rows[~train]
    names = {i: f"cluster_A_{c}" for i, c in zip(query["image_id"], labels[~train], strict=True)}
    table = rows.assign(identity=[i if t else None for i, t in zip(rows["identity"], train, strict=True)])
    write_submission(run / "submission.csv", "animalclef2026", table, names)
    return _finish(run, data, query[["image_id", "identity"]])


def identify_run(folder: Path, identities: int = 4, seed: int = 0) -> Path:
    """Two database photos per identity; one query of each, and one query of a new individual. The
    planted probabilities call one known query new and the new one known."""
    rng = np.random.default_rng(seed)
    gallery = [f"g{i}" for i in range(identities) for _ in range(2)]
    queries = [f"g{i}" for i in range(identities)] + [f"g{identities}"]
    rows = _rows(folder, gallery + queries, ["database"] * len(gallery) + ["query"] * len(queries),
                 ["A"] * (len(gallery) + len(queries)))
    n_gallery = len(gallery)
    a, b, p = [], [], []
    for q, true in enumerate(queries):
        for i in range(identities):
            a.append(n_gallery + q)
            b.append(2 * i)
            p.append(0.8 if f"g{i}" == true else 0.1 + 0.05 * rng.random())
    p = np.array(p)
    p[0] = 0.45  # query 0's own identity below the threshold: called new
    p[identities * identities + 1] = 0.7  # the new individual taken for g1
    run = folder / "run"
    run.mkdir(parents=True)
    settings = ReviewSettings("identify", "animalclef", {"A": 0.5}, {"A": True}, image_roots=image_roots(rows["path"]))
    data = ReviewData(settings, image_frame(rows, n_gallery), np.array(a), np.array(b), p, np.zeros((len(a), 0)),
                      np.full(len(rows), -1))
    decided = []
    for q in range(len(queries)):
        found = p[q * identities:(q + 1) * identities]
        decided.append(f"g{int(np.argmax(found))}" if found.max() >= 0.5 else "new_individual")
    query = rows.iloc[n_gallery:]
    pd.DataFrame({"file": query["image_id"], "prediction": decided,
                  "known": ["false" if d == "new_individual" else "true" for d in decided]}).to_csv(
        run / "predictions.csv", index=False)
    truth = pd.DataFrame({"image_id": query["image_id"], "identity": queries})
    return _finish(run, data, truth)

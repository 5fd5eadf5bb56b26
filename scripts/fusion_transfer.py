"""Where a fusion model fitted on one species loses identity on another (MODEL_ZOO.md, "The fusion on
other species"): per feature stage, leave-one-out rank-1 among a part's labelled database images; the
learned whitening's gains against the part's variance; the pair head's logits and AUC.

    python scripts/fusion_transfer.py FUSION_EXPORT EMBED_CACHE NAME=ROOT:all [NAME=ROOT:part1 ...]

ROOT: an AnimalCLEF-format part; `:part1` keeps identity part 1 of 2 (the fusion's own training
identities when ROOT is its training part), `:all` every database image. Prints JSON per part.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from core.schema import DataConfig
from data.formats import load_table
from data.splits import gallery_and_query
from engine.scoring.cached_outputs import ImageViews
from engine.scoring.embed_cache import EmbeddingCache, image_list_fingerprint
from engine.scoring.member_features import load_recorded_members, member_features
from zoo.loading import load_for_eval

fusion_dir, cache_dir = sys.argv[1], sys.argv[2]
parts = dict(a.split("=") for a in sys.argv[3:])
model, meta, _ = load_for_eval(fusion_dir)
model.eval()
members = load_recorded_members(model.members, fusion_dir, torch.device("cpu"))
cache = EmbeddingCache(cache_dir)


def unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def loo_rank1(x, labels):
    x = unit(x.astype(np.float64))
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    has_mate = np.array([(labels == label).sum() > 1 for label in labels])
    return float((labels[s.argmax(1)] == labels)[has_mate].mean())


def between_within(x, labels):
    x = x - x.mean(0)
    within = 0.0
    between = 0.0
    for label in np.unique(labels):
        r = x[labels == label]
        m = r.mean(0)
        within += ((r - m) ** 2).sum()
        between += len(r) * (m**2).sum()
    return float(between / within)


wa = model.whitening_A.numpy().astype(np.float64)
u, gains, vt = np.linalg.svd(wa, full_matrices=False)  # gain of each input direction vt[i]
out = {}
for name, spec in parts.items():
    root, which = spec.split(":")
    cfg = DataConfig(format="animalclef2025", root=root)
    table = load_table(cfg)
    gallery, query = gallery_and_query(table)
    rows = pd.concat([gallery, query], ignore_index=True)
    views = ImageViews(cfg, ["identity", "hflip"], 64)
    blocks = member_features(members, views, rows, cache, image_list_fingerprint(rows), None)
    n = len(gallery)
    labels = gallery["identity"].to_numpy(dtype=object)
    if which == "part1":  # the fusion's own training identities
        from data.splits import identity_part

        keep = gallery["identity"].isin(set(identity_part(table, 2, 1)["identity"]))
        idx = np.flatnonzero(keep.to_numpy())
    else:
        idx = np.arange(n)
    lab = labels[idx]
    feats = torch.from_numpy(np.concatenate(blocks, 1)[idx]).float()
    with torch.no_grad():
        reduced = model.reduce(feats).numpy()
        fused = model(feats)["embedding"].numpy()
    stats = {"images": len(idx), "identities": int(len(set(lab)))}
    for stage, x in (
        ("member A", blocks[0][idx]),
        ("member B", blocks[1][idx]),
        ("members concatenated", np.concatenate([b[idx] for b in blocks], 1)),
        ("PCA per member, concatenated", reduced),
        ("learned whitening (fused)", fused),
    ):
        stats[stage] = {
            "loo_rank1": round(loo_rank1(x, lab), 3),
            "between/within": round(between_within(x, lab), 3),
        }
    # The target's between-identity variance along the whitening's input directions, by gain.
    c = reduced - reduced.mean(0)
    means = np.stack([c[lab == label].mean(0) for label in np.unique(lab)])
    between_energy = ((means @ vt.T) ** 2).sum(0)
    total_energy = ((c @ vt.T) ** 2).sum(0)
    low = gains <= np.median(gains)
    stats["share of between-identity variance in the half of directions the whitening shrinks most"] = round(
        float(between_energy[low].sum() / between_energy.sum()), 3
    )
    stats["share of total variance there"] = round(float(total_energy[low].sum() / total_energy.sum()), 3)
    # Pair head on each image's top-10 fused neighbours.
    if model.has_pair_head:
        x = unit(fused)
        s = x @ x.T
        np.fill_diagonal(s, -np.inf)
        nb = np.argsort(-s, 1)[:, :10]
        qa = np.repeat(np.arange(len(idx)), 10)
        qb = nb.ravel()
        logits = np.asarray(model.pair_scores(fused[qa], fused[qb]), dtype=np.float64)
        same = lab[qa] == lab[qb]
        from sklearn.metrics import roc_auc_score

        first = model.pair_head[0]
        with torch.no_grad():
            a, b = (
                torch.nn.functional.normalize(torch.from_numpy(fused[qa]), dim=1),
                torch.nn.functional.normalize(torch.from_numpy(fused[qb]), dim=1),
            )
            hidden = torch.relu(first(torch.cat([(a - b).abs(), a * b], 1)))
        stats["pair head"] = {
            "logit mean same/diff": [
                round(float(logits[same].mean()), 2),
                round(float(logits[~same].mean()), 2),
            ],
            "logit p1/p50/p99": [round(float(v), 2) for v in np.percentile(logits, [1, 50, 99])],
            "share of pairs at the top logit (rounded 1e-3)": round(
                float(np.mean(np.round(logits, 3) == np.round(logits.max(), 3))), 3
            ),
            "distinct logits / pairs": [int(len(np.unique(np.round(logits, 4)))), int(len(logits))],
            "active hidden units per pair (mean)": round(float((hidden > 0).float().sum(1).mean()), 1),
            "AUC same vs different": round(float(roc_auc_score(same, logits)), 3)
            if same.any() and (~same).any()
            else None,
            "AUC of fused cosine": round(float(roc_auc_score(same, s[qa, qb])), 3)
            if same.any() and (~same).any()
            else None,
        }
    out[name] = stats
    print(name, json.dumps(stats, indent=1), flush=True)
print("whitening gains: max/median/min", np.round([gains.max(), np.median(gains), gains.min()], 3))

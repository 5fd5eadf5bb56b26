"""Where a fusion model fitted on one species loses identity on another (MODEL_ZOO.md, "The fusion on
other species"): per feature stage, leave-one-out rank-1 among a part's labelled database images; the
learned whitening's gains against the part's variance; the pair head's logits and AUC.

    python scripts/bench/fusion_transfer.py FUSION_EXPORT EMBED_CACHE NAME=ROOT:all [NAME=ROOT:part1 ...]

ROOT: an AnimalCLEF-format part; `:part1` keeps identity part 1 of 2 (the fusion's own training
identities when ROOT is its training part), `:all` every database image. Prints JSON per part.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, Tuple

import numpy as np
import pandas as pd
import torch

from core.errors import ConfigError, cli_entry
from core.schema import DataConfig
from data.formats import load_table
from data.splits import gallery_and_query
from engine.scoring.cached_outputs import CachedRows, ImageViews
from engine.scoring.embed_cache import EmbeddingCache, image_list_fingerprint
from engine.scoring.member_features import load_recorded_members, member_features
from zoo.loading import load_for_eval


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


def parse_part(text: str) -> Tuple[str, str, str]:
    """NAME=ROOT:all or NAME=ROOT:part1 -> (name, root, which)."""
    name, _, spec = text.partition("=")
    root, _, which = spec.rpartition(":")
    if not name or not root or which not in ("all", "part1"):
        raise ConfigError(f"part {text!r}: give NAME=ROOT:all or NAME=ROOT:part1")
    return name, root, which


def pair_head_stats(model, fused: np.ndarray, lab: np.ndarray) -> Dict:
    """The pair head on each image's 10 nearest fused neighbours: its logits, how many of its hidden units
    fire, and how well it and the fused cosine tell same from different individuals (AUC)."""
    x = unit(fused)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    nb = np.argsort(-s, 1)[:, :10]
    qa = np.repeat(np.arange(len(fused)), 10)
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
    return {
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


def part_stats(model, members, cache: EmbeddingCache, gains: np.ndarray, vt: np.ndarray, root: str,
               which: str) -> Dict:
    """Every figure of one part: rank-1 and spread per feature stage, the whitening's gains against the
    part's variance, the pair head on each image's nearest fused neighbours."""
    cfg = DataConfig(format="animalclef2025", root=root)
    table = load_table(cfg)
    gallery, query = gallery_and_query(table)
    rows = pd.concat([gallery, query], ignore_index=True)
    views = ImageViews(cfg, ["identity", "hflip"], 64)
    blocks = member_features(members, views, CachedRows(rows, cache, image_list_fingerprint(rows)), None)
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
    if model.has_pair_head:
        stats["pair head"] = pair_head_stats(model, fused, lab)
    return stats


@cli_entry
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fusion_export", help="the fusion model's export folder")
    parser.add_argument("embed_cache", help="the embedding cache its members' features are read from")
    parser.add_argument("parts", nargs="+", metavar="NAME=ROOT:all|part1")
    args = parser.parse_args(argv)
    parts = [parse_part(text) for text in args.parts]
    model, _, _ = load_for_eval(args.fusion_export)
    if not hasattr(model, "whitening_A"):
        raise ConfigError(f"{args.fusion_export} is not a fusion model with a learned whitening")
    model.eval()
    members = load_recorded_members(model.members, args.fusion_export, torch.device("cpu"))
    cache = EmbeddingCache(args.embed_cache)
    wa = model.whitening_A.numpy().astype(np.float64)
    _, gains, vt = np.linalg.svd(wa, full_matrices=False)  # gain of each input direction vt[i]
    for name, root, which in parts:
        stats = part_stats(model, members, cache, gains, vt, root, which)
        print(name, json.dumps(stats, indent=1), flush=True)
    print("whitening gains: max/median/min", np.round([gains.max(), np.median(gains), gains.min()], 3))


if __name__ == "__main__":
    main(sys.argv[1:])

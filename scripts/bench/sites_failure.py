"""How keypoint re-ranking fails on camera sites: where the winning wrong photo was taken and where its
inliers lie (issue 36 A).

    python scripts/bench/sites_failure.py --model EXPORT --root PROTOCOL/sites/test --synthetic SITES \\
        --seed 0 --individuals 120 --images 12 --sites 4 --cache runs/bench_keypoints/sites/sift/keypoints

ROOT is an AnimalCLEF-format part of a synthetic set written with `--scenes --sites K` (SITES, with
its generator arguments), scored as eval.py scores it (whole images, the default re-ranking or the
`rerank.*` overrides given after `--`). For every known query, the matcher's best image of its
shortlist is its pick; the script prints how often the pick is right, and for right and wrong picks
how often the picked photo was taken at the query's own site and what share of the pick's inliers
lie outside the two animals' boxes (the `bbox` column: the background). Pass the keypoint cache of
an eval.py run with the same settings (`--cache`) to read its matches instead of matching again.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from core.errors import cli_entry


def photo_sites(seed: int, individuals: int, images: int, sites: int) -> dict:
    """image id -> (species group, site) of every photo the generator planned."""
    from data.synthetic import _plan
    from data.synthetic_sites import photo_site

    return {photo.image_id: (person.group, photo_site(seed, person.index, photo.k, sites))
            for person in _plan(seed, individuals, images) for photo in person.photos}


def where_matched(pairs, record, q_row: int, g_row: int, boxes, widths) -> tuple:
    """(M,) bool twice: matches with either keypoint outside its animal's box, and with the query's
    keypoint on the overlay bar (boxes and bar at the matcher's scale)."""
    from data.synthetic_sites import BAR_H

    inside, bar = [], None
    for row, side in ((q_row, record.first), (g_row, record.second)):
        features = pairs.store.features(row)
        scale = features["image_size"][0] / widths[row]
        x, y, w, h = (v * scale for v in boxes[row])
        points = features["keypoints"][side]
        inside.append((points[:, 0] >= x) & (points[:, 0] <= x + w) & (points[:, 1] >= y) & (points[:, 1] <= y + h))
        if bar is None:
            bar = points[:, 1] >= features["image_size"][1] - BAR_H * scale
    return ~(inside[0] & inside[1]), bar


@cli_entry
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--root", required=True, help="the AnimalCLEF-format part scored")
    parser.add_argument("--synthetic", required=True, help="the synthetic set it was cut from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--individuals", type=int, default=120)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--sites", type=int, required=True)
    parser.add_argument("--cache", default="", help="keypoint cache of an eval.py run with the same settings")
    parser.add_argument("overrides", nargs="*", help="rerank.* key=value")
    args = parser.parse_args(argv)

    from PIL import Image

    import engine.components  # noqa: F401
    from core.config import load_config
    from core.schema import EvalConfig
    from data.table import parse_bbox
    from engine.identify.decision import namespaced_by_dataset
    from engine.prepare import load_run_data, prepare_run
    from engine.scoring.scorers import MatchSpace, scorers_for
    from engine.scoring.voting import fit_calibrators, shortlist

    cfg = load_config(EvalConfig, None, [f"models=[{args.model}]", "data.format=animalclef2025", f"data.root={args.root}",
                                         "data.crop_to_bbox=false", *([f"rerank.cache={args.cache}"] if args.cache else []),
                                         *args.overrides])
    data = load_run_data(cfg)
    inputs = prepare_run(cfg, data)
    gallery, query = data.gallery, data.query
    datasets = np.concatenate([gallery["dataset"].to_numpy(object), query["dataset"].to_numpy(object)])
    space = MatchSpace(gallery["identity"].to_numpy(object), datasets, namespaced_by_dataset(gallery), cfg.retrieval)
    matcher = inputs.matcher
    scorers = scorers_for(inputs.outputs) + [matcher]
    every = np.arange(len(gallery))
    fit_calibrators(scorers, space, every, cfg.calibration, cfg.seed, cfg.rerank.shortlist)
    q_rows = np.arange(len(gallery), len(gallery) + len(query))
    short = shortlist(scorers, space, q_rows, every, cfg.rerank.shortlist)
    matcher.prepare(space, q_rows, every)
    where = photo_sites(args.seed, args.individuals, args.images, args.sites)
    ids = [int(Path(path).stem) for path in data.rows["path"]]  # the generator's image ids name its files
    boxes = [parse_bbox(b) for b in data.rows["bbox"]]
    widths = [Image.open(path).size[0] for path in data.rows["path"]]
    truth = query["identity"].to_numpy(object)
    picks = {True: [], False: []}  # right pick? -> (same site as the query, inliers outside the boxes, on the bar)
    for i, q_row in enumerate(q_rows):
        rows = short[i][short[i] >= 0]
        if truth[i] not in set(space.labels) or not len(rows):
            continue
        scores = matcher.pair_scores(space, np.full(len(rows), q_row), rows)
        pick = int(rows[int(np.argmax(scores))])
        record = matcher.pairs.records(np.array([q_row]), np.array([pick]))[0]
        outside, bar = (m[record.inlier] for m in where_matched(matcher.pairs, record, int(q_row), pick, boxes, widths))
        picks[space.labels[pick] == truth[i]].append((where[ids[q_row]] == where[ids[pick]],
                                                     float(outside.mean()) if len(outside) else np.nan,
                                                     float(bar.mean()) if len(bar) else np.nan))
    known = len(picks[True]) + len(picks[False])
    print(f"{matcher.name}, {cfg.rerank.weighting or 'no weighting'}: {known} known queries, "
          f"matcher's pick right {len(picks[True]) / known:.3f}")
    for right, found in picks.items():
        if found:
            same, outside, bar = np.array(found, dtype=float).T
            print(f"  {'right' if right else 'wrong'} picks ({len(found)}): taken at the query's site {same.mean():.3f}; "
                  f"mean share of inliers outside the animals' boxes {np.nanmean(outside):.3f}, "
                  f"on the overlay bar {np.nanmean(bar):.3f}")


if __name__ == "__main__":
    main()

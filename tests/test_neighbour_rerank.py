"""Re-ranking without pixels: k-reciprocal encoding against a hand computation, its memory bound,
alpha-QE and DBA, and their weights chosen on the held-out database split."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from core.config import load_config
from core.errors import ConfigError
from core.schema import EvalConfig
from engine.neighbourhood import expanded, jaccard_distance, k_reciprocal_distance, k_reciprocal_encoding
from tests.test_rerank import RECIPE


def _on_circle(*degrees) -> np.ndarray:
    angles = np.radians(degrees)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)


def test_k_reciprocal_distance_matches_a_hand_computation_on_four_points():
    # A, B, C at 0, 10 and 25 degrees, D alone at 90. With k1 = 2 (lists of 3, self first):
    # A: A B C, B: B A C, C: C B A, D: D C B -> R(A) = R(B) = R(C) = {A, B, C}, R(D) = {D}.
    # Halves (lists of 2): R(A, 1) = {A, B} = R(B, 1), R(C, 1) = {C}: each passes the 2/3 rule, so
    # R*(A) = R*(B) = R*(C) = {A, B, C}. V_i = exp(-(1 - cos)) over R*(i), normalised.
    x = _on_circle(0, 10, 25, 90)
    cos = x.astype(np.float64) @ x.T.astype(np.float64)
    v_hand = np.zeros((4, 4))
    for i, members in enumerate(([0, 1, 2], [0, 1, 2], [0, 1, 2], [3])):
        v_hand[i, members] = np.exp(-(1 - cos[i, members]))
        v_hand[i] /= v_hand[i].sum()
    v, _ = k_reciprocal_encoding(x, k1=2, k2=1)
    np.testing.assert_allclose(v.toarray(), v_hand, rtol=1e-5, atol=1e-7)

    def jaccard(a, b):
        return 1 - np.minimum(a, b).sum() / np.maximum(a, b).sum()

    first, second = np.array([0, 0, 1, 0]), np.array([1, 2, 2, 3])
    want = [jaccard(v_hand[a], v_hand[b]) for a, b in zip(first, second, strict=True)]
    np.testing.assert_allclose(jaccard_distance(v, first, second), want, rtol=1e-5)
    assert want[-1] == 1.0, "D shares no neighbour with A"
    mixed = k_reciprocal_distance(x, v, first, second, lambda_value=0.3)
    np.testing.assert_allclose(mixed, 0.7 * np.array(want) + 0.3 * (1 - cos[first, second]), rtol=1e-5)
    # Local query expansion with k2 = 2: each row is the mean of its own and its nearest neighbour's.
    v2, _ = k_reciprocal_encoding(x, k1=2, k2=2)
    nearest = [1, 0, 1, 2]  # A -> B, B -> A, C -> B, D -> C
    np.testing.assert_allclose(v2.toarray(), [(v_hand[i] + v_hand[n]) / 2 for i, n in enumerate(nearest)],
                               rtol=1e-5, atol=1e-7)


def test_k_reciprocal_encoding_stays_sparse_and_never_allocates_a_dense_matrix():
    rng = np.random.default_rng(0)
    n, k1, k2 = 6000, 20, 6
    x = (rng.normal(size=(300, 32))[rng.integers(0, 300, n)] + rng.normal(scale=0.5, size=(n, 32))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    tracemalloc.start()
    v, _ = k_reciprocal_encoding(x, k1=k1, k2=k2)
    jaccard_distance(v, np.arange(n), rng.integers(0, n, n))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    dense = n * n * 4
    assert peak < dense / 4, f"peak {peak / 1e6:.0f} MB against {dense / 1e6:.0f} MB for a dense matrix"
    assert v.nnz <= n * k2 * (k1 + 1) * (1 + (k1 // 2 + 1)), "non-zeros bounded by the neighbour lists"
    np.testing.assert_allclose(np.asarray(v.sum(axis=1)).ravel(), 1.0, rtol=1e-4)


def test_alpha_query_expansion_and_dba_pull_a_row_towards_its_neighbours_never_itself():
    x = _on_circle(0, 10, 90)
    out = expanded(x[:1], x, k=1, alpha=1.0, exclude_self=True)  # row 0 is among the sources: B is its neighbour
    want = x[0] + np.cos(np.radians(10)) * x[1]
    np.testing.assert_allclose(out[0], want / np.linalg.norm(want), rtol=1e-5)
    alone = expanded(x[2:], x[:2], k=1, alpha=3.0, exclude_self=False)  # D's nearest is B, at cos 80 degrees
    want = x[2] + np.cos(np.radians(80)) ** 3 * x[1]
    np.testing.assert_allclose(alone[0], want / np.linalg.norm(want), rtol=1e-5)


def test_unknown_neighbour_rerankers_are_refused_with_the_close_name():
    with pytest.raises(ConfigError, match="did you mean 'kreciprocal'"):
        load_config(EvalConfig, RECIPE, ["rerank.neighbours=[kreciprokal]"])


def test_neighbour_scorers_weights_are_chosen_on_the_held_out_split():
    from engine.identify.decision import evaluate_outputs
    from engine.scoring.scorers import ModelOutput
    from engine.scoring.weights import MATCHER_WEIGHTS
    from tests.embedding_worlds import clustered

    gallery, query, vectors = clustered(seed=1, identities=12, noise=1.5)
    cfg = load_config(EvalConfig, RECIPE, ["rerank.matcher=none", "rerank.shortlist=10", "threshold.min_queries=30",
                                           "rerank.neighbours=[kreciprocal,alpha_qe,dba]"])
    ev = evaluate_outputs(cfg, gallery, query, [ModelOutput("m", vectors)])
    for kind in ("kreciprocal", "alpha_qe", "dba"):
        record = ev.threshold.weights[kind]
        assert set(record.validation_score) == {str(w) for w in MATCHER_WEIGHTS}
        assert ev.scorers[f"m [{kind}]"].weight == record.chosen and ev.scorers[f"m [{kind}]"].stage == "shortlist"
    assert len(ev.decided) == len(query)


def test_every_name_rerank_neighbours_accepts_is_a_registered_scorer():
    from core.schema_rules import NEIGHBOUR_RERANKERS
    from engine.scoring.scorers import SCORERS

    assert set(NEIGHBOUR_RERANKERS) <= set(SCORERS.names())

"""faiss retrieval against brute force, and identity aggregation by hand."""
import numpy as np
import pytest

from core.errors import ConfigError, DataError
from core.schema import RetrievalConfig
from engine.retrieval import (
    aggregate_identities,
    build_index,
    identity_scores,
    l2_normalize,
    retrieve,
    search,
)


def _data(n_gallery=600, n_queries=40, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    return l2_normalize(rng.normal(size=(n_queries, dim))), l2_normalize(rng.normal(size=(n_gallery, dim)))


def _brute_force(queries, gallery, k):
    sims = queries @ gallery.T
    return np.sort(sims, axis=1)[:, ::-1][:, :k], np.argsort(-sims, axis=1)[:, :k]


def test_flat_search_equals_brute_force_in_batches():
    queries, gallery = _data()
    want_scores, want_indices = _brute_force(queries, gallery, 10)
    scores, indices = search(build_index(gallery, RetrievalConfig(index="flat")), queries, 10, batch_size=7)
    np.testing.assert_array_equal(indices, want_indices)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    labels = np.arange(len(gallery)).astype(str)
    result = retrieve(queries, gallery, labels, RetrievalConfig(k=10))  # exact path without an index
    np.testing.assert_array_equal(result.indices, want_indices)


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_approximate_indexes_have_high_recall(index):
    # Clustered like re-ID embeddings (images of one individual close together), not uniform.
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(60, 16))
    gallery = l2_normalize(centres[rng.integers(0, 60, 2000)] + 0.3 * rng.normal(size=(2000, 16)))
    queries = l2_normalize(centres[rng.integers(0, 60, 50)] + 0.3 * rng.normal(size=(50, 16)))
    _, want = _brute_force(queries, gallery, 10)
    cfg = RetrievalConfig(index=index, nprobe=8, ef_search=64)
    _, got = search(build_index(gallery, cfg), queries, 10)
    recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want, strict=True)])
    assert recall >= 0.9


def test_k_is_clipped_to_the_gallery_size():
    queries, gallery = _data(n_gallery=5, n_queries=3)
    scores, indices = search(build_index(gallery), queries, 50)
    assert scores.shape == indices.shape == (3, 5)
    assert (indices >= 0).all()


def test_identity_aggregation_max_and_mean_top_m_by_hand():
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5], [0.9, 0.3, 0.2, 0.1, -np.inf]], dtype=np.float32)
    indices = np.array([[0, 1, 2, 3, 4], [4, 3, 2, 1, -1]])
    labels = np.array(["p", "q", "q", "q", "p"])
    assert identity_scores(scores, indices, labels, "max") == [
        [("p", pytest.approx(0.9)), ("q", pytest.approx(0.8))],
        [("p", pytest.approx(0.9)), ("q", pytest.approx(0.3))],
    ]
    # q's best two: (0.8 + 0.7) / 2 = 0.75 > p's (0.9 + 0.5) / 2 = 0.7: the order flips.
    assert identity_scores(scores, indices, labels, "mean_top_m", m=2) == [
        [("q", pytest.approx(0.75)), ("p", pytest.approx(0.7))],
        [("p", pytest.approx(0.9)), ("q", pytest.approx(0.25))],
    ]


def test_aggregation_matches_a_loop_on_random_data():
    rng = np.random.default_rng(3)
    scores = -np.sort(-rng.random((30, 20)), axis=1).astype(np.float32)
    indices = rng.integers(0, 50, size=(30, 20))
    gallery_codes = rng.integers(-1, 8, size=50)  # -1: gallery images without identity are skipped
    codes, agg = aggregate_identities(scores, indices, gallery_codes, "mean_top_m", m=3)
    for row in range(30):
        per_identity = {}
        for s, i in zip(scores[row], indices[row], strict=True):
            if gallery_codes[i] >= 0:
                per_identity.setdefault(gallery_codes[i], []).append(s)
        want = sorted(((np.mean(sorted(v, reverse=True)[:3]), c) for c, v in per_identity.items()), reverse=True)
        n = len(want)
        np.testing.assert_allclose(agg[row, :n], [w[0] for w in want], rtol=1e-6)
        assert set(codes[row, :n]) == {w[1] for w in want} and (codes[row, n:] == -1).all()


def test_result_views():
    queries, gallery = _data(n_gallery=30, n_queries=4)
    labels = [f"id{i % 6}" for i in range(30)]
    result = retrieve(queries, gallery, labels, RetrievalConfig(k=8))
    best_ids, best_scores = result.best()
    assert [c[0] for c in result.candidates()] == list(zip(best_ids, best_scores.astype(np.float32), strict=True))
    np.testing.assert_array_equal(result.image_labels(), np.array(labels, dtype=object)[result.indices])
    assert result.ranked_identities()[0, 0] == best_ids[0]


def test_bad_inputs():
    queries, gallery = _data(n_gallery=10, n_queries=2)
    with pytest.raises(ConfigError, match="did you mean 'hnsw'"):
        retrieve(queries, gallery, ["a"] * 10, RetrievalConfig(index="hnws"))
    with pytest.raises(DataError, match="empty"):
        retrieve(queries, gallery[:0], [], RetrievalConfig())
    with pytest.raises(ValueError, match="L2-normalised"):
        retrieve(queries * 3, gallery, ["a"] * 10, RetrievalConfig())


def test_two_faiss_builds_installed_side_by_side_are_refused_with_the_fix():
    from engine.retrieval import check_faiss_install, installed_faiss

    assert installed_faiss() == ["faiss-cpu"]  # what CI installs (constraints.txt)
    check_faiss_install(["faiss-gpu-cu12"])  # the documented swap leaves exactly one
    with pytest.raises(ImportError, match=r"faiss-cpu and faiss-gpu-cu12 are both installed.*pip uninstall -y faiss-cpu faiss-gpu-cu12"):
        check_faiss_install(["faiss-cpu", "faiss-gpu-cu12"])


def test_a_gpu_build_of_faiss_moves_flat_and_ivf_indexes_to_the_gpu(monkeypatch):
    """faiss-gpu adds StandardGpuResources and index_cpu_to_all_gpus; with them, the same code moves the
    index to the GPUs (HNSW has no GPU version). Checked by standing in for the GPU calls."""
    import engine.retrieval as retrieval

    moved = []
    monkeypatch.setattr(retrieval.faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(retrieval.faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(retrieval.faiss, "index_cpu_to_all_gpus", lambda index: moved.append(index) or index, raising=False)
    gallery = l2_normalize(np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32))
    for index in ("flat", "ivf", "hnsw"):
        build_index(gallery, RetrievalConfig(index=index, use_gpu=True))
    assert len(moved) == 2
    build_index(gallery, RetrievalConfig(index="flat", use_gpu=False))
    assert len(moved) == 2

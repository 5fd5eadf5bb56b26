"""scripts/bench/bench_review_ceiling.py: what a run's graph holds, and a better-ranking model emulated."""
from __future__ import annotations

import numpy as np
from bench_review_ceiling import candidates_hold, emulated, graph_holds
from review_worlds import cluster_run, identify_run
from sklearn.metrics import adjusted_rand_score

from engine.review.run import open_run
from engine.review.simulate import read_truth


def _opened(folder):
    run = open_run(folder)
    return run, read_truth(folder.parent / "truth.csv", run)


def test_a_graph_holding_every_true_pair_would_cluster_perfectly_once_every_edge_is_answered(tmp_path):
    run, truth = _opened(cluster_run(tmp_path / "c"))
    # 4 individuals of 4 photos, 2 of them train images: 2 x 3 + 2 x 6 true pairs among the 14 test images
    assert graph_holds(run, truth) == ["A: 18 true test pairs, 18 of them edges; every edge answered right: ARI 1.000, 4 clusters of 4 individuals"]
    dropped = np.zeros(len(run.data.pair_a), bool)  # keep every pair but one true test pair
    same = np.flatnonzero((truth[run.data.pair_a] == truth[run.data.pair_b]) & run.images["is_query"].to_numpy()[run.data.pair_a])
    dropped[same[0]] = True
    run.data.pair_a, run.data.pair_b, run.data.pair_p = (x[~dropped] for x in (run.data.pair_a, run.data.pair_b, run.data.pair_p))
    assert graph_holds(run, truth)[0].startswith("A: 18 true test pairs, 17 of them edges")


def test_moving_the_probabilities_toward_the_truth_ranks_and_clusters_better(tmp_path):
    run, truth = _opened(cluster_run(tmp_path / "c"))
    same_run, auc = emulated(run, truth, 0.0)
    assert np.allclose(same_run.data.pair_p, run.data.pair_p, rtol=0, atol=1e-9)
    assert np.array_equal(same_run.data.cluster, run.data.cluster) and auc < 1
    queries = run.images["is_query"].to_numpy()
    assert adjusted_rand_score(truth[queries], run.data.cluster[queries]) < 1  # the planted merge and split
    better, auc = emulated(run, truth, 5.0)
    assert auc == 1.0 and better.data.pair_p is not run.data.pair_p
    assert adjusted_rand_score(truth[queries], better.data.cluster[queries]) == 1.0
    assert np.array_equal(run.data.cluster, open_run(run.folder).data.cluster)  # the run itself is left as it was


def test_an_identification_run_is_emulated_on_its_own_candidates(tmp_path):
    run, truth = _opened(identify_run(tmp_path / "i"))
    better, auc = emulated(run, truth, 3.0)
    same = truth[run.data.pair_a] == truth[run.data.pair_b]
    assert auc == 1.0 and (better.data.pair_p[same] > run.data.pair_p[same]).all()
    assert (better.data.pair_p[~same] < run.data.pair_p[~same]).all()
    assert np.array_equal(better.data.pair_a, run.data.pair_a)


def test_the_candidates_say_which_known_queries_a_person_could_confirm(tmp_path):
    run, truth = _opened(identify_run(tmp_path / "i"))
    assert candidates_hold(run, truth) == ["A: 4 queries of known individuals, 4 of them with their own identity "
                                           "among their candidates"]
    keep = ~((truth[run.data.pair_a] == truth[run.data.pair_b]) & (run.data.pair_a == run.data.pair_a.min()))
    run.data.pair_a, run.data.pair_b, run.data.pair_p = (x[keep] for x in (run.data.pair_a, run.data.pair_b, run.data.pair_p))
    assert candidates_hold(run, truth)[0].startswith("A: 4 queries of known individuals, 3 of them")

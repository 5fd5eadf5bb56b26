"""Clustering (eval.py task=cluster): the methods on planted partitions, anchors, threshold transfer,
and an end-to-end run on the synthetic AnimalCLEF 2026 layout."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_BACKBONE
from sklearn.metrics import adjusted_rand_score

from core.config import load_config
from core.errors import ConfigError, DataError
from core.schema import EvalConfig, RetrievalConfig
from data.synthetic_animalclef2026 import NO_TRAIN_DATASET, generate_animalclef2026
from engine.cluster.constraints import ConstrainedSets, PairConstraints
from engine.cluster.graph import Graph, knn_pairs, unique_pairs
from engine.cluster.methods import CLUSTERERS
from engine.cluster.pipeline import run_clustering
from engine.cluster.search import best_of_curve
from engine.outputs.submission import check_submission, read_submission
from zoo import build_model, save_export

METHODS = ["agglomerative", "components", "leiden"]


def planted(groups=6, size=8, p_in=0.9, p_out=0.1, seed=0) -> tuple:
    """A planted-partition graph: every pair within a group linked at p_in, some pairs across at p_out."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(groups), size)
    n = len(truth)
    a, b = np.triu_indices(n, 1)
    same = truth[a] == truth[b]
    across = ~same & (rng.random(len(a)) < 0.05)
    keep = same | across
    p = np.where(same, p_in, p_out)[keep] + rng.normal(0, 0.02, keep.sum())
    return Graph(n, a[keep], b[keep], np.clip(p, 0, 1)), truth


@pytest.mark.parametrize("method", METHODS)
def test_a_planted_partition_is_recovered_exactly(method):
    graph, truth = planted()
    labels = CLUSTERERS.build(method).labels(graph, np.full(graph.n, -1), [0.5])[0]
    assert adjusted_rand_score(truth, labels) == 1.0


@pytest.mark.parametrize("method", METHODS)
def test_anchors_hold_an_identity_together_and_two_apart(method):
    graph, truth = planted(groups=3, size=6)
    anchors = np.full(graph.n, -1)
    anchors[[0, 1]] = 0  # group 0's first two images: identity 0
    anchors[[6]] = 0  # ... and group 1's first image, also identity 0: it pulls group 1 in or stays apart of it
    anchors[[12]] = 1  # group 2's first image: another identity
    # Link groups 0 and 2 strongly through one bridge: identities 0 and 1 must still never share a cluster.
    graph = Graph(graph.n, np.append(graph.i, 1), np.append(graph.j, 13), np.append(graph.p, 0.99))
    labels = CLUSTERERS.build(method).labels(graph, anchors, [0.5])[0]
    assert labels[0] == labels[1] == labels[6]
    assert labels[0] != labels[12]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_honours_must_and_cannot_links(method):
    graph, truth = planted(groups=3, size=6)
    anchors = np.full(graph.n, -1)
    anchors[[0]] = 0
    # A person says: image 1 (group 0) and image 7 (group 1) are one animal; images 12 and 13 (both
    # group 2, strongly linked) are two; and image 14 is not the animal of image 6.
    constraints = PairConstraints(must=[[1, 7]], cannot=[[12, 13], [14, 6]])
    labels = CLUSTERERS.build(method).labels(graph, anchors, [0.5], constraints)[0]
    assert labels[1] == labels[7] and labels[12] != labels[13] and labels[14] != labels[6]
    plain = CLUSTERERS.build(method).labels(graph, anchors, [0.5])[0]
    assert plain[1] != plain[7] and plain[12] == plain[13]  # the graph alone says the opposite


def test_a_cannot_link_holds_between_the_whole_sets_as_they_grow():
    sets = ConstrainedSets(np.full(6, -1), PairConstraints(must=[[0, 1]], cannot=[[1, 2]]))
    assert not sets.can_join(0, 2)  # 0 is must-linked to 1, which cannot be 2
    assert sets.union(2, 3) and sets.union(4, 0)
    assert not sets.union(3, 4) and not sets.can_join(4, 3)  # 3 joined 2's set, 4 joined 0's
    assert sets.union(5, 3) and sets.labels().tolist() == [0, 0, 1, 1, 0, 1]
    anchored = ConstrainedSets(np.array([0, 1, -1]), PairConstraints(must=[[2, 0]]))
    assert not anchored.can_join(2, 1) and anchored.find(2) == anchored.find(0)


def test_components_min_edge_rule_cuts_a_single_bridge():
    graph, truth = planted(groups=2, size=5, p_out=0.0)
    bridge = Graph(graph.n, np.append(graph.i, 0), np.append(graph.j, 9), np.append(graph.p, 0.95))
    plain = CLUSTERERS.build("components").labels(bridge, np.full(graph.n, -1), [0.5])[0]
    ruled = CLUSTERERS.build("components", {"min_edges": 2}).labels(bridge, np.full(graph.n, -1), [0.5])[0]
    assert len(set(plain)) == 1 and adjusted_rand_score(truth, ruled) == 1.0


def test_agglomerative_thresholds_read_off_one_pass_match_separate_runs():
    graph, _ = planted(groups=5, size=4, p_out=0.45, seed=3)
    method = CLUSTERERS.build("agglomerative")
    together = method.labels(graph, np.full(graph.n, -1), [0.3, 0.6, 0.95])
    for t, labels in zip([0.3, 0.6, 0.95], together, strict=True):
        assert np.array_equal(labels, method.labels(graph, np.full(graph.n, -1), [t])[0])


def test_knn_graph_holds_each_pair_once():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 8)).astype(np.float32)
    a, b = knn_pairs(x, np.arange(30), 5, RetrievalConfig())
    i, j = unique_pairs(a, b)
    assert (i < j).all() and len(set(zip(i.tolist(), j.tolist()))) == len(i) <= 30 * 5


def test_best_threshold_is_the_middle_of_the_best_plateau():
    assert best_of_curve([0.1, 0.5, 0.5, 0.5, 0.2], [0.1, 0.2, 0.3, 0.4, 0.5]) == 0.3


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("cluster")
    root = generate_animalclef2026(base / "data", seed=3, individuals=18, images_per_individual=5)
    model = build_model({"name": "embedder", "args": {"backbone": TINY_BACKBONE, "embed_dim": 16}}, num_classes=0)
    model.input_size = 32
    return {"base": base, "root": root, "export": save_export(model, base / "export")}


def config_overrides(world, out: str = "out", *overrides: str) -> list:
    base = world["base"]
    return ["task=cluster", "data.format=animalclef2026", f"data.root={world['root']}", f"data.cache_dir={base / 'images'}",
            "data.num_workers=0", f"embed_cache={base / 'embeddings'}", f"models=[{world['export']}]", "tta=[identity]",
            f"output_dir={base / out}", "batch_size=32", "rerank.matcher=none", "cluster.splits=1", *overrides]


def config(world, out: str, *overrides: str) -> EvalConfig:
    return load_config(EvalConfig, None, config_overrides(world, out, *overrides))


@pytest.fixture(scope="module")
def first_run(world):
    return run_clustering(config(world, "out"))


def test_end_to_end_on_the_synthetic_2026_layout(world, first_run, capsys):
    out = world["base"] / "out"
    assert sorted(p.name for p in out.iterdir()) == ["clusters.csv", "config.yaml", "manifest.json", "metrics.json",
                                                     "population.csv", "report.html", "review.npz", "submission.csv"]
    cfg = config(world, "out")
    from engine.tables import dataset_table

    table = dataset_table(cfg.data)
    check_submission(out / "submission.csv", table, "animalclef2026")
    submission = read_submission(out / "submission.csv")
    assert list(submission.columns) == ["image_id", "cluster"] and len(submission) == (table["split"] == "query").sum()
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_dataset"]) == {"SynthLynx", "SynthSalamander", NO_TRAIN_DATASET}
    for key in ("ARI", "AMI", "pairwise_F1", "bcubed_F1"):
        assert key in metrics and key in metrics["per_dataset"][NO_TRAIN_DATASET]
    assert {"clusters", "individuals", "population_ratio"} <= set(metrics["per_dataset"]["SynthLynx"])
    thresholds = metrics["thresholds"]
    assert thresholds["transferred"] == [NO_TRAIN_DATASET]  # no train rows: the threshold tuned on the others
    set_by = thresholds["set_by"][NO_TRAIN_DATASET]
    assert set_by["strategy"] == "unanchored" and thresholds["per_dataset"][NO_TRAIN_DATASET] == set_by["threshold"]
    assert set(set_by["alternatives"]) == {"mixture", "transfer"}
    assert set_by["alternatives"]["transfer"]["threshold"] == thresholds["overall"]  # the best on average
    assert {d: c["strategy"] for d, c in thresholds["set_by"].items() if d != NO_TRAIN_DATASET} == {
        "SynthLynx": "own", "SynthSalamander": "own"}
    population = pd.read_csv(out / "population.csv")
    assert list(population["dataset"]) == sorted(metrics["per_dataset"])
    for row in population.to_dict("records"):
        estimate = metrics["population"][row["dataset"]]
        assert row["individuals"] == estimate["individuals"] and row["strategy"] == estimate["strategy"]
        assert row["clusters"] == metrics["per_dataset"][row["dataset"]]["clusters"]  # the clusters written
        assert row["low_90"] <= row["individuals"] <= row["high_90"]
        assert row["true_individuals"] == metrics["per_dataset"][row["dataset"]]["individuals"]
    assert set(metrics["other_strategies"][NO_TRAIN_DATASET]["mixture"]) == {
        "threshold", "clusters", "count_threshold", "individuals", "ARI", "AMI"}
    report = (out / "report.html").read_text()
    assert "Population estimate" in report and "90 % interval" in report and "Largest wrong merges" in report
    assert "data:image/jpeg;base64," in report
    assert 'src="http' not in report and "<script" not in report
    clusters = pd.read_csv(out / "clusters.csv", dtype=str, keep_default_na=False)
    assert set(clusters.columns) == {"image_id", "dataset", "cluster", "joined_identity"}


def test_a_fixed_threshold_and_every_method_give_valid_submissions(world, first_run):
    from engine.tables import dataset_table

    for method in METHODS:
        result = run_clustering(config(world, f"fixed-{method}", f"cluster.method={method}", "cluster.threshold=0.5",
                                       "report=false"))
        assert result.decisions["per_dataset"][NO_TRAIN_DATASET] == 0.5
        check_submission(result.submission, dataset_table(config(world, "x").data), "animalclef2026")


def test_cluster_config_errors(world):
    with pytest.raises(ConfigError, match="cluster.method"):
        load_config(EvalConfig, None, ["cluster.method=kmeans"])
    with pytest.raises(ConfigError, match="has no argument 'min_edge'"):
        run_clustering(config(world, "bad", "cluster.method=components", "cluster.args={min_edge: 2}"))
    with pytest.raises(ConfigError, match="does not fit task=cluster"):
        run_clustering(config(world, "bad", "submission=animalclef"))


def test_eval_cli_prints_the_clustering_summary(world, first_run, capsys):
    import eval as eval_cli

    eval_cli.main(["--config", str(world["base"] / "out" / "config.yaml"), f"output_dir={world['base'] / 'cli'}",
                   "report=false"])
    printed = capsys.readouterr().out
    assert "mean ARI" in printed and "clusters:" in printed and "submission:" in printed
    assert f"{NO_TRAIN_DATASET} (no train images): threshold" in printed and "set by unanchored" in printed
    assert f"population {NO_TRAIN_DATASET}: " in printed and "90 % interval" in printed


def test_the_review_re_clusters_the_run_and_its_oracle_answers_help(world, first_run, tmp_path):
    import review

    out = world["base"] / "out"
    solution = world["root"] / "solution.csv"
    summary = review.main(["simulate", str(out), "--truth", str(solution), "--answers", "0", "--out", str(tmp_path / "none")])
    assert (tmp_path / "none" / "submission.csv").read_text() == (out / "submission.csv").read_text()
    assert summary["changes"] == {"clusters merged": 0, "clusters split": 0, "images regrouped": 0}
    truth = pd.read_csv(solution, dtype=str).set_index("image_id")["identity"]
    scores = []
    for answers in (0, 40):
        review.main(["simulate", str(out), "--truth", str(solution), "--answers", str(answers), "--out", str(tmp_path / f"a{answers}")])
        found = read_submission(tmp_path / f"a{answers}" / "submission.csv")
        scores.append(adjusted_rand_score(truth[found["image_id"]].tolist(), found["cluster"]))
    assert scores[1] > scores[0]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_give_the_same_clusters_as_one(world, tmp_path):
    """SIFT re-scores the graph's edges, its pairs split across two processes: the same clusters."""
    import socket
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    common = [o for o in config_overrides(world) if not o.startswith(("output_dir", "rerank.matcher"))]
    common += ["rerank.matcher=sift", "rerank.side=128", "rerank.max_keypoints=64", f"rerank.cache={tmp_path / 'k1'}"]
    run_clustering(load_config(EvalConfig, None, common + [f"output_dir={tmp_path / 'one'}"]))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    two = [o.replace("k1", "k2") for o in common] + [f"output_dir={tmp_path / 'two'}", "report=false"]
    launched = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                               "--main_process_port", str(port), "eval.py", *two],
                              capture_output=True, text=True, timeout=600, cwd=repo)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert (tmp_path / "two" / "submission.csv").read_text() == (tmp_path / "one" / "submission.csv").read_text()


def test_a_plain_folder_of_photos_is_clustered_with_a_given_threshold(world, tmp_path):
    import shutil

    photos = tmp_path / "photos"
    for path in sorted((world["root"] / "images" / NO_TRAIN_DATASET / "test").iterdir())[:12]:
        (photos / ("sub" if path.stem.endswith("1") else "")).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, photos / ("sub" if path.stem.endswith("1") else "") / path.name)
    plain = [o for o in config_overrides(world, "plain") if not o.startswith(("data.format", "data.root"))]
    plain += ["data.format=folders", f"data.query_root={photos}", "report=false"]
    with pytest.raises(DataError, match="set cluster.threshold"):
        run_clustering(load_config(EvalConfig, None, plain))
    result = run_clustering(load_config(EvalConfig, None, plain + ["cluster.threshold=0.9"]))
    submission = read_submission(result.submission)
    assert len(submission) == 12 and submission["cluster"].str.startswith("cluster_photos_").all()
    assert result.metrics is None


@pytest.mark.slow  # a fresh process per size (imports torch): about 10 s alone, 30 s on busy shared cores
def test_bench_cluster_scale_mode_prints_its_table(capsys, scripts_run_this_checkout):
    import bench_cluster

    bench_cluster.main(["scale", "--sizes", "600", "--methods", "agglomerative,components", "--k", "5"])
    printed = capsys.readouterr().out
    assert "CPU:" in printed and "| 600 |" in printed and "peak RSS MiB" in printed


def test_the_matchers_weight_on_the_edges_is_chosen_by_ari_on_held_out_identities():
    from engine.cluster.pipeline import graph_scorers
    from engine.cluster.tuning import tune
    from engine.scoring.scorers import MatchSpace, ModelOutput
    from tests.embedding_worlds import OracleMatcher, clustered

    # A weak model (noisy embeddings) and a matcher that knows the truth.
    gallery, query, vectors = clustered(seed=2, identities=24, noise=1.4)
    truth = np.concatenate([gallery["identity"].to_numpy(dtype=object), query["identity"].to_numpy(dtype=object)])
    labels = np.concatenate([gallery["identity"].to_numpy(dtype=object), np.full(len(query), None, dtype=object)])
    datasets = np.concatenate([gallery["dataset"].to_numpy(dtype=object), query["dataset"].to_numpy(dtype=object)])

    def tuned_with(matcher, *overrides):
        cfg = load_config(EvalConfig, None, ["task=cluster", "cluster.splits=1", "cluster.criterion=ari", "rerank.matcher=sift",
                                             *overrides])
        space = MatchSpace(labels, datasets, True, cfg.retrieval)
        return tune(cfg, [*graph_scorers([ModelOutput("m", vectors)]), matcher], space, gallery,
                    CLUSTERERS.build("agglomerative", {}))

    oracle = OracleMatcher(truth, noise=False)
    tuned, weight = tuned_with(oracle)
    assert set(weight["validation"]) == {"0.0", "0.25", "0.5", "1.0", "2.0", "4.0"} and weight["criterion"] == "ari"
    assert weight["chosen"] >= 1.0 and weight["validation"]["0.0"] < weight["validation"][str(weight["chosen"])]
    assert oracle.weight == weight["chosen"]
    assert tuned.best_score(True) == pytest.approx(weight["validation"][str(weight["chosen"])], abs=1e-6)

    kept = OracleMatcher(truth, noise=False)
    assert tuned_with(kept, "rerank.tune_weight=false", "rerank.weight=0.5")[1] is None and kept.weight == 1.0


def test_the_matchers_options_are_kept_only_where_they_raise_the_held_out_ari():
    from engine.cluster.pipeline import graph_scorers
    from engine.cluster.tuning import tune
    from engine.scoring.scorers import MatchSpace, ModelOutput
    from tests.embedding_worlds import OracleMatcher, clustered

    class Optioned(OracleMatcher):
        """Two options, each off first: `truth` makes the matcher know the identities, `idle` does nothing."""

        def __init__(self, identities):
            super().__init__(identities, noise=True)
            self.values = {"truth": False, "idle": False}

        def options(self):
            return {"truth": (False, True), "idle": (False, True)}

        def option_values(self):
            return dict(self.values)

        def set_option(self, name, value):
            self.values[name] = value
            self.noise = not self.values["truth"]

    gallery, query, vectors = clustered(seed=2, identities=24, noise=1.4)
    truth = np.concatenate([gallery["identity"].to_numpy(dtype=object), query["identity"].to_numpy(dtype=object)])
    labels = np.concatenate([gallery["identity"].to_numpy(dtype=object), np.full(len(query), None, dtype=object)])
    datasets = np.concatenate([gallery["dataset"].to_numpy(dtype=object), query["dataset"].to_numpy(dtype=object)])
    cfg = load_config(EvalConfig, None, ["task=cluster", "cluster.splits=1", "cluster.criterion=ari", "rerank.matcher=sift"])
    matcher = Optioned(truth)
    _, record = tune(cfg, [*graph_scorers([ModelOutput("m", vectors)]), matcher], MatchSpace(labels, datasets, True, cfg.retrieval),
                     gallery, CLUSTERERS.build("agglomerative", {}))
    truth_choice, idle_choice = record["options"]["truth"], record["options"]["idle"]
    assert truth_choice["chosen"] is True and truth_choice["validation"]["True"] > truth_choice["validation"]["False"]
    assert idle_choice["chosen"] is False and idle_choice["validation"]["True"] == idle_choice["validation"]["False"]
    assert matcher.values == {"truth": True, "idle": False} and record["chosen"] >= 1.0


def test_agglomerative_labels_at_many_thresholds_at_once_equal_each_alone():
    from engine.cluster.constraints import PairConstraints
    from engine.cluster.graph import Graph

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 300, 3000), rng.integers(0, 300, 3000)
    a, b = a[a != b], b[a != b]
    graph = Graph(300, a, b, rng.random(len(a)))
    anchors = np.where(rng.random(300) < 0.2, rng.integers(0, 10, 300), -1)
    constraints = PairConstraints([(1, 2), (5, 6)], [(2, 7), (9, 10)])
    clusterer = CLUSTERERS.build("agglomerative")
    thresholds = [0.9, 0.3, 0.5, 0.1, 0.5, 0.7]
    together = clusterer.labels(graph, anchors, thresholds, constraints)
    for t, labels in zip(thresholds, together, strict=True):
        assert np.array_equal(labels, clusterer.labels(graph, anchors, [t], constraints)[0])
    assert len(set(map(len, map(np.unique, together)))) >= 3  # the thresholds make different partitions

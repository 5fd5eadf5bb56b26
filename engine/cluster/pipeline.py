"""eval.py task=cluster: every query (test) image gets a cluster label, one cluster per individual.

    models -> TTA extraction (cached) -> scorers (+ a keypoint matcher with rerank.matcher)
           -> calibrators and thresholds tuned on held-out train identities (tuning.py)
           -> sparse k-NN graph over train + test images, edges soft-voted P(same) (graph.py)
           -> the configured method per dataset, train images anchoring their identity (methods.py)
           -> submission.csv (AnimalCLEF 2026), clusters.csv, metrics.json, manifest.json, report.html

The same models, TTA, embedding cache, scorers and calibration as task=identify. Under
`accelerate launch` extraction and keypoint matching are split across processes; every process
then runs the (deterministic) clustering, so that they can share the edges to match, and only the
main process writes.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd

from core.csv_cells import safe_cells
from core.errors import ConfigError, DataError
from core.schema import EvalConfig
from data.table import clean_identity
from engine.accel import say
from engine.cluster.assign import choice_lines, choose_thresholds
from engine.cluster.graph import build_graph
from engine.cluster.methods import CLUSTERERS
from engine.cluster.metrics import cluster_scores, clustering_report
from engine.cluster.population import (
    POPULATION_FILE,
    PopulationEstimate,
    clusters_at,
    interval,
    write_population,
)
from engine.cluster.tuning import ClusterThresholds, anchor_codes, tune
from engine.outputs.artifacts import finite, run_manifest
from engine.outputs.review_file import ReviewData, ReviewSettings, image_frame, image_roots
from engine.outputs.submission import CLUSTERS, cluster_prefix
from engine.outputs.writer import RunOutputs, RunResult, write_run
from engine.prepare import RunData, check_run_config, load_run_data, prepare_run
from engine.scoring.calibration import fit_calibrator
from engine.scoring.embed_cache import image_list_fingerprint
from engine.scoring.scorers import SCORERS, MatchSpace, ModelOutput, Scorer
from engine.scoring.voting import fit_calibrators

CLUSTERS_FILE = "clusters.csv"


def graph_scorers(outputs: List[ModelOutput]) -> List[Scorer]:
    """Every model's embedding scorer (a classifier's too: a softmax cannot score two test images)
    and its pair head if it has one; a model's weight is shared by its scorers."""
    built = []
    for output in outputs:
        kinds = ["embedding"] + (["pair_head"] if output.pair_head is not None else [])
        built.extend(SCORERS.build(kind, output=output, weight=output.weight / len(kinds)) for kind in kinds)
    return built


def check_cluster_config(cfg: EvalConfig) -> None:
    """check_run_config, and the clusterer's arguments."""
    if check_run_config(cfg) != CLUSTERS:
        raise ConfigError(f"task=cluster writes the {CLUSTERS} submission, not {cfg.submission}")
    CLUSTERERS.build(cfg.cluster.method, cfg.cluster.args)  # unknown arguments stop here


def _calibrate_without_tuning(cfg: EvalConfig, scorers: List[Scorer], space: MatchSpace, n_gallery: int) -> str:
    """Calibrators when cluster.threshold is given: on the train images, or none without any."""
    if n_gallery:
        fit_calibrators(scorers, space, np.arange(n_gallery), cfg.calibration, cfg.seed, cfg.rerank.shortlist)
        return "cluster.threshold, on probabilities calibrated on the train images"
    if len(scorers) > 1:
        raise DataError(f"{len(scorers)} scorers cannot be calibrated without labelled images, so their scores cannot be "
                        "averaged: cluster with one model (and rerank.matcher=none), or add labelled train images")
    scorers[0].calibrator = fit_calibrator([], [], "none")
    return "cluster.threshold, on the raw scores (no labelled images to calibrate on)"


def cluster_names(labels: np.ndarray, is_query: np.ndarray, dataset: str) -> np.ndarray:
    """cluster_<dataset>_<n>, numbered in the order the query images first appear."""
    query_labels = labels[is_query]
    _, first, inverse = np.unique(query_labels, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    return np.array([f"{cluster_prefix(dataset)}{r}" for r in rank[inverse]], dtype=object)


def run_clustering(cfg: EvalConfig, accelerator=None) -> Optional[RunResult]:
    """Cluster the query images of cfg.data with cfg.models and write the outputs into cfg.output_dir;
    the main process returns where they are, the other processes None."""
    check_cluster_config(cfg)
    data = load_run_data(cfg)
    table, gallery, query, rows = data.table, data.gallery, data.query, data.rows
    n_gallery = len(gallery)
    inputs = prepare_run(cfg, data, accelerator)
    outputs, matcher = inputs.outputs, inputs.matcher
    scorers = graph_scorers(outputs) + ([matcher] if matcher is not None else [])
    if matcher is None and accelerator is not None and not accelerator.is_main_process:
        return None
    labels = np.concatenate([gallery["identity"].to_numpy(dtype=object), np.full(len(query), None, dtype=object)])
    datasets = rows["dataset"].to_numpy(dtype=object)
    space = MatchSpace(labels, datasets, True, cfg.retrieval)  # a cluster never spans two datasets
    clusterer = CLUSTERERS.build(cfg.cluster.method, cfg.cluster.args)
    tuned = None
    if cfg.cluster.threshold is None:
        if not n_gallery:
            raise DataError("no labelled train images to tune the clustering threshold on: set cluster.threshold "
                            "(with one model and no calibration, a cosine similarity)")
        tuned, weight = tune(cfg, scorers, space, gallery, clusterer)
        thresholds = ClusterThresholds(
            cfg.cluster.method, f"tuned by {tuned.criterion.upper()} on held-out train identities "
                                f"({cfg.cluster.splits} splits, {tuned.images} validation images)", tuned.overall,
            criterion=tuned.criterion, validation=tuned.curves, grid=tuned.search.grid, ends=tuned.search.ends(),
            matcher_weight=weight)
        if weight is not None:
            for option, choice in weight.get("options", {}).items():
                say(accelerator, f"{cfg.rerank.matcher} {option}: {choice['chosen']} chosen by "
                                 f"{tuned.criterion.upper()} on the held-out identities (validation: "
                                 + ", ".join(f"{v}: {c:.3f}" for v, c in choice["validation"].items()) + ")")
            say(accelerator, f"{cfg.rerank.matcher} weight {weight['chosen']} chosen by {tuned.criterion.upper()} on "
                             "the same held-out identities (validation per weight: "
                             + ", ".join(f"{w}: {v:.3f}" for w, v in weight["validation"].items()) + ")")
    else:
        thresholds = ClusterThresholds(cfg.cluster.method, _calibrate_without_tuning(cfg, scorers, space, n_gallery),
                                       cfg.cluster.threshold)

    nodes = np.arange(len(rows))
    graph = build_graph(scorers, space, nodes, cfg.cluster.neighbours)
    anchors = anchor_codes(labels) if cfg.cluster.anchors else np.full(len(rows), -1)
    query_datasets = sorted(set(query["dataset"]))
    choices = choose_thresholds(cfg.cluster, tuned, graph, anchors, space, scorers, query_datasets, clusterer, cfg.seed)
    thresholds.per_dataset = {d: c.threshold for d, c in choices.items()}
    thresholds.choices = choices
    if tuned is not None and cfg.cluster.per_dataset:
        thresholds.transferred = [d for d in query_datasets if d not in tuned.per_dataset]
    for line in choice_lines(choices, sorted(set(gallery["dataset"])), thresholds.grid or [thresholds.overall]):
        say(accelerator, line)
    say(accelerator, f"clustering {len(query)} test images ({n_gallery} train images as anchors) with "
                     f"{cfg.cluster.method}: {len(graph.p)} edges from {cfg.cluster.neighbours} neighbours per image"
                     + (f", re-scored by {cfg.rerank.matcher}" if matcher else ""))
    names = np.empty(len(query), dtype=object)
    joined = np.full(len(query), None, dtype=object)
    codes = np.full(len(rows), -1, np.int64)  # every image's cluster, numbered across datasets
    truth = query["identity"].to_numpy(dtype=object)
    estimates, alternatives = [], {}
    for dataset in query_datasets:
        members = np.flatnonzero(datasets == dataset)
        is_query = members >= n_gallery
        choice = choices[dataset]
        found = clusters_at(graph.subgraph(members), anchors[members], clusterer,
                            [choice.threshold, choice.count_threshold, *[t for t, _ in choice.count_draws],
                             *[t for a in choice.alternatives.values() for t in (a.threshold, a.count_threshold)]])
        chosen = found[choice.threshold]
        codes[members] = chosen + codes.max() + 1
        at_query = members[is_query] - n_gallery
        names[at_query] = cluster_names(chosen, is_query, dataset)
        identity_of = {c: labels[m] for c, m in zip(chosen[~is_query], members[~is_query], strict=True)}
        joined[at_query] = [identity_of.get(c) for c in chosen[is_query]]
        counts = {t: len(set(found_labels[is_query].tolist())) for t, found_labels in found.items()}
        estimate, images = counts[choice.count_threshold], int(is_query.sum())
        known = [clean_identity(v) for v in truth[at_query]]
        estimates.append(PopulationEstimate(
            dataset, images, estimate, *interval(estimate, choice.count_draws, counts, images),
            choice.count_threshold, counts[choice.threshold], len({j for j in joined[at_query] if j is not None}),
            choice.threshold, choice.strategy,
            len({v for v in known if v is not None}) if any(v is not None for v in known) else None))
        alternatives[dataset] = {name: {"threshold": a.threshold, "clusters": counts[a.threshold],
                                        "count_threshold": a.count_threshold, "individuals": counts[a.count_threshold],
                                        **_scores_of(known, found[a.threshold][is_query])}
                                 for name, a in choice.alternatives.items()}
    if accelerator is not None and not accelerator.is_main_process:
        return None
    metrics = None
    if query["identity"].notna().any():
        metrics = finite({**clustering_report(truth, names, query["dataset"].tolist()), "thresholds": thresholds.to_dict(),
                          "population": {e.dataset: e.to_dict() for e in estimates},
                          "other_strategies": {d: a for d, a in alternatives.items() if a}})
    manifest = _cluster_manifest(cfg, data, outputs, scorers, thresholds, graph, estimates)

    def write_report(path):
        from engine.cluster.report import write_cluster_report

        write_cluster_report(path, cfg=cfg, rows=rows, query=query, names=names, joined=joined, metrics=metrics,
                             thresholds=thresholds, population=estimates)

    clusters = pd.DataFrame({"image_id": query["image_id"].astype(str), "dataset": query["dataset"], "cluster": names,
                             "joined_identity": joined})
    return write_run(cfg, table, RunOutputs(
        CLUSTERS, dict(zip(query["image_id"].astype(str), names, strict=True)), CLUSTERS_FILE,
        lambda path: safe_cells(clusters).to_csv(path, index=False), metrics, manifest, write_report,
        thresholds.to_dict(), _review_data(cfg, rows, n_gallery, scorers, thresholds, graph, codes),
        {POPULATION_FILE: lambda path: write_population(path, estimates)}))


def _scores_of(known: list, clusters: np.ndarray) -> dict:
    """ARI and AMI of one alternative clustering where the test images carry identities."""
    have = [k is not None for k in known]
    if not any(have):
        return {}
    scores = cluster_scores(np.asarray(known, dtype=object)[have], clusters[have])
    return {"ARI": scores["ARI"], "AMI": scores["AMI"]}


def _review_data(cfg: EvalConfig, rows: pd.DataFrame, n_gallery: int, scorers: List[Scorer],
                 thresholds: ClusterThresholds, graph, codes: np.ndarray) -> ReviewData:
    """What `reidzoo-review` needs to re-cluster under a person's answers (engine/outputs/review_file.py)."""
    tuned_here = cfg.cluster.threshold is None and cfg.cluster.per_dataset
    settings = ReviewSettings(
        "cluster", CLUSTERS, dict(thresholds.per_dataset),
        {d: tuned_here and d not in thresholds.transferred for d in thresholds.per_dataset},
        [s.name for s in scorers], [s.stage for s in scorers], cfg.cluster.method, dict(cfg.cluster.args),
        cfg.cluster.anchors, image_roots(rows["path"]))
    return ReviewData(settings, image_frame(rows, n_gallery), graph.i, graph.j, graph.p, graph.by_scorer, codes)


def _cluster_manifest(cfg: EvalConfig, data: RunData, outputs: List[ModelOutput], scorers: List[Scorer],
                      thresholds: ClusterThresholds, graph, estimates: List[PopulationEstimate]) -> Dict[str, Any]:
    return run_manifest(
        cfg, CLUSTERS, outputs,
        {"images": len(data.table), "train": len(data.gallery), "test": len(data.query),
         "fingerprint": image_list_fingerprint(data.table)},
        thresholds=thresholds.to_dict(), graph={"edges": int(len(graph.p)), "neighbours": cfg.cluster.neighbours},
        scorers={s.name: s.summary().to_dict() for s in scorers},
        population={e.dataset: e.to_dict() for e in estimates})

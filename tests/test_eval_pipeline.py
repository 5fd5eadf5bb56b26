"""eval.py end to end on a tiny synthetic set: outputs, the embedding cache, bad input, open-set rules."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_BACKBONE

import eval as eval_cli
from core.config import load_config
from core.errors import ConfigError, DataError
from core.schema import EvalConfig
from engine.identify import pipeline
from engine.identify.baselines import pixel_baseline
from engine.identify.decision import evaluate_outputs
from engine.identify.heldout import tuning_split
from engine.identify.pipeline import run_identification
from engine.outputs.html import models_row, short_model_names, shortened
from engine.outputs.submission import check_submission, read_submission
from engine.scoring import cached_outputs, lazy_model
from engine.scoring.model_outputs import voting_classes
from engine.scoring.scorers import ModelOutput
from tests.embedding_worlds import clustered
from zoo import build_model, model_checksum, save_export

SIZE = 32
RECIPE = Path(__file__).resolve().parents[1] / "configs" / "eval" / "default.yaml"


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_synthetic):
    """The session's tiny synthetic set, an untrained embedder export, caches."""
    base = tmp_path_factory.mktemp("eval")
    root = tiny_synthetic
    model = build_model({"name": "embedder", "args": {"backbone": TINY_BACKBONE, "embed_dim": 16}}, num_classes=0)
    model.input_size = SIZE
    export = save_export(model, base / "export")
    return {"base": base, "root": root, "export": export}


def config(world, out_name: str, *overrides: str) -> EvalConfig:
    base = world["base"]
    return load_config(EvalConfig, RECIPE, [
        "data.format=animalclef2025", f"data.root={world['root']}", f"data.cache_dir={base / 'images'}",
        "data.num_workers=0", f"embed_cache={base / 'embeddings'}", f"models=[{world['export']}]",
        f"output_dir={base / out_name}", "batch_size=32", "rerank.matcher=none", *overrides])


@pytest.fixture(scope="module")
def first_run(world):
    return run_identification(config(world, "out"))


def test_end_to_end_writes_valid_outputs(world, first_run):
    out = world["base"] / "out"
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "manifest.json", "metrics.json", "predictions.csv",
                                                     "report.html", "review.npz", "submission.csv"]
    table = pd.read_csv(world["root"] / "metadata.csv", dtype=str)
    check_submission(out / "submission.csv", pipeline.load_identify_data(config(world, "out")).table, "animalclef")
    assert len(read_submission(out / "submission.csv")) == (table["split"] == "query").sum()

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["tuned"]["per_dataset"]) == {"SynthLynx", "SynthSalamander", "SynthTurtle"}
    for part in ("tuned", "hindsight"):
        assert 0 <= metrics[part]["score"] <= 1 and "BAKS" in metrics[part] and "BAUS" in metrics[part]
    assert "query labels" in metrics["hindsight"]["note"]
    assert metrics["hindsight"]["score"] >= metrics["tuned"]["score"] - 1e-9
    assert {"rank1", "rank5", "mAP"} <= set(metrics["retrieval"][str(world["export"])])

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"][0]["checksum"] == model_checksum(world["export"])
    assert manifest["models"][0]["input_size"] == SIZE
    assert {"torch", "timm", "numpy"} <= set(manifest["versions"])
    assert manifest["config"]["output_dir"] == str(out) and len(manifest["data"]["fingerprint"]) == 64

    report = (out / "report.html").read_text()
    assert report.count("<svg") >= 3 and "data:image/jpeg;base64," in report
    assert 'src="http' not in report and "<script" not in report, "the report must be self-contained"
    # The model by its short name on every caption, its full path once in the header.
    assert report.count(str(world["export"])) == 1 and report.count("eval0: ") > 1
    assert first_run.metrics == metrics
    assert not [p for p in world["base"].iterdir() if p.name.startswith(".out.")], "no staging folder left"


def test_rerun_with_other_settings_reads_embeddings_from_the_cache(world, first_run, monkeypatch):
    def no_extraction(*args, **kwargs):
        raise AssertionError("embeddings were extracted again")

    def not_built(*args, **kwargs):
        raise AssertionError("the model was built although its outputs are cached")

    monkeypatch.setattr(cached_outputs, "extract", no_extraction)
    monkeypatch.setattr(lazy_model, "load_for_eval", not_built)
    result = run_identification(config(world, "out2", "calibration=logistic", "threshold.value=0.5",
                                   "retrieval.aggregation=mean_top_m", "report=false"))
    assert result.decisions["global"] == 0.5 and result.report is None
    assert not (world["base"] / "out2" / "report.html").exists()


def test_humpback_submission_has_five_guesses(world, first_run):
    run_identification(config(world, "hump", "submission=humpback", "threshold.per_dataset=false", "report=false"))
    path = world["base"] / "hump" / "submission.csv"
    check_submission(path, pipeline.load_identify_data(config(world, "x")).table, "humpback")
    frame = read_submission(path)
    assert list(frame.columns) == ["Image", "Id"]
    assert frame["Id"].str.split().map(lambda guesses: len(set(guesses))).eq(5).all()


def test_classifier_votes_with_its_softmax(world, first_run):
    gallery = pipeline.load_identify_data(config(world, "x")).gallery
    label_map = {identity: i for i, identity in enumerate(sorted(set(gallery["identity"])))}
    model = build_model({"name": "classifier", "args": {"backbone": TINY_BACKBONE}}, num_classes=len(label_map))
    model.input_size = SIZE
    export = save_export(model, world["base"] / "classifier", label_map=label_map)
    run_identification(config(world, "cls", f"models=[{export},{world['export']}]", "weights=[1,2]", "report=false"))
    manifest = json.loads((world["base"] / "cls" / "manifest.json").read_text())
    assert [m["votes_with"] for m in manifest["models"]] == ["softmax", "embedding"]
    assert [m["weight"] for m in manifest["models"]] == [1.0, 2.0]


def test_embedder_classifier_and_siamese_pair_head_vote_in_one_submission(world, first_run):
    gallery = pipeline.load_identify_data(config(world, "x")).gallery
    label_map = {identity: i for i, identity in enumerate(sorted(set(gallery["identity"])))}
    classifier = build_model({"name": "classifier", "args": {"backbone": TINY_BACKBONE}}, num_classes=len(label_map))
    siamese = build_model({"name": "siamese", "args": {"backbone": TINY_BACKBONE, "embed_dim": 16}}, num_classes=0)
    classifier.input_size = siamese.input_size = SIZE
    exports = [save_export(classifier, world["base"] / "cls3", label_map=label_map),
               save_export(siamese, world["base"] / "siamese"), world["export"]]
    run_identification(config(world, "three", f"models=[{','.join(map(str, exports))}]"))
    out = world["base"] / "three"
    check_submission(out / "submission.csv", pipeline.load_identify_data(config(world, "x")).table, "animalclef")
    manifest = json.loads((out / "manifest.json").read_text())
    kinds = {name: s["kind"] for name, s in manifest["scorers"].items()}
    assert sorted(kinds.values()) == ["embedding", "embedding", "pair_head", "softmax"]  # keypoints: tests/test_rerank.py
    assert kinds[f"{exports[1]} [pair_head]"] == "pair_head"
    assert all(s["calibrator"]["method"] == "isotonic" for s in manifest["scorers"].values())
    assert "raw " in (out / "report.html").read_text()


def test_unlabelled_queries_give_a_submission_and_a_report_but_no_metrics(world, first_run, tmp_path, capsys):
    root = tmp_path / "competition"
    root.mkdir()
    (root / "images").symlink_to(world["root"] / "images")
    table = pd.read_csv(world["root"] / "metadata.csv", dtype=str)
    table.loc[table["split"] == "query", "identity"] = ""  # as in a competition's test set
    table.to_csv(root / "metadata.csv", index=False)
    cfg = config(world, "unlabelled", f"data.root={root}")
    eval_cli.main([f"{key}={value}" for key, value in (
        ("data.format", "animalclef2025"), ("data.root", root), ("data.cache_dir", cfg.data.cache_dir),
        ("data.num_workers", 0), ("embed_cache", cfg.embed_cache), ("models", f"[{world['export']}]"),
        ("output_dir", cfg.output_dir))])
    printed = capsys.readouterr().out
    out = world["base"] / "unlabelled"
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "manifest.json", "predictions.csv", "report.html",
                                                     "review.npz", "submission.csv"]
    assert f"submission: {out / 'submission.csv'}" in printed and "BAKS" not in printed
    report = (out / "report.html").read_text()
    assert "no metrics" in report and "true: unknown" in report and "true: None" not in report


def test_missing_model_stops_with_status_2_and_writes_nothing(world, capsys):
    out = world["base"] / "never"
    with pytest.raises(SystemExit) as stop:
        eval_cli.main([f"data.root={world['root']}", "data.format=animalclef2025", f"output_dir={out}",
                       f"models=[{world['base'] / 'no_such_export'}]"])
    assert stop.value.code == 2
    assert "no model at" in capsys.readouterr().err
    assert not out.exists()


def test_default_run_without_a_trained_model_says_what_to_do(world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        eval_cli.main([])
    assert stop.value.code == 2
    assert "no model at runs/default/export: run `python train.py` first or pass models=[...]" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_empty_query_set_is_refused(world, tmp_path):
    root = tmp_path / "noquery"
    root.mkdir()
    (root / "images").symlink_to(world["root"] / "images")
    table = pd.read_csv(world["root"] / "metadata.csv", dtype=str)
    table.assign(split="database").to_csv(root / "metadata.csv", index=False)
    with pytest.raises(DataError, match="query set is empty"):
        run_identification(config(world, "noquery", f"data.root={root}"))
    assert not (world["base"] / "noquery").exists()


def test_invalid_submission_leaves_the_previous_output_untouched(world, first_run, monkeypatch):
    out = world["base"] / "kept"
    shutil.copytree(world["base"] / "out", out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = pipeline.evaluate_outputs

    def corrupted(*args, **kwargs):
        evaluation = real(*args, **kwargs)
        evaluation.predictions[0] = "an_animal_nobody_knows"
        return evaluation

    monkeypatch.setattr(pipeline, "evaluate_outputs", corrupted)
    with pytest.raises(DataError, match="neither a database identity"):
        run_identification(config(world, "kept"))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in world["base"].iterdir() if p.name.startswith(".kept.")]


def test_an_output_dir_holding_other_files_is_refused(world, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not a reidzoo eval output folder .it holds other files"):
        run_identification(config(world, "x", f"output_dir={tmp_path}"))
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_raw_pixel_baseline_scores_with_the_same_procedure(world):
    metrics = pixel_baseline(config(world, "pixels"))
    assert 0 <= metrics["tuned"]["score"] <= 1 and "hindsight" in metrics


# ----------------------------------------------------------------------------- open-set rules, no models


def test_classifier_classes_must_fit_the_database():
    database = {"a", "b", "c"}
    assert voting_classes("m", {"label_map": {"a": 0, "b": 1}}, 2, database) == {"a": 0, "b": 1}
    assert voting_classes("m", {"label_map": {"x": 0, "y": 1}}, 2, database) is None  # another dataset
    assert voting_classes("m", {}, None, database) is None  # not a classifier
    with pytest.raises(DataError, match="do not fit this dataset"):
        voting_classes("m", {"label_map": {"a": 0, "x": 1}}, 2, database)
    with pytest.raises(DataError, match="outputs 3 classes"):
        voting_classes("m", {"label_map": {"a": 0, "b": 1}}, 3, database)


def test_threshold_and_decisions_never_depend_on_query_labels():
    cfg = EvalConfig()
    gallery, query, vectors = clustered()
    first = evaluate_outputs(cfg, gallery, query, [ModelOutput("m", vectors)])
    hidden = query.assign(identity=None)
    second = evaluate_outputs(cfg, gallery, hidden, [ModelOutput("m", vectors)])
    assert first.threshold == second.threshold
    assert list(first.decided) == list(second.decided)
    assert set(first.threshold.threshold.per_dataset) == {"A", "B"}


def test_tuning_split_holds_out_database_identities_preferring_unseen_ones():
    cfg = EvalConfig()
    gallery, _, _ = clustered(identities=20, per_identity=5)
    split = tuning_split(gallery, cfg)
    assert set(split["image_id"]) <= set(gallery["image_id"])
    for _, part in split.groupby("dataset"):
        query_only = set(part.loc[part["split"] == "query", "identity"]) - set(part.loc[part["split"] == "database", "identity"])
        assert query_only, "every dataset needs new individuals to tune on"
    unseen = {f"A{i}" for i in (1, 3, 5, 7, 9)} | {f"B{i}" for i in (0, 2, 4, 6, 8)}
    seen = set(gallery["identity"]) - unseen
    split = tuning_split(gallery, cfg, seen=seen)
    assert set(split["identity"]) <= unseen, "identities a model was trained on make optimistic thresholds"


def test_queries_are_matched_within_their_own_dataset_when_identities_are_namespaced():
    cfg = EvalConfig()
    gallery, query, vectors = clustered()
    ev = evaluate_outputs(cfg, gallery, query, [ModelOutput("m", vectors)])
    for dataset, candidates in zip(query["dataset"], ev.candidates, strict=True):
        assert candidates and all(identity.startswith(dataset) for identity, _ in candidates)
    shared = gallery.copy()
    shared.loc[0, "dataset"] = "B" if shared.loc[0, "dataset"] == "A" else "A"  # one identity in both datasets
    ev = evaluate_outputs(cfg, shared, query, [ModelOutput("m", vectors)])
    assert any(not identity.startswith(dataset) for dataset, candidates in zip(query["dataset"], ev.candidates)
               for identity, _ in candidates)


def test_reports_name_models_shortly_and_tell_equal_names_apart():
    names = short_model_names(["runs/a/export", "runs/b/export", "zoo-model", "other/a/export", "weights/m1"])
    assert names == {"runs/a/export": "a", "runs/b/export": "b", "zoo-model": "zoo-model", "other/a/export": "a (2)",
                     "weights/m1": "m1"}
    assert shortened("runs/a/export #2 [pair_head]", names) == "a #2 [pair_head]"
    assert models_row(["runs/a/export", "zoo-model"], names) == ["models", "a = runs/a/export; zoo-model"]


def test_a_persons_answers_apply_to_a_new_run_through_eval_py(world, first_run, tmp_path, capsys):
    from engine.review.constraints import DIFFERENT, SAME
    from engine.review.run import open_run
    from engine.review.session import ReviewOptions, ReviewSession
    from engine.review.store import AnswerStore

    out = world["base"] / "out"
    run = open_run(out)
    session = ReviewSession(run, AnswerStore(tmp_path / "answers.sqlite"), ReviewOptions())
    predictions = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    assert session.decide().values == predictions["prediction"].tolist()  # review.npz re-decides as the run did
    assert (run.images.loc[run.images["is_query"], "identity"] == "").all()  # the queries' labels never reach it
    query = pipeline.load_identify_data(config(world, "out")).query
    data = run.data
    confirmable, rejectable = [], []  # a true pair the run got wrong; a false pair the run decided on
    for pair in range(len(data.pair_a)):
        q = int(data.pair_a[pair]) - (len(run.images) - len(query))
        same = query["identity"].iloc[q] == run.images["identity"].iloc[int(data.pair_b[pair])]
        if same and predictions["prediction"].iloc[q] != query["identity"].iloc[q]:
            confirmable.append((pair, q, query["identity"].iloc[q]))
        if not same and predictions["prediction"].iloc[q] == run.images["identity"].iloc[int(data.pair_b[pair])]:
            rejectable.append((pair, q))
    # One answer of each kind, on two different queries (whichever the trained model makes available).
    confirmed, rejected = next((c, r) for c in confirmable for r in rejectable if c[1] != r[1])
    session.answer("t", "tester", confirmed[0], SAME)
    session.answer("t", "tester", rejected[0], DIFFERENT)
    session.store.close()
    capsys.readouterr()
    eval_cli.main([f"data.root={world['root']}", "data.format=animalclef2025", f"data.cache_dir={world['base'] / 'images'}",
                   "data.num_workers=0", f"embed_cache={world['base'] / 'embeddings'}", f"models=[{world['export']}]",
                   f"output_dir={tmp_path / 'reviewed'}", "rerank.matcher=none", f"review={tmp_path / 'answers.sqlite'}"])
    assert "review: 2 answers" in capsys.readouterr().out
    reviewed = pd.read_csv(tmp_path / "reviewed" / "predictions.csv", dtype=str, keep_default_na=False)
    assert reviewed["prediction"].iloc[confirmed[1]] == confirmed[2]
    assert reviewed["prediction"].iloc[rejected[1]] != predictions["prediction"].iloc[rejected[1]]
    assert set(reviewed.loc[reviewed["decided_by"] == "person"].index) == {confirmed[1], rejected[1]}
    submission = read_submission(tmp_path / "reviewed" / "submission.csv")
    assert submission["identity"].tolist() == reviewed["prediction"].tolist()
    report = (tmp_path / "reviewed" / "report.html").read_text()
    assert "reidzoo-review" in report and "answers are applied" in report
    assert (tmp_path / "reviewed" / "review.html").is_file()
    with pytest.raises(SystemExit):  # the answers' own folder is never replaced by a new run
        shutil.copy(tmp_path / "answers.sqlite", tmp_path / "reviewed" / "review-answers.sqlite")
        eval_cli.main([f"data.root={world['root']}", "data.format=animalclef2025", f"models=[{world['export']}]",
                       f"output_dir={tmp_path / 'reviewed'}", "rerank.matcher=none"])
    assert "holds a person's review answers" in capsys.readouterr().err

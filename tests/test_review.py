"""reidzoo-review: answers as constraints, the answer store, the selectors, the session the page and
the simulator share, simulate / apply / export, and the web application's refusals."""
from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from review_worlds import cluster_run, identify_run
from sklearn.metrics import adjusted_rand_score

import review
from core.errors import DataError
from engine.outputs.review_file import ANSWERS_FILE, load_review, save_review
from engine.review.constraints import DIFFERENT, SAME, Answer, Closure
from engine.review.refit import (
    answers_calibration,
    best_expected_threshold,
    best_threshold,
    candidate_thresholds,
    expected_ari,
    recalibrated,
    refitted,
    with_answers,
)
from engine.review.run import open_run
from engine.review.selectors import SELECTORS, Candidates
from engine.review.session import ReviewOptions, ReviewRefused, ReviewSession
from engine.review.store import ACTIVE, OVERRULED, UNDONE, AnswerStore


@pytest.fixture
def clustered(tmp_path):
    return cluster_run(tmp_path / "clustered")


@pytest.fixture
def identified(tmp_path):
    return identify_run(tmp_path / "identified")


def session_of(run_dir: Path, **options) -> ReviewSession:
    run = open_run(run_dir)
    return ReviewSession(run, AnswerStore(run.folder / ANSWERS_FILE), ReviewOptions(**options))


def pair_of(session: ReviewSession, a: str, b: str) -> int:
    rows = sorted((session.run.row_of[a], session.run.row_of[b]))
    return session.pair_of[tuple(rows)]


def truth_of(run_dir: Path) -> dict:
    return dict(pd.read_csv(run_dir.parent / "truth.csv").values.tolist())


# ----------------------------------------------------------------------------- constraints


def test_same_closes_transitively_and_different_holds_between_whole_groups():
    closure = Closure(np.array([0, 1, -1, -1, -1]), [Answer(1, 2, 3, SAME), Answer(2, 3, 0, SAME),
                                                     Answer(3, 4, 2, DIFFERENT)])
    assert closure.known(2, 0) == SAME  # 2 = 3 = identity 0
    assert closure.known(4, 0) == DIFFERENT and closure.known(2, 1) == DIFFERENT
    assert closure.known(4, 1) is None


def test_a_contradiction_names_the_answers_it_goes_against():
    closure = Closure(np.full(4, -1), [Answer(1, 0, 1, SAME), Answer(2, 1, 2, SAME), Answer(3, 2, 3, DIFFERENT)])
    against_chain = closure.check(0, 2, DIFFERENT)
    assert against_chain.against == [1, 2] and not against_chain.labels
    against_cut = closure.check(0, 3, SAME)
    assert against_cut.against == [3]
    assert closure.check(0, 2, SAME) is None and closure.check(3, 0, DIFFERENT) is None


def test_a_contradiction_with_the_datasets_labels_says_so():
    closure = Closure(np.array([0, 0, 1, -1]), [Answer(7, 3, 2, SAME)])
    labels_only = closure.check(0, 1, DIFFERENT)
    assert labels_only.against == [] and labels_only.labels
    through_answer = closure.check(3, 0, SAME)  # 3 was tied to identity 1, 0 is identity 0
    assert through_answer.against == [7] and through_answer.labels


# ----------------------------------------------------------------------------- store


def test_the_store_commits_each_answer_and_refuses_a_second_active_one(tmp_path):
    store = AnswerStore(tmp_path / "a.sqlite")
    first = store.add("x", "y", SAME, "ann", probability=0.4)
    with pytest.raises(Exception, match="has an answer already"):
        store.add("y", "x", DIFFERENT, "bob")  # the same pair, written either way round
    assert store.set_status(first, UNDONE)
    second = store.add("y", "x", DIFFERENT, "bob", overrule=[])
    other = AnswerStore(tmp_path / "a.sqlite", read_only=True)  # another connection sees them committed
    assert [(a.id, a.status, a.reviewer) for a in other.everything()] == [(first, UNDONE, "ann"), (second, ACTIVE, "bob")]
    with pytest.raises(sqlite3.OperationalError):
        other.add("p", "q", SAME, "eve")


def test_a_file_of_something_else_is_never_written_to(tmp_path):
    foreign = tmp_path / "other.sqlite"
    sqlite3.connect(foreign).execute("CREATE TABLE notes (x)")
    with pytest.raises(DataError, match="not an answers file"):
        AnswerStore(foreign)
    (tmp_path / "text.sqlite").write_text("hello")
    with pytest.raises(DataError):
        AnswerStore(tmp_path / "text.sqlite")


# ----------------------------------------------------------------------------- selectors and refit


def test_selectors_rank_as_documented():
    found = Candidates(np.arange(4), np.array([0.5, 0.9, 0.3, 0.55]), np.array([0.5, 0.1, 0.3, 0.45]),
                       np.array([1.0, 1.0, 10.0, 1.0]), np.array([0.0, 0.9, 0.0, 0.0]))
    rng = np.random.default_rng(0)
    assert SELECTORS.build("uncertainty").pick(found, rng) == 0
    assert SELECTORS.build("default").pick(found, rng) == 2  # 0.3 x 10 images
    no_impact = found.take(np.array([0, 1, 3]))
    assert SELECTORS.build("default").pick(no_impact, rng) == 0
    # scorers disagreeing make a confident pair worth asking: 0.9 apart -> at least 0.45
    assert SELECTORS.build("default").scores(no_impact, rng)[1] == pytest.approx(0.45, abs=1e-5)
    picks = {SELECTORS.build("random").pick(found, rng) for _ in range(40)}
    assert picks == {0, 1, 2, 3}
    with pytest.raises(Exception, match="did you mean 'uncertainty'"):
        ReviewOptions(selector="uncertinty")


def test_the_threshold_refits_only_with_enough_answers_of_both_kinds():
    p = np.array([0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6])
    same = np.array([0, 0, 0, 1, 1, 1, 1, 1], bool)
    assert best_threshold(p, same, 0.7) == pytest.approx(0.375)
    assert refitted(p, same, 0.7, min_answers=10) is None
    assert refitted(p, same, 0.7, min_answers=8, min_each=3) == pytest.approx(0.375)


def test_the_expected_ari_of_certain_pairs_is_the_ari():
    # with every pair an edge and q the truth (1: one individual), the expectation is ARI itself
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(0)
    truth, found = rng.integers(0, 6, 40), rng.integers(0, 9, 40)
    i, j = np.triu_indices(40, 1)
    found[:20] = truth[:20]  # half agree, so the score is not near zero by chance
    assert expected_ari(found, i, j, (truth[i] == truth[j]).astype(float)) == pytest.approx(
        adjusted_rand_score(truth, found))


def test_a_clustering_threshold_is_refitted_by_the_ari_its_clusters_are_expected_to_score():
    # Animal X is photos 0, 1, 2, Y is 3 and 4, Z 5 and 6; the edge 2-3 bridges X and Y at 0.3 and was
    # answered *different*, 0-1 *same*. The run's 0.1 joins X and Y; 0.625 parts them; 0.925 also
    # cuts X's unasked edge 1-2 (0.9).
    from engine.cluster.graph import Graph
    from engine.cluster.methods import CLUSTERERS

    graph = Graph(7, np.array([0, 1, 2, 3, 5]), np.array([1, 2, 3, 4, 6]), np.array([0.95, 0.9, 0.3, 0.95, 0.95]))
    thresholds = np.array([0.1, 0.625, 0.925])
    labelings = CLUSTERERS.build("agglomerative").labels(graph, np.full(7, -1), thresholds.tolist())
    q = np.array([1.0, 0.9, 0.0, 0.95, 0.95])  # the answers; the other edges their (re-calibrated) probability
    assert best_expected_threshold(thresholds, labelings, graph.i, graph.j, q, 0.1) == pytest.approx(0.625)
    q[1] = 0.3  # were 1-2 likely two animals, cutting it too would be expected to score best
    assert best_expected_threshold(thresholds, labelings, graph.i, graph.j, q, 0.1) == pytest.approx(0.925)
    # the candidates: the current threshold and the cuts between the answered probabilities
    assert candidate_thresholds(np.array([0.95, 0.3]), 0.1).tolist() == pytest.approx([0.1, 0.3 - 1e-6, 0.625, 0.95 + 1e-6])
    assert len(candidate_thresholds(np.linspace(0, 1, 200), 0.5, most=10)) <= 11


def test_an_answered_edge_counts_as_the_person_said():
    from engine.cluster.graph import Graph

    graph = Graph(5, np.array([0, 1, 3]), np.array([1, 2, 4]), np.array([0.5, 0.5, 0.5]))
    # 2-1 is the edge 1-2 asked the other way round; 0-4 is no edge of the graph
    q = with_answers(graph, graph.p, np.array([2, 3, 0]), np.array([1, 4, 4]), np.array([True, False, True]))
    assert q.tolist() == [0.5, 1.0, 0.0]
    assert graph.p.tolist() == [0.5, 0.5, 0.5]  # a copy: the run's probabilities are left alone


def test_the_answers_recalibrate_an_overconfident_probability():
    # the run says 0.2 to 0.8 where a quarter of that is true, as on real queries (results.md)
    rng = np.random.default_rng(0)
    p = rng.uniform(0.2, 0.8, 300)
    same = rng.random(300) < p / 4
    assert answers_calibration(p[:20], same[:20]) is None  # fewer than 30 answers: the run's own
    calibration = answers_calibration(p, same)
    shown = recalibrated(calibration, p)
    assert abs(shown.mean() - same.mean()) < 0.03
    assert np.mean((shown - same) ** 2) < 0.6 * np.mean((p - same) ** 2)
    grid = np.linspace(0.01, 0.99, 50)
    assert np.all(np.diff(recalibrated(calibration, grid)) > 0)  # the order, hence the decisions, kept
    assert recalibrated(None, grid) == pytest.approx(grid)


@pytest.mark.parametrize("refit", ["auto", "never"])
def test_the_page_shows_the_probability_the_answers_recalibrated(clustered, refit):
    from engine.review.simulate import read_truth, simulate
    from engine.review.views import pair_view

    session = session_of(clustered, min_answers=10, refit=refit)
    done = simulate(session, read_truth(clustered.parent / "truth.csv", session.run), 30, 0.0)
    pair = session.next_pair("c")
    view = pair_view(session, pair)
    p = float(session.run.data.pair_p[pair])
    if refit == "never":
        assert not session.calibrations and view["model_probability"] is None
        assert view["probability"] == pytest.approx(p, abs=1e-4)
        assert done.shown.brier()["pairs"] == 0
        return
    calibration = session.calibrations["A"]
    assert view["model_probability"] == pytest.approx(p, abs=1e-4)
    assert view["probability"] == pytest.approx(recalibrated(calibration, np.array([p]))[0], abs=1e-4)
    assert view["threshold"] == pytest.approx(
        recalibrated(calibration, np.array([session.thresholds["A"]]))[0], abs=1e-4)
    assert done.shown.brier()["pairs"] > 0
    # only what the page shows: without the calibration the same pair comes next, and every decision stays
    decided = session.decide().values
    session.calibrations.clear()
    assert session.next_pair("c") == pair and session.decide().values == decided


# ----------------------------------------------------------------------------- session


def test_two_reviewers_never_hold_the_same_pair(clustered):
    session = session_of(clustered)
    first, second = session.next_pair("ann"), session.next_pair("bob")
    assert first is not None and second is not None and first != second
    with pytest.raises(ReviewRefused, match="another reviewer"):
        session.answer("bob", "bob", first, SAME)
    assert session.next_pair("ann") != second  # asking again releases ann's pair, never takes bob's


def test_answers_survive_a_restart_and_undo_takes_back_the_last(clustered):
    session = session_of(clustered)
    pairs = []
    for verdict in (SAME, DIFFERENT, "not_sure"):
        pair = session.next_pair("c1")
        pairs.append(pair)
        assert session.answer("c1", "ann", pair, verdict).answer_id is not None
    assert session.undo("ann") == pairs[-1]
    session.store.close()
    again = session_of(clustered)
    assert [a.verdict for a in again.store.active()] == [SAME, DIFFERENT]
    assert again.progress()["answers"] == 2 and pairs[0] not in set(again.state.candidates(again.closure).pair)


def test_a_contradiction_waits_for_the_reviewer_and_keeps_what_they_choose(identified):
    session = session_of(identified)
    q, g1, g2 = "img008", "img000", "img002"  # query 0 and the database photos of g0, g1
    first = session.answer("c", "ann", pair_of(session, q, g2), SAME)  # wrongly: query 0 is g1
    assert first.answer_id is not None
    outcome = session.answer("c", "ann", pair_of(session, q, g1), SAME)
    assert outcome.answer_id is None and outcome.conflict.against == [first.answer_id]
    assert len(session.store.everything()) == 1  # nothing stored while the reviewer decides
    kept = session.answer("c", "ann", pair_of(session, q, g1), SAME, keep="new")
    statuses = {a.id: a.status for a in session.store.everything()}
    assert statuses == {first.answer_id: OVERRULED, kept.answer_id: ACTIVE}
    assert session.decide().values[0] == "g0"
    later = session.answer("c", "ann", pair_of(session, q, g2), SAME, keep="earlier")
    assert {a.id: a.status for a in session.store.everything()}[later.answer_id] == OVERRULED
    assert session.decide().values[0] == "g0"


def test_identification_takes_confirmed_identities_and_calls_rejected_queries_new(identified):
    session = session_of(identified)
    before = session.decide().values
    assert before[0] == "new_individual" and before[4] == "g1"  # the planted mistakes
    session.answer("c", "ann", pair_of(session, "img008", "img000"), SAME)
    session.answer("c", "ann", pair_of(session, "img012", "img002"), DIFFERENT)
    after = session.decide()
    assert after.values[0] == "g0" and after.values[4] == "new_individual"
    assert after.by_person.tolist() == [True, False, False, False, True]
    assert session.progress()["changes"] == {"identities confirmed": 1, "turned new": 1, "decisions changed": 2}


@pytest.mark.parametrize("method", ["agglomerative", "components", "leiden"])
def test_simulated_answers_repair_the_planted_clusters_with_every_clusterer(clustered, method, tmp_path):
    data = load_review(clustered / "review.npz")
    data.settings.method = method
    save_review(clustered / "review.npz", data)
    out = tmp_path / f"sim-{method}"
    summary = review.main(["simulate", str(clustered), "--truth", str(clustered.parent / "truth.csv"), "--answers", "30",
                           "--out", str(out)])
    truth = truth_of(clustered)
    found = pd.read_csv(out / "submission.csv")
    labels = [truth[i] for i in found["image_id"]]
    assert adjusted_rand_score(labels, found["cluster"]) == 1.0
    assert summary["by_verdict"]["same"] + summary["by_verdict"]["different"] == summary["answers"] <= 30
    table = pd.read_csv(out / "clusters.csv")
    assert set(table["decided_by"]) <= {"person", "model"} and "person" in set(table["decided_by"]) and (out / "review.html").is_file()
    assert json.loads((out / "reviewed.json").read_text())["tool"] == "reidzoo review"
    assert len(AnswerStore(out / ANSWERS_FILE, read_only=True).active()) == summary["answers"]


def test_simulate_with_no_answers_gives_the_runs_own_submission(clustered, identified, tmp_path):
    for run_dir in (clustered, identified):
        out = tmp_path / f"zero-{run_dir.parent.name}"
        review.main(["simulate", str(run_dir), "--truth", str(run_dir.parent / "truth.csv"), "--answers", "0",
                     "--out", str(out)])
        if run_dir == clustered:
            assert (out / "submission.csv").read_text() == (run_dir / "submission.csv").read_text()
        else:
            mine = pd.read_csv(out / "predictions.csv")
            theirs = pd.read_csv(run_dir / "predictions.csv")
            assert mine["prediction"].tolist() == theirs["prediction"].tolist()
            assert set(mine["decided_by"]) == {"model"}


def test_wrong_answers_are_simulated_at_the_rate_asked(clustered, tmp_path):
    summary = review.main(["simulate", str(clustered), "--truth", str(clustered.parent / "truth.csv"), "--answers", "30",
                           "--error-rate", "0.5", "--seed", "3", "--out", str(tmp_path / "noisy")])
    assert 0 < summary["wrong_on_purpose"] < sum(summary["asked"].values())


@pytest.mark.parametrize("error_prior", [0.0, 0.3])
def test_a_verification_question_brings_a_wrong_answer_out(identified, error_prior):
    from engine.review.simulate import read_truth, simulate

    session = session_of(identified, error_prior=error_prior)
    wrong = session.answer("c", "ann", pair_of(session, "img008", "img002"), SAME)  # query 0 is g0, not g1
    done = simulate(session, read_truth(identified.parent / "truth.csv", session.run), 20, 0.0)
    status = {a.id: a.status for a in session.store.everything()}[wrong.answer_id]
    if error_prior:  # asked again about query 0 and g0, the oracle contradicts the closure and looks again
        assert done.conflicts >= 1 and done.overruled == done.conflicts
        assert status == OVERRULED and session.decide().values[0] == "g0"
    else:  # every pair the wrong answer decides stays closed
        assert done.conflicts == 0 and status == ACTIVE and session.decide().values[0] == "g1"


def test_export_writes_the_confirmed_individuals_as_a_folders_gallery(identified, tmp_path, run_here):
    session = session_of(identified)
    session.answer("c", "ann", pair_of(session, "img008", "img000"), SAME)
    session.answer("c", "ann", pair_of(session, "img012", "img002"), DIFFERENT)
    session.store.close()
    gallery = tmp_path / "gallery"
    done = run_here(review, ["export", identified, "--out", gallery], tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    from data.formats import folders

    table = folders(gallery, {})
    assert sorted(table["identity"].value_counts().items()) == [("g0", 3), ("g1", 2), ("g2", 2), ("g3", 2)]
    again = run_here(review, ["export", identified, "--out", identified], tmp_path / "cache")
    assert again.returncode == 2 and again.stderr.startswith("error:") and "choose" in again.stderr


def test_damaged_or_foreign_run_folders_are_refused_in_one_line(clustered, tmp_path, run_here):
    (tmp_path / "plain").mkdir()
    for folder, words in ((tmp_path / "plain", "not an eval.py run folder"), (tmp_path / "nothing", "not a folder")):
        done = run_here(review, ["simulate", folder, "--truth", "x.csv", "--answers", "1", "--out", tmp_path / "o"],
                        tmp_path / "cache")
        assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr
    data = load_review(clustered / "review.npz")
    data.images.loc[0, "path"] = "/etc/passwd"
    save_review(clustered / "review.npz", data)
    with pytest.raises(DataError, match="outside the folder"):
        open_run(clustered)
    data.images.loc[0, "path"] = str(clustered.parent / "images" / "img000.jpg")
    data.settings.kind = "humpback"
    save_review(clustered / "review.npz", data)
    with pytest.raises(DataError, match="review works on animalclef and animalclef2026 runs"):
        open_run(clustered)
    (clustered / "review.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DataError, match="cannot be reviewed"):
        open_run(clustered)


def test_a_refit_in_the_background_ends_where_the_simulator_ends(clustered, tmp_path):
    import time

    from engine.cluster.constraints import canonical

    data = load_review(clustered / "review.npz")
    data.settings.thresholds["A"] = 0.9  # far too high: the answers pull it down
    save_review(clustered / "review.npz", data)
    truth = truth_of(clustered)
    sessions = []
    for background in (False, True):
        run = open_run(clustered)
        store = AnswerStore(tmp_path / f"bg-{background}.sqlite")
        session = ReviewSession(run, store, ReviewOptions(refit="always", min_answers=10, background=background))
        ids = run.images["image_id"].tolist()
        labels = {i: truth.get(i, run.images["identity"].iloc[k]) for k, i in enumerate(ids)}
        answered = 0
        for pair in range(len(run.data.pair_a)):
            a, b = ids[run.data.pair_a[pair]], ids[run.data.pair_b[pair]]
            if session.closure.known(int(run.data.pair_a[pair]), int(run.data.pair_b[pair])) is None:
                outcome = session.answer("c", "ann", pair, SAME if labels[a] == labels[b] else DIFFERENT)
                answered += outcome.answer_id is not None
            if answered == 14:
                break
        deadline = time.monotonic() + 20
        while session.redoing and time.monotonic() < deadline:
            time.sleep(0.02)
        sessions.append(session)
    plain, threaded = sessions
    assert plain.refits and plain.refits == threaded.refits  # the threshold was re-fitted, the same in both
    assert np.array_equal(canonical(plain.state.labels), canonical(threaded.state.labels))
    assert threaded.state.heavy is not threaded.state.clusterer  # its clusterings ran in the worker
    threaded.close()
    assert threaded.state.heavy.pool is None


SERVER_KILLED_WITH_ITS_WORKER = """
import os, numpy as np
from engine.cluster.graph import Graph
from engine.review.offload import WorkerClusterer
worker = WorkerClusterer("agglomerative", {})
worker.labels(Graph(3, np.array([0]), np.array([1]), np.array([0.9])), np.full(3, -1), [0.5])
open(os.environ["WORKER_PID_FILE"], "w").write(str(next(iter(worker.pool._processes))))
os._exit(0)  # as SIGKILL ends a server: nothing closed
"""


def test_the_clustering_worker_ends_with_a_killed_server(tmp_path):
    import os
    import subprocess
    import time

    from conftest import REPO

    pid_file = tmp_path / "worker.pid"
    done = subprocess.run([sys.executable, "-c", SERVER_KILLED_WITH_ITS_WORKER], cwd=REPO, timeout=120,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          env={**os.environ, "WORKER_PID_FILE": str(pid_file)})
    assert done.returncode == 0
    worker = int(pid_file.read_text())
    def running() -> bool:
        try:
            return Path(f"/proc/{worker}/stat").read_text().split()[2] != "Z"  # a zombie has ended
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 30
    while running():
        assert time.monotonic() < deadline, "the worker outlived its server"
        time.sleep(0.2)


def test_photos_reached_through_a_link_to_another_folder_are_served(tmp_path):
    import os
    import shutil

    run_dir = cluster_run(tmp_path / "linked")
    elsewhere = tmp_path / "photos-elsewhere"
    shutil.move(str(tmp_path / "linked" / "images"), elsewhere)
    os.symlink(elsewhere, tmp_path / "linked" / "images", target_is_directory=True)
    data = load_review(run_dir / "review.npz")
    data.settings.image_roots = [str(tmp_path / "linked")]  # the data's folder, holding the link
    save_review(run_dir / "review.npz", data)
    assert len(open_run(run_dir).images) == 16


def test_a_clusters_weight_in_the_choice_is_its_test_images_not_its_anchors(clustered):
    session = session_of(clustered)
    state = session.state
    found = state.candidates(session.closure)
    tested = np.bincount(state.labels[state.queries], minlength=int(state.labels.max()) + 1)
    a, b = state.pair_a[found.pair], state.pair_b[found.pair]
    la, lb = state.labels[a], state.labels[b]
    apart = la != lb
    expected = np.maximum(tested[la], 1) * np.maximum(tested[lb], 1)
    assert apart.any() and np.array_equal(found.impact[apart], expected[apart])
    anchored = state.labels[np.flatnonzero(~state.is_query)]
    assert (np.bincount(state.labels, minlength=len(tested))[anchored] > tested[anchored]).all()  # anchors left out

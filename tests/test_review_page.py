"""The review page: its application's refusals (through Starlette's test client), and a real
headless Chromium answering with the keyboard (Debian's chromium and chromium-driver, Selenium)."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time

import pytest
from review_worlds import cluster_run

from engine.outputs.review_file import ANSWERS_FILE
from engine.review.run import open_run
from engine.review.session import ReviewOptions, ReviewSession
from engine.review.store import AnswerStore

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from engine.review.app import create_app  # noqa: E402


def new_session(run_dir) -> ReviewSession:
    run = open_run(run_dir)
    return ReviewSession(run, AnswerStore(run.folder / ANSWERS_FILE), ReviewOptions())


@pytest.fixture
def client(tmp_path):
    return TestClient(create_app(new_session(cluster_run(tmp_path))))


def started(client: TestClient, name: str = "ann") -> dict:
    token = client.post("/api/session").json()["session"]
    headers = {"X-Review-Session": token}
    assert client.post("/api/reviewer", json={"name": name}, headers=headers).status_code == 200
    return headers


def test_images_are_served_by_their_number_and_nothing_else(client):
    found = client.get("/image/0?size=thumb")
    assert found.status_code == 200 and found.headers["content-type"] == "image/jpeg" and found.content[:2] == b"\xff\xd8"
    for url in ("/image/999", "/image/-1", "/image/0x1", "/image/..%2F..%2Fetc%2Fpasswd", "/image/%2Fetc%2Fpasswd",
                "/image/0?size=huge", "/static/..%2Freview.py", "/static/index.html", "/images/0", "/review.npz"):
        refused = client.get(url)
        assert refused.status_code == 404 and refused.json() == {"error": "not found"}, url
    page = client.get("/")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in page.text.replace("http-equiv", "")  # no asset from elsewhere


def test_changes_need_the_pages_session_token_and_json(client):
    assert client.post("/api/next").status_code == 403
    assert client.post("/api/answer", data={"pair": 0, "answer": "same"}).status_code == 403  # a cross-site form
    token = client.post("/api/session").json()["session"]
    headers = {"X-Review-Session": token}
    assert client.post("/api/next", headers=headers).json() == {"error": "give your name first"}
    assert client.post("/api/reviewer", content="name=ann", headers={**headers, "Content-Type": "text/plain"}).status_code == 415
    assert client.post("/api/reviewer", json={"name": ""}, headers=headers).status_code == 400
    headers = started(client)
    shown = client.post("/api/next", headers=headers).json()
    pair = shown["pair"]["pair"]
    for bad, status in (({"pair": pair, "answer": "maybe"}, 400), ({"pair": "0", "answer": "same"}, 400),
                        ({"pair": 10**6, "answer": "same"}, 404), ([1, 2], 400)):
        refused = client.post("/api/answer", json=bad, headers=headers)
        assert refused.status_code == status and set(refused.json()) == {"error"}, bad
    broken = client.post("/api/answer", content="{not json", headers={**headers, "Content-Type": "application/json"})
    assert broken.status_code == 400 and "Traceback" not in broken.text
    stored = client.post("/api/answer", json={"pair": pair, "answer": "same"}, headers=headers).json()
    assert stored["stored"] == 1 and stored["progress"]["answers"] == 1


def test_the_runs_keypoint_matcher_draws_the_pairs_correspondences(tmp_path):
    from core.config import save_config
    from core.schema import EvalConfig

    run_dir = cluster_run(tmp_path)
    plain = TestClient(create_app(new_session(run_dir)))
    assert plain.get("/matches/0").status_code == 404  # the run had no matcher
    cfg = EvalConfig()
    cfg.rerank.matcher, cfg.rerank.cache = "sift", str(tmp_path / "keypoints")
    save_config(cfg, run_dir / "config.yaml")
    client = TestClient(create_app(new_session(run_dir)))
    headers = started(client)
    assert client.post("/api/next", headers=headers).json()["pair"]["matches"] is True
    drawn = client.get("/matches/0")
    assert drawn.status_code == 200 and drawn.content[:2] == b"\xff\xd8"
    assert client.get("/matches/99999").status_code == 404 and client.get("/matches/..%2F0").status_code == 404


def test_off_loopback_every_request_needs_the_access_token(tmp_path):
    client = TestClient(create_app(new_session(cluster_run(tmp_path)), token="s3cret"))
    assert client.get("/").status_code == 401 and client.get("/image/0").status_code == 401
    assert client.get("/?token=wrong").status_code == 401
    assert client.get("/?token=s3cret").status_code == 200  # sets the cookie the page's requests carry
    assert client.get("/image/0").status_code == 200 and client.post("/api/session").status_code == 200
    other = TestClient(client.app)
    assert other.get("/image/0", headers={"X-Review-Token": "s3cret"}).status_code == 200
    assert other.get("/image/0?token=s3cret").status_code == 401  # the address carries it only to the page


# ----------------------------------------------------------------------------- a real browser


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        why = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):  # .ci/run installs them: there a missing browser is a failure, not a skip
            pytest.fail(why)
        pytest.skip(why)
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver), options=options)


@contextlib.contextmanager
def serving(session: ReviewSession):
    """The page of `session` on a loopback port: its URL."""
    import uvicorn

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    server = uvicorn.Server(uvicorn.Config(create_app(session), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def served(tmp_path):
    session = new_session(cluster_run(tmp_path))
    with serving(session) as url:
        yield url, session


def test_a_reviewer_answers_with_the_keyboard_undoes_and_finds_it_all_after_a_reload(served):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, session = served
    browser = _browser()
    try:
        wait = WebDriverWait(browser, 20)
        browser.get(url)
        name = wait.until(lambda b: b.find_element(By.ID, "name") if b.find_element(By.ID, "name").is_displayed() else None)
        name.send_keys("Ann Reviewer\n")

        def progress_says(text):
            return lambda b: text in b.find_element(By.ID, "progress").text

        wait.until(progress_says("0 answers"))
        shown = []
        for key in ("s", "d", "n"):
            pair = wait.until(lambda b: b.find_element(By.ID, "review").get_attribute("data-pair"))
            shown.append(pair)
            browser.find_element(By.TAG_NAME, "body").send_keys(key)
            wait.until(lambda b, seen=len(shown): f"{seen} answers" in b.find_element(By.ID, "progress").text)
        browser.find_element(By.TAG_NAME, "body").send_keys("z")
        wait.until(progress_says("2 answers"))
        assert browser.find_element(By.ID, "review").get_attribute("data-pair") == shown[-1]  # asked again
        browser.refresh()
        wait.until(progress_says("2 answers"))  # the name was remembered, the answers kept by the server
        assert [a.verdict for a in session.store.active()] == ["same", "different"]
        assert {a.reviewer for a in session.store.everything()} == {"Ann Reviewer"}
        assert [a.status for a in session.store.everything()] == ["active", "active", "undone"]
        image = browser.find_element(By.ID, "left")
        assert wait.until(lambda b: b.execute_script("return arguments[0].naturalWidth", image) > 0)
        browser.get(url + "image/..%2F..%2Fetc%2Fpasswd")
        assert "not found" in browser.page_source
    finally:
        browser.quit()


def test_the_page_shows_the_probability_the_answers_recalibrated_beside_the_models(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from engine.review.simulate import read_truth, simulate

    run_dir = cluster_run(tmp_path)
    run = open_run(run_dir)
    session = ReviewSession(run, AnswerStore(run.folder / ANSWERS_FILE), ReviewOptions(min_answers=10))
    simulate(session, read_truth(run_dir.parent / "truth.csv", run), 30, 0.0)
    assert session.calibrations
    with serving(session) as url:
        browser = _browser()
        try:
            wait = WebDriverWait(browser, 20)
            browser.get(url)
            wait.until(lambda b: b.find_element(By.ID, "name").is_displayed())
            browser.find_element(By.ID, "name").send_keys("Ann Reviewer\n")
            text = wait.until(lambda b: b.find_element(By.ID, "scores").text or None)
            assert "re-calibrated on your answers (the model said 0." in text, text
        finally:
            browser.quit()


def test_serving_off_loopback_makes_an_access_token_and_says_it(tmp_path, monkeypatch):
    import uvicorn

    from engine.review import commands

    class Listener:  # stands in for the socket: no address of this machine is really taken
        def __init__(self, *args):
            self.bound = None

        def setsockopt(self, *args):
            pass

        def bind(self, address):
            self.bound = address

        def listen(self, backlog):
            pass

        def getsockname(self):
            return (self.bound[0], 9999)

    served = {}
    import socket as real
    from types import SimpleNamespace

    monkeypatch.setattr(commands, "socket", SimpleNamespace(socket=Listener, AF_INET=real.AF_INET, AF_INET6=real.AF_INET6,
                                                             SOCK_STREAM=real.SOCK_STREAM, SOL_SOCKET=real.SOL_SOCKET,
                                                             SO_REUSEADDR=real.SO_REUSEADDR))
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: served.update(app=self.config.app))
    assert commands.is_loopback("127.0.0.1") and commands.is_loopback("::1") and commands.is_loopback("localhost")
    assert not commands.is_loopback("0.0.0.0") and not commands.is_loopback("192.168.1.7")
    lines = []
    commands.serve(cluster_run(tmp_path / "a"), host="192.168.1.7", port=0, token=None, answers=None,
                   options=ReviewOptions(), say=lines.append)
    token = lines[0].rsplit(" ", 1)[1]
    assert "not a loopback address" in lines[0] and lines[-1] == f"review page: http://192.168.1.7:9999/?token={token}"
    assert TestClient(served["app"]).get("/").status_code == 401
    lines.clear()
    commands.serve(cluster_run(tmp_path / "b"), host="127.0.0.1", port=0, token=None, answers=None,
                   options=ReviewOptions(), say=lines.append)
    assert lines[-1] == "review page: http://127.0.0.1:9999/" and TestClient(served["app"]).get("/").status_code == 200


def test_the_page_settles_a_contradiction_and_applies_the_answers(tmp_path, run_here):
    import pandas as pd
    from review_worlds import identify_run

    import review

    run_dir = identify_run(tmp_path / "i")
    session = new_session(run_dir)
    client = TestClient(create_app(session))
    headers = started(client)
    rows = session.run.row_of
    wrong, right = (session.pair_of[tuple(sorted((rows["img008"], rows[g])))] for g in ("img002", "img000"))
    assert client.post("/api/answer", json={"pair": wrong, "answer": "same"}, headers=headers).status_code == 200
    clash = client.post("/api/answer", json={"pair": right, "answer": "same"}, headers=headers)
    assert clash.status_code == 409 and clash.json()["conflict"]["against"] == [1]
    kept = client.post("/api/answer", json={"pair": right, "answer": "same", "keep": "new"}, headers=headers)
    assert kept.status_code == 200 and kept.json()["progress"]["answers"] == 1
    written = client.post("/api/apply", headers=headers).json()["folder"]
    table = pd.read_csv(f"{written}/predictions.csv")
    assert table["prediction"][0] == "g0" and table["decided_by"][0] == "person"
    assert (run_dir / "reviewed" / "reviewed.json").is_file() and (run_dir / "reviewed" / "review.html").is_file()
    session.store.close()
    again = run_here(review, ["apply", run_dir], tmp_path / "cache")  # the command line writes the same
    assert again.returncode == 0 and "reviewed outputs" in again.stdout
    assert pd.read_csv(run_dir / "reviewed" / "predictions.csv")["prediction"].tolist() == table["prediction"].tolist()

"""Load and faults for the review server, on loopback only: reviewers answering at once, the server
killed with SIGKILL in the middle and started again, then the stored answers compared with the
acknowledged ones.

    python scripts/bench/load_review.py --reviewers 20 --seconds 60 --images 2000

A generated clustering run (clustered embeddings, k-NN graph, agglomerative clusters; one small
photo for every image) is reviewed by `python review.py serve` in a child process on 127.0.0.1.
Each reviewer is a thread with its own page session: it asks for the next pair and answers it
from the true labels, as fast as the server lets it. At half time the server gets SIGKILL and is
started again on the same port; reviewers whose requests fail open a new session (as a reloaded
page does) and go on. At the end every acknowledged answer (a 200 with its id) must be in the
answers file, active, exactly once, with the pair and answer that was sent; no pair may have two
active answers; and while the server ran, no reviewer may have been handed a pair another held.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from benchmarking import REPO, cpu_line

from core.errors import cli_entry


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _make_run(folder: Path, images: int) -> tuple:
    """A run folder for `images` generated test images; (run folder, true label per image row)."""
    import numpy as np
    import pandas as pd
    from bench_cluster import generated
    from bench_review import _speed_graph
    from PIL import Image

    from core.ownership import EVAL, run_marker
    from engine.cluster.graph import Graph
    from engine.cluster.methods import CLUSTERERS
    from engine.outputs.review_file import REVIEW_FILE, ReviewData, ReviewSettings, image_frame, save_review

    x, labels = generated(images, seed=1)
    a, b, p = _speed_graph(x, labels, 10)
    photo = folder / "photo.jpg"
    Image.new("RGB", (64, 48), (90, 120, 90)).save(photo)
    rows = pd.DataFrame({"image_id": [f"i{k}" for k in range(images)], "identity": None, "path": str(photo),
                         "split": "query", "dataset": "load", "species": None, "orientation": None, "date": None,
                         "bbox": None})
    clusters = CLUSTERERS.build("agglomerative").labels(Graph(images, a, b, p), np.full(images, -1), [0.5])[0]
    settings = ReviewSettings("cluster", "animalclef2026", {"load": 0.5}, {"load": True}, ["embedding"], ["global"],
                              "agglomerative", {}, True, [str(folder)])
    run = folder / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps(run_marker(EVAL)))
    save_review(run / REVIEW_FILE, ReviewData(settings, image_frame(rows, 0), a, b, p, p[:, None], clusters))
    return run, labels, a, b


class Server:
    def __init__(self, run: Path, port: int, log: Path):
        self.run, self.port, self.log = run, port, log
        self.process = None

    def start(self) -> None:
        handle = open(self.log, "a")
        self.process = subprocess.Popen([sys.executable, "review.py", "serve", str(self.run), "--host", "127.0.0.1",
                                         "--port", str(self.port)], cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/progress", timeout=2).read()
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        raise RuntimeError(f"the review server did not start (log: {self.log})")

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(20)


def _post(port: int, path: str, payload: dict, session: str = "") -> tuple:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "X-Review-Session": session})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


class Reviewer(threading.Thread):
    def __init__(self, name: str, port: int, labels, pair_a, pair_b, stop: threading.Event, record: dict, lock):
        super().__init__(daemon=True)
        self.name_, self.port, self.labels, self.pair_a, self.pair_b = name, port, labels, pair_a, pair_b
        self.stop, self.record, self.lock = stop, record, lock

    def _session(self) -> str:
        status, found = _post(self.port, "/api/session", {})
        if status != 200:
            raise ConnectionError(found)
        _post(self.port, "/api/reviewer", {"name": self.name_}, found["session"])
        return found["session"]

    def run(self) -> None:
        session, pair = None, None
        while not self.stop.is_set():
            try:
                if session is None:
                    session = self._session()
                    status, found = _post(self.port, "/api/next", {}, session)
                    pair = found["pair"]["pair"] if status == 200 and found["pair"] else None
                if pair is None:
                    time.sleep(0.05)
                    session = None
                    continue
                with self.lock:
                    self.record["handed"].append((time.monotonic(), self.name_, pair))
                verdict = "same" if self.labels[self.pair_a[pair]] == self.labels[self.pair_b[pair]] else "different"
                status, found = _post(self.port, "/api/answer", {"pair": pair, "answer": verdict}, session)
                with self.lock:
                    if status == 200:
                        self.record["acknowledged"].append((found["stored"], pair, verdict, self.name_))
                        self.record["answered"].append((time.monotonic(), self.name_, pair))
                    else:
                        self.record["refused"].append((status, found.get("error", "")))
                pair = found["pair"]["pair"] if status == 200 and found.get("pair") else None
                if status != 200:
                    session = None
            except (urllib.error.URLError, ConnectionError, OSError, ValueError, KeyError):
                with self.lock:
                    self.record["failed"] += 1
                session, pair = None, None
                time.sleep(0.05)


@cli_entry
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reviewers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--no-kill", action="store_true", help="no SIGKILL in the middle")
    args = parser.parse_args(argv)
    print(f"CPU: {cpu_line()}", flush=True)
    from engine.outputs.review_file import ANSWERS_FILE
    from engine.review.store import ACTIVE, AnswerStore

    with tempfile.TemporaryDirectory(prefix="review-load-") as scratch:
        run, labels, pair_a, pair_b = _make_run(Path(scratch), args.images)
        port = _free_port()
        server = Server(run, port, Path(scratch) / "server.log")
        server.start()
        stop, lock = threading.Event(), threading.Lock()
        record = {"acknowledged": [], "answered": [], "handed": [], "refused": [], "failed": 0}
        reviewers = [Reviewer(f"reviewer{k:02d}", port, labels, pair_a, pair_b, stop, record, lock)
                     for k in range(args.reviewers)]
        start = time.monotonic()
        for reviewer in reviewers:
            reviewer.start()
        killed_at = None
        if not args.no_kill:
            time.sleep(args.seconds / 2)
            with lock:
                acknowledged_before = len(record["acknowledged"])
            server.kill()
            killed_at = time.monotonic() - start
            server.start()
            restarted_at = time.monotonic() - start
        time.sleep(max(0.0, args.seconds - (time.monotonic() - start)))
        stop.set()
        for reviewer in reviewers:
            reviewer.join(30)
        server.stop()
        store = AnswerStore(run / ANSWERS_FILE, read_only=True)
        stored = {a.id: a for a in store.everything()}
        active_pairs = [(a.image_a, a.image_b) for a in stored.values() if a.status == ACTIVE]
        acknowledged = record["acknowledged"]
        missing = [ack for ack in acknowledged if ack[0] not in stored or stored[ack[0]].status != ACTIVE
                   or stored[ack[0]].verdict != ack[2] or stored[ack[0]].reviewer != ack[3]]
        ids = [ack[0] for ack in acknowledged]
        twice = len(ids) - len(set(ids))
        print(f"{args.reviewers} reviewers for {args.seconds:.0f} s on {args.images} images"
              + (f"; SIGKILL at {killed_at:.1f} s ({acknowledged_before} answers acknowledged by then), serving again "
                 f"at {restarted_at:.1f} s" if killed_at else ""))
        print(f"acknowledged {len(acknowledged)}, stored {len(stored)} ({len(active_pairs)} active), acknowledged but "
              f"missing or changed {len(missing)}, acknowledged twice {twice}, pairs with two active answers "
              f"{len(active_pairs) - len(set(active_pairs))}, stored without acknowledgement "
              f"{len(stored) - len(set(ids))}")
        refusals = {}
        for status, message in record["refused"]:
            refusals[f"{status} {message[:60]}"] = refusals.get(f"{status} {message[:60]}", 0) + 1
        print(f"refused answers: {refusals or 'none'}; requests failed while the server was down: {record['failed']}")
        print(f"answers per second: {len(acknowledged) / args.seconds:.1f}")
        held = sum(n for what, n in refusals.items() if "another reviewer holds" in what)
        if missing or twice or len(active_pairs) != len(set(active_pairs)) or held:
            raise SystemExit("FAILED: an acknowledged answer is lost, changed or doubled, or a held pair was handed out")


if __name__ == "__main__":
    main()

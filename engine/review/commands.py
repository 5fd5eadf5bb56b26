"""What each `reidzoo-review` command does, and `eval.py review=ANSWERS`: a run opened, its answers
file opened, a session over both, then serve, simulate, apply or export."""
from __future__ import annotations

import ipaddress
import secrets
import socket
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np

from core.errors import ConfigError, DataError
from engine.outputs.review_file import ANSWERS_FILE
from engine.review.export import export_gallery
from engine.review.outputs import review_summary, write_into_run, write_reviewed
from engine.review.run import open_run
from engine.review.session import ReviewOptions, ReviewSession
from engine.review.simulate import read_truth, simulate
from engine.review.store import AnswerStore

LOOPBACK_NAMES = ("localhost",)


def session_for(run_dir, answers: Optional[str], options: ReviewOptions, read_only: bool = False) -> ReviewSession:
    run = open_run(run_dir)
    store = AnswerStore(Path(answers) if answers else run.folder / ANSWERS_FILE, read_only=read_only)
    return ReviewSession(run, store, options)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(run_dir, *, host: str, port: int, token: Optional[str], answers: Optional[str], options: ReviewOptions,
          say: Callable[[str], None] = print) -> None:
    """Serve the review page until interrupted."""
    try:
        import uvicorn

        from engine.review.app import create_app
    except ImportError as err:
        raise ConfigError(f"the review page needs FastAPI and uvicorn: pip install -e \".[review]\" ({err})") from err
    if not is_loopback(host) and not token:
        token = secrets.token_urlsafe(18)
        say(f"{host} is not a loopback address: every request needs the access token {token}")
    session = session_for(run_dir, answers, replace(options, background=True))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as err:
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror or err}") from err
    listener.listen(128)
    bound = listener.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    say(f"reviewing {session.run.folder} ({session.run.task}, {len(session.run.data.pair_a)} pairs); answers in "
        f"{session.store.path}")
    say(f"review page: http://{shown}:{bound}/" + (f"?token={token}" if token else ""))
    config = uvicorn.Config(create_app(session, token), log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    try:
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        session.close()
        session.store.close()


def simulate_into(run_dir, *, truth: str, answers: int, out: str, options: ReviewOptions, error_rate: float = 0.0,
                  seed: int = 0) -> Dict[str, object]:
    """`simulate`: the oracle's answers stored beside the reviewed outputs in `out`; the summary."""
    if answers < 0:
        raise ConfigError(f"--answers must be at least 0, got {answers}")
    run = open_run(run_dir)
    truth_rows = read_truth(truth, run)
    with tempfile.TemporaryDirectory(prefix=".review-", dir=Path(out).expanduser().absolute().parent) as scratch:
        store = AnswerStore(Path(scratch) / ANSWERS_FILE)
        session = ReviewSession(run, store, options)
        done = simulate(session, truth_rows, answers, error_rate, np.random.default_rng(seed))
        summary = {**review_summary(session), "asked": done.asked, "wrong_on_purpose": done.wrong,
                   "contradictions": done.conflicts, "contradictions_overruling": done.overruled,
                   "error_rate": error_rate, "page_probability": done.shown.brier()}
        decisions = session.decide()
        store.close()  # the answers file is complete (checkpointed) before it is copied
        summary["answers_file"] = ANSWERS_FILE
        write_reviewed(out, run, decisions, summary, extra={ANSWERS_FILE: store.path})
    return summary


def apply_answers(run_dir, answers: Optional[str], options: ReviewOptions, out: Optional[str] = None) -> Path:
    """`apply`: the reviewed outputs into `out` (default RUN_DIR/reviewed)."""
    session = session_for(run_dir, answers, options, read_only=True)
    try:
        return write_reviewed(out or session.run.folder / "reviewed", session.run, session.decide(), review_summary(session))
    finally:
        session.store.close()


def apply_to_eval_run(output_dir, answers: str) -> str:
    """eval.py review=ANSWERS: the answers applied to the run eval.py has just written; one line to print."""
    path = Path(answers).expanduser()
    if not path.is_file():
        raise DataError(f"review={answers}: no such answers file")
    session = session_for(output_dir, str(path), ReviewOptions(), read_only=True)
    try:
        decisions = session.decide()
        write_into_run(session.run, decisions, review_summary(session))
        ignored = f" ({session.ignored} about images this run does not hold)" if session.ignored else ""
        return (f"review: {len(session.store.active())} answers of {path} applied{ignored}, "
                f"{int(decisions.by_person.sum())} decisions made by a person (review.html)")
    finally:
        session.store.close()


def export_into(run_dir, out: str, answers: Optional[str]) -> Dict[str, int]:
    session = session_for(run_dir, answers, ReviewOptions(), read_only=True)
    try:
        return export_gallery(session.run, session.closure, out)
    finally:
        session.store.close()

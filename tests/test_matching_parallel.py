"""Threads for thread-safe matchers (engine.matching.parallel)."""
from __future__ import annotations

import threading
import time

import cv2

from engine.matching import parallel
from engine.matching.parallel import mapper, worker_count


class _Matcher:
    thread_safe = True


class _World:
    def __init__(self, processes):
        self.process_index, self.num_processes = 0, processes


def test_only_thread_safe_matchers_get_threads_shared_out_among_processes(monkeypatch):
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    assert worker_count(object()) == 1
    assert worker_count(_Matcher()) == 6
    assert worker_count(_Matcher(), _World(2)) == 3
    assert worker_count(_Matcher(), _World(12)) == 1


def test_the_pool_keeps_the_order_runs_at_once_and_turns_opencv_threads_off_inside():
    before = cv2.getNumThreads()
    running, most = set(), [0]
    lock = threading.Lock()

    def work(i):
        with lock:
            running.add(i)
            most[0] = max(most[0], len(running))
        time.sleep(0.02 * (5 - i % 5))  # later inputs finish first
        with lock:
            running.discard(i)
        return i * i

    with mapper(3) as each:
        assert cv2.getNumThreads() == 1
        assert list(each(work, range(10))) == [i * i for i in range(10)]
    assert most[0] > 1, "several inputs ran at once"
    assert cv2.getNumThreads() == before
    with mapper(1) as each:
        assert each is map

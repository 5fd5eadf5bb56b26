"""Threads for keypoint extraction and pair matching, for matchers whose work releases the GIL.

OpenCV's SIFT parallelises one image poorly (two OpenCV threads are barely faster than one), and
RANSAC not at all, but both release the GIL: two images extracted in two threads at once each take
less time than one image with two OpenCV threads (docs/results.md). So the
keypoint store and the pair engine run a matcher that says it is `thread_safe` in a pool of one
thread per core of this process (the cores shared out among the processes of a distributed run),
with OpenCV's own threads off meanwhile so the pool's threads do not compete with them.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

import cv2

from engine.accel import rank_and_world

In = TypeVar("In")
Out = TypeVar("Out")
MAX_WORKERS = 8


def worker_count(matcher, accelerator=None) -> int:
    """Threads for `matcher`'s work in this process: 1 unless it is thread-safe."""
    if not getattr(matcher, "thread_safe", False):
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores // rank_and_world(accelerator)[1]))


@contextmanager
def mapper(workers: int) -> Iterator[Callable[[Callable[[In], Out], Iterable[In]], Iterator[Out]]]:
    """A `map` that keeps the order of its inputs: the built-in one for one worker, else a thread
    pool's (results are yielded as they are ready, in order), with OpenCV's threads off inside."""
    if workers <= 1:
        yield map
        return
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            yield pool.map
    finally:
        cv2.setNumThreads(previous)

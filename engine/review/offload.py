"""The server's heavy clusterings in a worker process.

A re-fit clusters a whole dataset at every candidate threshold, then once more under the answers.
Run in a thread of the server, that pure-Python work holds the interpreter lock in turns with the
requests, and the next pair waits for it (tenfold at 10,000 photos). In a worker process it waits
for nothing. The worker is started (spawned: forking a threaded server is unsafe) on the first
clustering it is given, and does exactly what the server's own clusterer would: the same
registered clusterer, built from the run's settings, on the same inputs.
"""
from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from engine.cluster.constraints import PairConstraints
from engine.cluster.graph import Graph
from engine.cluster.methods import CLUSTERERS

PARENT_CHECK_S = 1.0


def _leave_with_parent(parent: int) -> None:
    """The worker's initializer: end when the server is gone, however it ended (a server killed with
    SIGKILL closes nothing, and its worker would wait for work for ever)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="reidzoo-parent-watch", daemon=True).start()


def _labels(method: str, args: Dict[str, Any], graph: Graph, anchors: np.ndarray, thresholds: List[float],
            constraints: Optional[PairConstraints]) -> List[np.ndarray]:
    return CLUSTERERS.build(method, args).labels(graph, anchors, thresholds, constraints)


class WorkerClusterer:
    """`labels` as the registered clusterer `method` gives them, computed in one worker process."""

    def __init__(self, method: str, args: Dict[str, Any]):
        self.method, self.args = method, dict(args)
        self.pool: Optional[ProcessPoolExecutor] = None

    def labels(self, graph: Graph, anchors: np.ndarray, thresholds: Sequence[float],
               constraints: Optional[PairConstraints] = None) -> List[np.ndarray]:
        if self.pool is None:
            self.pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_leave_with_parent, initargs=(os.getpid(),))
        return self.pool.submit(_labels, self.method, self.args, graph, anchors, list(thresholds),
                                constraints).result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None

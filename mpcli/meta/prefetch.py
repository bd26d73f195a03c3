"""Draw training batches ahead of time in worker processes.

A curriculum step spends a third of its CPU time or more making its examples
(simulating k-space, estimating ESPIRiT maps, choosing their crop) and the rest
in the network's forward and backward passes; on a GPU the examples are nearly
all of it. Each batch is a pure function of its key (stage, step, task index:
:func:`mpcli.meta.curriculum._draw`), so ``workers`` processes can make the
coming steps' batches while the main process trains on the current one, and
the run stays bit-for-bit the one without workers.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    # the main process owns SIGINT/SIGTERM: it finishes its step, checkpoints, then shuts the pool down
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class Prefetcher:
    """``get(key, upcoming)`` returns ``fn(*key)``; with ``workers`` > 0 the keys in ``upcoming``
    are submitted to a pool of that many processes (``threads`` torch threads each) first.

    ``fn`` and the keys must pickle (a module-level function, or a ``functools.partial`` of
    one). Results of keys no longer upcoming are dropped. Use as a context manager.
    """

    def __init__(self, fn: Callable[..., Any], workers: int = 0, threads: int = 1):
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.fn = fn
        self.pool = None
        if workers:
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_init_worker, initargs=(threads,))
        self.pending: dict[Hashable, Future] = {}

    def get(self, key: tuple, upcoming: Iterable[tuple] = ()) -> Any:
        if self.pool is None:
            return self.fn(*key)
        wanted = [key, *upcoming]
        for k in wanted:
            if k not in self.pending:
                self.pending[k] = self.pool.submit(self.fn, *k)
        for k in [k for k in self.pending if k not in wanted]:
            self.pending.pop(k).cancel()
        return self.pending.pop(key).result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        self.pending.clear()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

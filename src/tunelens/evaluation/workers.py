"""CPU parallelism for evaluation: independent forward passes on worker threads, one torch thread each.

Evaluation is many small, independent units of work (a batch of questions, a batch of prompts to
decode, a row of a held-out stream). On a few CPU cores torch's intra-op threads help little on such
shapes, and on a busy machine their spinning workers make small forward passes many times slower. So
with ``threads = T`` on CPU the units run on ``W = min(T, MAX_WORKERS)`` Python threads (torch releases
the GIL inside its kernels) with ``T // W`` intra-op threads each. Every unit is computed by one
thread with fixed intra-op threads, and results are collected in unit order, so the numbers do not
depend on which worker ran what or on W (for T ≤ MAX_WORKERS every unit runs single-threaded).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")
MAX_WORKERS = 4


@dataclass(frozen=True)
class Workers:
    """How many units run at once, and torch's intra-op threads inside each."""

    count: int = 1
    intra_op: int | None = None  # None: leave torch's setting alone (one worker, as loaded)

    def map(self, fn: Callable[[T], R], units: Sequence[T]) -> list[R]:
        """``[fn(u) for u in units]``, on ``count`` threads (each in inference mode), in unit order."""
        if self.count <= 1 or len(units) <= 1:
            return [fn(u) for u in units]

        def run(unit: T) -> R:
            with torch.inference_mode():  # grad mode is per thread: never build graphs in a worker
                return fn(unit)

        with ThreadPoolExecutor(max_workers=min(self.count, len(units))) as pool:
            return list(pool.map(run, units))


SERIAL = Workers()  # one unit after another, torch's threads as they are


def plan(threads: int | None, device: str) -> Workers:
    """Workers for ``threads`` CPU threads (None: torch's default) on ``device`` (one worker off the CPU)."""
    if not device.startswith("cpu"):
        return Workers(1, threads)
    total = threads if threads is not None else torch.get_num_threads()
    count = max(1, min(total, MAX_WORKERS))
    return Workers(count, max(1, total // count))


@contextmanager
def torch_threads(workers: Workers) -> Iterator[Workers]:
    """Set torch's intra-op threads for the duration (restored afterwards)."""
    before = torch.get_num_threads()
    if workers.intra_op is not None:
        torch.set_num_threads(workers.intra_op)
    try:
        yield workers
    finally:
        torch.set_num_threads(before)

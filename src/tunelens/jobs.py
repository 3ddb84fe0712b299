"""Per-tensor work as independent jobs whose results reduce by addition.

Every streaming stage (diff, vector, apply, subspace) is a list of jobs, one per aligned tensor,
and a pure function ``fn(job) -> result``. :func:`iter_jobs` is the in-process executor: a bounded
thread pool (torch releases the GIL in its kernels and in file reads, so reading one tensor
overlaps computing on another), results returned in job order, a progress bar on a TTY. Jobs carry
paths and byte ranges, never tensors; with ``executor="process"`` or ``"ray"`` (a picklable ``fn``)
:mod:`tunelens.executors` runs them in local processes or on a Ray cluster, in the same order.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from tunelens.checkpoints.stream import ByteRange
    from tunelens.config import ReadOptions

J = TypeVar("J")
R = TypeVar("R")


def show_progress(quiet: bool) -> bool:
    """Progress bars only on an interactive terminal and never with ``--quiet``."""
    return not quiet and sys.stderr.isatty()


def iter_jobs(
    jobs: Sequence[J],
    fn: Callable[[J], R],
    *,
    workers: int = 2,
    desc: str = "",
    quiet: bool = False,
    weight: Callable[[J], int] | None = None,
    executor: str = "thread",
    address: str | None = None,
    retries: int = 3,
    starting: Callable[[int], None] | None = None,
) -> Iterator[R]:
    """Yield ``fn(job)`` for each job, in order, with at most ``workers`` jobs in flight
    (``2 × workers`` for the process and ray executors). ``starting(i)`` is called as job ``i`` is
    handed out (the readahead of the stages that read tensors)."""
    from tqdm import tqdm

    total = sum(weight(j) for j in jobs) if weight else len(jobs)
    bar = tqdm(
        total=total,
        desc=desc,
        disable=not show_progress(quiet),
        unit="B" if weight else "tensor",
        unit_scale=bool(weight),
        leave=False,
    )

    def done(job: J) -> None:
        bar.update(weight(job) if weight else 1)

    def start(i: int) -> None:
        if starting is not None:
            starting(i)

    try:
        if executor == "process":
            from tunelens.executors import iter_process

            yield from iter_process(jobs, fn, workers=workers, retries=retries, on_done=done)
            return
        if executor == "ray":
            from tunelens.executors import iter_ray

            yield from iter_ray(jobs, fn, workers=workers, address=address, retries=retries, on_done=done)
            return
        if workers <= 1:
            for i, job in enumerate(jobs):
                start(i)
                yield fn(job)
                bar.update(weight(job) if weight else 1)
            return
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending: list[tuple[J, Future[R]]] = []
            submitted = 0
            while submitted < len(jobs) and len(pending) < workers:
                start(submitted)
                pending.append((jobs[submitted], pool.submit(fn, jobs[submitted])))
                submitted += 1
            while pending:
                job, fut = pending.pop(0)
                result = fut.result()
                if submitted < len(jobs):
                    start(submitted)
                    pending.append((jobs[submitted], pool.submit(fn, jobs[submitted])))
                    submitted += 1
                bar.update(weight(job) if weight else 1)
                yield result
    finally:
        bar.close()


def run_stage(
    jobs: Sequence[J],
    fn: Callable[[J], R],
    options: ReadOptions,
    *,
    desc: str,
    weight: Callable[[J], int],
    ranges: Callable[[J], list[ByteRange]] | None = None,
) -> list[R]:
    """All results of :func:`iter_jobs` in job order, with the executor, workers and quietness of a
    stage's :class:`ReadOptions`; with ``ranges`` (the bytes a job reads), the next jobs' bytes are
    read ahead (:class:`~tunelens.checkpoints.stream.Readahead`)."""
    from tunelens.checkpoints.stream import Readahead

    readahead = Readahead([ranges(j) for j in jobs]) if ranges is not None else None
    try:
        return list(
            iter_jobs(
                jobs,
                fn,
                workers=options.workers,
                desc=desc,
                quiet=options.quiet,
                weight=weight,
                executor=options.executor,
                address=options.address,
                retries=options.retries,
                starting=readahead,
            )  # fmt: skip
        )
    finally:
        if readahead is not None:
            readahead.close()

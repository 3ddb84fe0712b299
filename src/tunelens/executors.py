"""Executors beyond the in-process thread pool: local processes and a Ray cluster.

Both run the same per-tensor jobs as :func:`tunelens.jobs.iter_jobs`, with a *picklable* work
object (a module-level class holding the plan: paths, byte ranges, options — never tensors), and
hand the results back **in job order**, so that the caller reduces them (adds float64 sums, writes
rows) exactly as it does for the in-process run: the numbers are the same bit for bit. Every worker
runs torch with the caller's intra-op thread count, because a different count changes the order of
float additions inside a kernel.

- ``process``: ``workers`` spawned processes on this machine (``concurrent.futures``). The work
  object is sent once per process. A worker that dies (killed, out of memory, a crash in native
  code) breaks the pool: the pool is started again and every unfinished job is sent again, at most
  ``retries`` times; then the run stops with an error naming the jobs. An exception *raised* by a
  job (bad input) is not retried: it stops the run with its own message.
- ``ray``: tasks on a Ray cluster (``ray.init(address=...)``; without an address a local cluster
  with ``workers`` CPUs is started, and kept for the rest of the process). Each task has one CPU;
  Ray re-runs a task whose worker died up to ``retries`` times (``max_retries``); raised exceptions
  are not retried. Workers read the shards themselves, so the model paths must be visible at the
  same place on every node (a shared file system), and tunelens must be installed there.

At most ``2 × workers`` jobs are in flight (bounded memory); a progress bar, when shown, advances
as results come back in order.

``TUNELENS_FAULT_DIR`` is a fault-injection hook for tests: when it names a folder that holds a
file ``kill-next``, the next job to start anywhere claims that file (an atomic rename, so exactly
one job does) and kills its own worker process before doing any work.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from tunelens.errors import TunelensError

J = TypeVar("J")
R = TypeVar("R")

FAULT_ENV = "TUNELENS_FAULT_DIR"


def _maybe_die() -> None:
    """The test hook of the module doc: kill this process if a ``kill-next`` file can be claimed."""
    folder = os.environ.get(FAULT_ENV)
    if not folder:
        return
    try:
        os.rename(os.path.join(folder, "kill-next"), os.path.join(folder, f"killed-{os.getpid()}"))
    except OSError:
        return
    os._exit(17)


def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def torch_threads() -> int | None:
    """The caller's torch intra-op thread count (None when torch is not loaded: the jobs don't use it)."""
    import sys

    torch = sys.modules.get("torch")
    return None if torch is None else int(torch.get_num_threads())


def run_task(fn: Callable[[Any], Any], job: Any, threads: int | None) -> Any:
    """One job in a worker (Ray): the work object is fresh per task, so its readers are closed after."""
    _maybe_die()
    _set_threads(threads)
    try:
        return fn(job)
    finally:
        close = getattr(fn, "close", None)
        if close is not None:
            close()


# --- processes ----------------------------------------------------------------------------------------

_WORK: Callable[[Any], Any] | None = None


def _install(payload: bytes, threads: int | None) -> None:
    """Process initializer: unpickle the work object once and set torch's thread count."""
    global _WORK
    _set_threads(threads)
    _WORK = pickle.loads(payload)


def _process_task(job: Any) -> Any:
    _maybe_die()
    assert _WORK is not None, "worker not initialised"
    return _WORK(job)


def iter_process(
    jobs: Sequence[J],
    fn: Callable[[J], R],
    *,
    workers: int,
    retries: int,
    on_done: Callable[[J], None],
) -> Iterator[R]:
    """Results of ``fn`` over ``jobs`` in order, computed in ``workers`` spawned processes."""
    import multiprocessing

    try:
        payload = pickle.dumps(fn)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise TunelensError(f"this stage cannot run in worker processes: {exc}") from exc
    threads = torch_threads()
    ctx = multiprocessing.get_context("spawn")
    results: dict[int, R] = {}
    restarts = 0
    nxt = 0  # next job index to yield
    todo = list(range(len(jobs)))  # indices not yet finished, in order
    while todo:
        pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_install, initargs=(payload, threads)
        )
        broken = False
        try:
            inflight: dict[int, Future[R]] = {}
            queue = iter(list(todo))
            for i in queue:
                inflight[i] = pool.submit(_process_task, jobs[i])
                if len(inflight) >= 2 * workers:
                    break
            while inflight:
                i = min(inflight)
                try:
                    results[i] = inflight.pop(i).result()
                except BrokenProcessPool:
                    broken = True
                    break
                todo.remove(i)
                more = next(queue, None)
                if more is not None:
                    inflight[more] = pool.submit(_process_task, jobs[more])
                while nxt in results:
                    on_done(jobs[nxt])
                    yield results.pop(nxt)
                    nxt += 1
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if broken:
            restarts += 1
            if restarts > retries:
                raise TunelensError(
                    f"a worker process died {restarts} times (killed or crashed; out of memory?) with "
                    f"{len(todo)} jobs unfinished; giving up after --retries {retries}"
                )
    while nxt in results:
        on_done(jobs[nxt])
        yield results.pop(nxt)
        nxt += 1


# --- ray --------------------------------------------------------------------------------------------


def _ray(address: str | None, workers: int) -> Any:
    try:
        import ray
    except ImportError as exc:
        raise TunelensError("--executor ray needs the ray package: pip install 'tunelens[ray]'") from exc
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
        if address is None:
            kwargs["num_cpus"] = workers
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise TunelensError(f"cannot start or join the Ray cluster at {address or 'local'}: {exc}") from exc
    return ray


def iter_ray(
    jobs: Sequence[J],
    fn: Callable[[J], R],
    *,
    workers: int,
    address: str | None,
    retries: int,
    on_done: Callable[[J], None],
) -> Iterator[R]:
    """Results of ``fn`` over ``jobs`` in order, computed as Ray tasks (at most ``2 × workers`` in flight)."""
    ray = _ray(address, workers)
    from ray.exceptions import RayTaskError

    task = ray.remote(num_cpus=1, max_retries=retries, retry_exceptions=False)(run_task)
    fn_ref = ray.put(fn)
    threads = torch_threads()
    refs: list[Any] = []
    queue = iter(jobs)
    for job in queue:
        refs.append(task.remote(fn_ref, job, threads))
        if len(refs) >= 2 * workers:
            break
    for job in jobs:
        ref = refs.pop(0)
        try:
            result = ray.get(ref)
        except RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise TunelensError(f"a Ray task failed: {exc}") from exc
        except ray.exceptions.RayError as exc:
            raise TunelensError(f"a Ray task was lost after --retries {retries}: {type(exc).__name__}") from exc
        more = next(queue, None)
        if more is not None:
            refs.append(task.remote(fn_ref, more, threads))
        on_done(job)
        yield result

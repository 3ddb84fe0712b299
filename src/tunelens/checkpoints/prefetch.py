"""Start reading the inputs' shards while Python imports torch (a command's start-up).

A weight command's first read cannot start before ``import torch`` (about a second, longer from a cold
page cache) and the checkpoint headers are parsed. :func:`prefetch` runs first, imports nothing heavy,
and asks the kernel (``posix_fadvise(POSIX_FADV_WILLNEED)``, asynchronous) for the first bytes of every
safetensors shard of the named inputs, round robin over the models, up to a byte budget: the disk works
while the interpreter imports. Page cache is not the process's memory, and the budget keeps the advice
from evicting what the run reads next (:class:`~tunelens.checkpoints.stream.Readahead` takes over from
the first job). Anything that is not a readable local folder or file is left to the real opener, which
reports it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

PREFETCH_BYTES = 512 * 1024**2
CHUNK = 32 * 1024**2


def _shards(spec: str) -> list[Path]:
    """The safetensors / GGUF files of an input spec (``name=path[:λ]`` forms included), or []."""
    candidates = [spec]
    if "=" in spec:
        candidates.append(spec.split("=", 1)[1])
    for c in list(candidates):
        if ":" in c:
            candidates.append(c.rsplit(":", 1)[0])
    for c in candidates:
        p = Path(c).expanduser()
        try:
            if p.is_dir():
                return sorted(p.glob("*.safetensors")) or sorted(p.glob("*.gguf"))
            if p.is_file() and p.suffix in (".safetensors", ".gguf"):
                return [p]
        except OSError:
            return []
    return []


def plan(specs: Iterable[str], budget: int = PREFETCH_BYTES) -> list[tuple[Path, int, int]]:
    """``(file, offset, length)`` requests: CHUNK-sized steps from the start of every shard, round robin
    over the inputs (each model's shards in order), until ``budget`` bytes."""
    queues: list[list[tuple[Path, int]]] = []
    for spec in specs:
        files = []
        for f in _shards(spec):
            try:
                files.append((f, f.stat().st_size))
            except OSError:
                continue
        if files:
            queues.append(files)
    out: list[tuple[Path, int, int]] = []
    offsets = [(0, 0)] * len(queues)  # (file index, offset) per input
    total = 0
    while total < budget and any(i < len(q) for q, (i, _) in zip(queues, offsets, strict=True)):
        for k, q in enumerate(queues):
            i, off = offsets[k]
            if i >= len(q) or total >= budget:
                continue
            f, size = q[i]
            n = min(CHUNK, size - off, budget - total)
            if n > 0:
                out.append((f, off, n))
                total += n
            off += max(n, 0)
            offsets[k] = (i + 1, 0) if off >= size else (i, off)
    return out


def _advise(requests: list[tuple[Path, int, int]]) -> None:
    fds: dict[Path, int] = {}
    try:
        for f, off, n in requests:
            fd = fds.get(f)
            if fd is None:
                try:
                    fd = fds[f] = os.open(f, os.O_RDONLY)
                except OSError:
                    continue
            os.posix_fadvise(fd, off, n, os.POSIX_FADV_WILLNEED)
    finally:
        for fd in fds.values():
            os.close(fd)


def prefetch(specs: Iterable[str], budget: int = PREFETCH_BYTES) -> None:
    """Advise the first ``budget`` bytes of the inputs' shards, from a daemon thread (never delays start-up)."""
    if not hasattr(os, "posix_fadvise") or budget <= 0:
        return
    requests = plan(specs, budget)
    if requests:
        threading.Thread(target=_advise, args=(requests,), name="tunelens-prefetch", daemon=True).start()

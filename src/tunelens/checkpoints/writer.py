"""A streaming writer of sharded safetensors checkpoints with the header planned up front.

Because every output tensor's name, shape and dtype are known from the inputs' headers before any
data is read, each shard's header is written first and each tensor is then written with ``pwrite``
straight from its memory at its final offset: one copy, large sequential writes, any order, any
thread — or any process: :meth:`ShardedWriter.target` gives a tensor's file and offset, and
:func:`write_at` writes there from a worker that opens the file itself.
``safetensors.torch.save_file`` needs the whole state dict in memory and measured ~0.4 GB/s
here (``bench/``). The files follow the safetensors format exactly (8-byte little-endian header
length, JSON header padded with spaces to 8 bytes, contiguous data) and load with
``safetensors`` and ``transformers`` (tests check both).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunelens.checkpoints.index import DTYPE_SIZES, INDEX_NAME, SINGLE_NAME
from tunelens.checkpoints.stream import ST_DTYPES

DEFAULT_SHARD_BYTES = 5 * 1024**3


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype code, e.g. "BF16"

    @property
    def nbytes(self) -> int:
        n = DTYPE_SIZES[self.dtype]
        for s in self.shape:
            n *= s
        return n


class ShardedWriter:
    """Write planned tensors into ``folder`` as ``model.safetensors`` or shards + index.

    Use as a context manager; :meth:`write` each planned tensor exactly once. On exit without
    error it checks every tensor was written and writes the index.
    """

    def __init__(
        self,
        folder: Path,
        plan: list[PlannedTensor],
        *,
        max_shard_bytes: int = DEFAULT_SHARD_BYTES,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.plan = {p.name: p for p in plan}
        if len(self.plan) != len(plan):
            raise ValueError("duplicate tensor names in the write plan")
        groups: list[list[PlannedTensor]] = [[]]
        size = 0
        for p in plan:
            if groups[-1] and size + p.nbytes > max_shard_bytes:
                groups.append([])
                size = 0
            groups[-1].append(p)
            size += p.nbytes
        n = len(groups)
        names = [SINGLE_NAME] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self.shard_names = names
        self._where: dict[str, tuple[int, int]] = {}  # name → (fd, absolute offset)
        self._fds: list[int] = []
        self._written: set[str] = set()
        meta = {"format": "pt", **(metadata or {})}
        for fname, group in zip(names, groups, strict=True):
            header: dict[str, Any] = {"__metadata__": meta}
            off = 0
            # widest dtypes first (as safetensors does): every tensor starts aligned to its element size
            for p in sorted(group, key=lambda q: -DTYPE_SIZES[q.dtype]):
                header[p.name] = {
                    "dtype": p.dtype,
                    "shape": list(p.shape),
                    "data_offsets": [off, off + p.nbytes],
                }
                off += p.nbytes
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)
            fd = os.open(self.folder / fname, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self._fds.append(fd)
            _pwrite_all(fd, struct.pack("<Q", len(raw)) + raw, 0)
            base = 8 + len(raw)
            os.ftruncate(fd, base + off)
            for p in group:
                start = header[p.name]["data_offsets"][0]
                self._where[p.name] = (fd, base + start)
        self._weight_map = {p.name: fname for fname, g in zip(names, groups, strict=True) for p in g}
        self._paths = {fd: str(self.folder / fname) for fd, fname in zip(self._fds, names, strict=True)}

    def __enter__(self) -> ShardedWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            if exc_type is None:
                missing = [n for n in self.plan if n not in self._written]
                if missing:
                    raise RuntimeError(f"writer closed with {len(missing)} planned tensors unwritten ({missing[0]})")
                if len(self.shard_names) > 1:
                    total = sum(p.nbytes for p in self.plan.values())
                    index = {"metadata": {"total_size": total}, "weight_map": self._weight_map}
                    (self.folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        finally:
            for fd in self._fds:
                os.close(fd)
            self._fds.clear()

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write one planned tensor (its dtype and shape must match the plan)."""
        fd, offset = self._where[name]
        _write(fd, offset, self.plan[name], tensor)
        self._written.add(name)

    def target(self, name: str) -> WriteTarget:
        """Where planned tensor ``name`` goes, for :func:`write_at` in another thread or process."""
        fd, offset = self._where[name]
        return WriteTarget(self._paths[fd], offset, self.plan[name])

    def mark_written(self, name: str) -> None:
        """Record that ``name`` was written through :func:`write_at`."""
        if name not in self.plan:
            raise KeyError(name)
        self._written.add(name)


@dataclass(frozen=True)
class WriteTarget:
    """A planned tensor's shard file and absolute byte offset (picklable: a path, not a handle)."""

    path: str
    offset: int
    planned: PlannedTensor


def write_at(target: WriteTarget, tensor: torch.Tensor) -> None:
    """Write ``tensor`` at ``target`` (the shard exists: its header and size were laid out up front)."""
    fd = os.open(target.path, os.O_WRONLY)
    try:
        _write(fd, target.offset, target.planned, tensor)
    finally:
        os.close(fd)


def write_rows(target: WriteTarget, start: int, tensor: torch.Tensor) -> None:
    """Write ``tensor`` as rows ``start...`` of the planned tensor at ``target`` (the whole tensor when it
    has every row); its dtype and trailing dims must match the plan."""
    p = target.planned
    if not p.shape or (start == 0 and tuple(tensor.shape) == p.shape):
        write_at(target, tensor)
        return
    rows = tensor.shape[0]
    if ST_DTYPES.get(tensor.dtype) != p.dtype or tuple(tensor.shape[1:]) != p.shape[1:] or start + rows > p.shape[0]:
        got = f"rows {start}+{rows} of {tensor.dtype} {tuple(tensor.shape)}"
        raise ValueError(f"{p.name}: {got}, planned {p.dtype} {p.shape}")
    row_bytes = p.nbytes // p.shape[0]
    fd = os.open(target.path, os.O_WRONLY)
    try:
        t = tensor.contiguous()
        if t.numel():
            _pwrite_all(fd, memoryview(t.view(-1).view(torch.uint8).numpy()), target.offset + start * row_bytes)  # type: ignore[arg-type]
    finally:
        os.close(fd)


def _write(fd: int, offset: int, p: PlannedTensor, tensor: torch.Tensor) -> None:
    if ST_DTYPES.get(tensor.dtype) != p.dtype or tuple(tensor.shape) != p.shape:
        raise ValueError(f"{p.name}: got {tensor.dtype} {tuple(tensor.shape)}, planned {p.dtype} {p.shape}")
    t = tensor.contiguous()
    if p.nbytes:
        _pwrite_all(fd, memoryview(t.view(-1).view(torch.uint8).numpy()), offset)  # type: ignore[arg-type]


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done : done + (1 << 30)], offset + done)

"""Read tensors one at a time, straight from the file into the tensor's memory.

A tensor is read with one ``readinto`` of its byte range (one copy, no mmap page faults); the
result equals ``safetensors.torch.load_file`` bit for bit (tests check it) and measured faster on
this I/O-bound pass (``bench/``). Pickle checkpoints (``--allow-pickle``) go through
``torch.load(weights_only=True, mmap=True)``; GGUF tensors are read and de-quantized a chunk of rows
at a time by :func:`tunelens.checkpoints.gguf.read_gguf_into`.
"""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from io import FileIO
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import torch

from tunelens.checkpoints.index import TensorInfo
from tunelens.checkpoints.naming import Part
from tunelens.errors import TunelensError

TORCH_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
ST_DTYPES: dict[torch.dtype, str] = {v: k for k, v in TORCH_DTYPES.items()}


class TensorReader:
    """Reads tensors by :class:`TensorInfo`, keeping one open handle per file. A context manager."""

    def __init__(self) -> None:
        self._files: dict[Path, FileIO] = {}
        self._pickles: dict[Path, dict[str, Any]] = {}
        self._gguf_buffer: list[Any] = [None]  # reusable bytes of one GGUF chunk

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()
        self._pickles.clear()
        self._gguf_buffer = [None]

    def read(self, info: TensorInfo) -> torch.Tensor:
        """The stored tensor, in its stored dtype and shape."""
        if info.begin < 0:
            return self._read_pickle(info)
        return self.read_into(info, torch.empty(info.shape, dtype=TORCH_DTYPES[info.dtype]))

    def read_into(self, info: TensorInfo, out: torch.Tensor) -> torch.Tensor:
        """Fill ``out`` (contiguous, ``info.dtype`` and ``info.shape``; safetensors or GGUF) with the tensor."""
        if info.nbytes == 0:
            return out
        fh = self._files.get(info.file)
        if fh is None:
            try:
                fh = FileIO(info.file, "rb")
            except OSError as exc:
                raise TunelensError(f"{info.file}: cannot open ({exc.strerror})") from exc
            self._files[info.file] = fh
        if info.encoding == "gguf":
            from tunelens.checkpoints.gguf import read_gguf_into

            return read_gguf_into(fh, info, out, self._gguf_buffer)
        view = memoryview(out.view(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]
        fh.seek(info.begin)
        got = 0
        while got < info.nbytes:
            n = fh.readinto(view[got:])
            if not n:
                raise TunelensError(f"{info.file}: truncated while reading {info.name}")
            got += n
        return out

    def read_float(self, info: TensorInfo) -> torch.Tensor:
        """The tensor as float32 (the compute dtype of every tunelens statistic)."""
        t = self.read(info)
        return t if t.dtype == torch.float32 else t.float()

    def _read_pickle(self, info: TensorInfo) -> torch.Tensor:
        state = self._pickles.get(info.file)
        if state is None:
            state = torch.load(info.file, map_location="cpu", weights_only=True, mmap=True)
            self._pickles[info.file] = state
        t: torch.Tensor = state[info.name].clone()
        return t


def row_block(info: TensorInfo, start: int, stop: int) -> TensorInfo | None:
    """The rows ``[start, stop)`` of a safetensors tensor as a tensor of their own (its bytes are one
    contiguous range); None when the storage cannot address rows (pickle; GGUF blocks and permuted rows)."""
    if info.encoding != "safetensors" or not info.shape:
        return None
    row_bytes = info.nbytes // info.shape[0] if info.shape[0] else 0
    return replace(
        info,
        shape=(stop - start, *info.shape[1:]),
        begin=info.begin + start * row_bytes,
        end=info.begin + stop * row_bytes,
    )


def select_part(t: torch.Tensor, part: Part) -> torch.Tensor:
    """The slice of a stored tensor that ``part`` names (the whole tensor when not fused)."""
    if part.dim is None:
        return t
    return t.narrow(part.dim, part.start, part.stop - part.start)


def to_out_in(t: torch.Tensor, part: Part) -> torch.Tensor:
    """A 2-D weight in the ``[out, in]`` convention (GPT-2 Conv1D weights are transposed)."""
    return t.T if t.dim() == 2 and part.layout == "in_out" else t


#: one stored byte range: file, absolute begin, end
ByteRange = tuple[Path, int, int]
READAHEAD_BYTES = 512 * 1024**2


class Readahead:
    """Ask the kernel to read the next jobs' byte ranges while the current ones are computed.

    Reads from a cold disk run at the device's speed only with enough requests in flight: two
    workers each blocked in one ``readinto`` measured ~0.9 GB/s where ``cat`` streams 1.3-1.8 GB/s.
    ``posix_fadvise(POSIX_FADV_WILLNEED)`` on the ranges of the next jobs (up to ``ahead_bytes``
    beyond the job being started) starts their reads asynchronously; the workers' reads then find
    the pages cached. Page cache is not the process's memory (RSS), and the budget keeps it from
    evicting what the workers are about to read.
    """

    def __init__(self, ranges: list[list[ByteRange]], ahead_bytes: int = READAHEAD_BYTES) -> None:
        self.ranges = ranges
        self.ahead_bytes = ahead_bytes
        self._next = 0  # first job not advised yet
        self._fds: dict[Path, int] = {}
        self._sizes = [sum(end - begin for _, begin, end in job) for job in ranges]

    def __call__(self, index: int) -> None:
        """Job ``index`` is starting: advise every job after it within the byte budget."""
        budget = 0
        j = index
        while j < len(self.ranges) and budget < self.ahead_bytes:
            budget += self._sizes[j]
            if j >= self._next:
                for file, begin, end in self.ranges[j]:
                    self._advise(file, begin, end)
                self._next = j + 1
            j += 1

    def _advise(self, file: Path, begin: int, end: int) -> None:
        if not hasattr(os, "posix_fadvise") or end <= begin:
            return
        fd = self._fds.get(file)
        if fd is None:
            try:
                fd = self._fds[file] = os.open(file, os.O_RDONLY)
            except OSError:
                return  # the reader reports unreadable files itself
        os.posix_fadvise(fd, begin, end - begin, os.POSIX_FADV_WILLNEED)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class _Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=_Closable)


class _PerThread(Generic[C]):
    """One object per worker thread, made on first use; :meth:`close` closes them all. Pickles as an
    empty pool: open files and buffers never travel, a worker that unpickles one starts afresh."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[C] = []
        self._lock = threading.Lock()

    def _new(self) -> C:
        raise NotImplementedError

    def get(self) -> C:
        mine: C | None = getattr(self._local, "obj", None)
        if mine is None:
            mine = self._local.obj = self._new()
            with self._lock:
                self._all.append(mine)
        return mine

    def close(self) -> None:
        with self._lock:
            for obj in self._all:
                obj.close()
            self._all.clear()
        self._local = threading.local()

    def __getstate__(self) -> dict[str, object]:
        return {}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__()  # type: ignore[misc]


class ReaderPool(_PerThread[TensorReader]):
    """One :class:`TensorReader` per worker thread."""

    def _new(self) -> TensorReader:
        return TensorReader()


class Scratch:
    """Per-thread reusable buffers, so that each tensor is read, converted and written without fresh
    allocations: a new multi-megabyte tensor is a fresh ``mmap`` whose pages the kernel zero-fills on
    first touch, and on the ~1B pair that page-faulting cost more system time than the I/O itself.
    Buffers grow to the largest tensor seen (memory: a few times the largest tensor per worker, as
    before, but allocated once). A returned tensor is valid until the same ``key`` is asked again."""

    def __init__(self) -> None:
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, key: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        n = 1
        for d in shape:
            n *= d
        buf = self._bufs.get(key)
        if buf is None or buf.dtype != dtype or buf.numel() < n:
            buf = self._bufs[key] = torch.empty(n, dtype=dtype)
        return buf[:n].view(shape)

    def read(self, key: str, info: TensorInfo, reader: TensorReader) -> torch.Tensor:
        """The stored tensor ``info`` (stored dtype and shape), read into buffer ``key``."""
        if info.begin < 0:  # pickle checkpoints: the reader's own path
            return reader.read(info)
        return reader.read_into(info, self.get(key, TORCH_DTYPES[info.dtype], info.shape))

    def read_float(self, key: str, info: TensorInfo, reader: TensorReader) -> torch.Tensor:
        """``info`` as float32 in buffer ``key`` (read in place when stored as float32; other dtypes go
        through one shared ``raw`` buffer, converted at once)."""
        raw = self.read(key if info.dtype == "F32" else "raw", info, reader)
        if raw.dtype == torch.float32:
            return raw
        return self.get(key, torch.float32, info.shape).copy_(raw)

    def close(self) -> None:
        self._bufs.clear()


class ScratchPool(_PerThread[Scratch]):
    """One :class:`Scratch` per worker thread."""

    def _new(self) -> Scratch:
        return Scratch()

"""A model's bit-packed activation patterns on disk: one raw ``uint8`` array per model.

Layout: ``(layers, tokens, ceil(d_ff / 8))`` C-order, no header, so
``np.memmap(path, dtype=np.uint8, mode="r", shape=(layers, tokens, nbytes))`` opens it. Disk use is
``layers * tokens * ceil(d_ff / 8)`` bytes per stored model. Blocks are written and read with
positioned I/O (``os.pwrite`` / ``os.pread``) rather than through a mapping, so the pages the kernel
caches never count toward this process's resident memory: memory stays flat however long the
corpus is.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from tunelens.errors import TunelensError


def store_bytes(layers: int, tokens: int, d_ff: int) -> int:
    """Bytes one model's packed patterns take on disk."""
    return layers * tokens * ((d_ff + 7) // 8)


class PatternStore:
    """Fixed-size file of packed patterns, written once by one model and read by the later ones."""

    def __init__(self, path: Path, layers: int, tokens: int, d_ff: int) -> None:
        self.path = Path(path)
        self.layers, self.tokens, self.d_ff = layers, tokens, d_ff
        self.nbytes = (d_ff + 7) // 8
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(self.fd, store_bytes(layers, tokens, d_ff))
        except OSError as exc:
            os.close(self.fd)
            raise TunelensError(f"cannot create the pattern file {self.path}: {exc.strerror}") from exc

    def _offset(self, layer: int, row: int, n: int) -> int:
        if not (0 <= layer < self.layers and 0 <= row and row + n <= self.tokens):
            raise IndexError(f"block layer={layer} rows={row}:{row + n} outside ({self.layers}, {self.tokens})")
        return (layer * self.tokens + row) * self.nbytes

    def write(self, layer: int, row: int, packed: np.ndarray[Any, np.dtype[np.uint8]]) -> None:
        """Store ``packed`` (n, nbytes) as tokens ``row : row + n`` of ``layer``."""
        n = packed.shape[0]
        data = np.ascontiguousarray(packed, dtype=np.uint8).tobytes()
        offset = self._offset(layer, row, n)
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, offset)
            view, offset = view[written:], offset + written

    def read(self, layer: int, row: int, n: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
        """Tokens ``row : row + n`` of ``layer`` as (n, nbytes)."""
        offset = self._offset(layer, row, n)
        size = n * self.nbytes
        chunks: list[bytes] = []
        while size:
            chunk = os.pread(self.fd, size, offset)
            if not chunk:
                raise RuntimeError(f"{self.path}: short read at offset {offset}")
            chunks.append(chunk)
            size, offset = size - len(chunk), offset + len(chunk)
        return np.frombuffer(b"".join(chunks), dtype=np.uint8).reshape(n, self.nbytes)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> PatternStore:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

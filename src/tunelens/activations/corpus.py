"""The corpus: text files, JSONL or folders of them, tokenized once into a token file on disk.

Every model sees the same token ids: the corpus is tokenized once with the shared tokenizer into
``tokens.u32`` (little-endian uint32, one id per stream token) and every model reads its batches
from that file. The token stream is the documents' tokens (no special tokens added), each document
followed by the tokenizer's EOS token when it has one. Sequences are ``seq_len`` tokens: the BOS
token (when added) and then the next ``seq_len - 1`` (or ``seq_len``) stream tokens. No padding is
ever run: full sequences go in batches, the last shorter sequence runs alone at its own length.

Documents: a ``.jsonl`` line's ``text`` field (``--text-field``), or a whole text file (tokenized in
pieces split after a line break, so memory stays bounded). A JSONL file may start with one header
object carrying a ``"_header"`` key (licence, source); it is never text and is recorded in the
output. ``.gz`` files are read compressed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from tunelens.activations.options import ActivationOptions
from tunelens.errors import TunelensError

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PIECE_CHARS = 1 << 20  # a text file is tokenized in pieces of about this many characters
CHUNK_CHARS = 4 << 20  # pieces handed to the tokenizer at once
TOKEN_DTYPE = np.dtype("<u4")


@dataclass(frozen=True)
class Batch:
    """``input_ids`` [B, T] of B sequences of one length; positions ``skip:`` of each are counted."""

    input_ids: np.ndarray[Any, np.dtype[np.int64]]
    skip: int

    @property
    def tokens(self) -> int:
        b, t = self.input_ids.shape
        return int(b * (t - self.skip))


@dataclass(frozen=True)
class TokenizedCorpus:
    """The token file and how it is cut into sequences."""

    path: Path
    stream_tokens: int
    bos_id: int | None
    count_bos: bool
    seq_len: int
    batch_size: int
    identity: dict[str, Any]

    @property
    def capacity(self) -> int:
        """Stream tokens per sequence."""
        return self.seq_len - (1 if self.bos_id is not None else 0)

    @property
    def sequences(self) -> int:
        return -(-self.stream_tokens // self.capacity)

    @property
    def tokens(self) -> int:
        """Counted positions: every stream token, plus each sequence's BOS when BOS counts."""
        extra = self.sequences if (self.bos_id is not None and self.count_bos) else 0
        return self.stream_tokens + extra

    @property
    def max_id(self) -> int:
        return int(self.identity["max_token_id"])

    def batches(self) -> Iterator[Batch]:
        """The same batches, in the same order, for every model."""
        cap, n = self.capacity, self.stream_tokens
        full = n // cap
        skip = 1 if (self.bos_id is not None and not self.count_bos) else 0
        with self.path.open("rb") as fh:
            for first in range(0, full, self.batch_size):
                rows = min(self.batch_size, full - first)
                yield Batch(self._read(fh, first * cap, rows, cap), skip)
            if n > full * cap:
                yield Batch(self._read(fh, full * cap, 1, n - full * cap), skip)

    def _read(self, fh: IO[bytes], start: int, rows: int, length: int) -> np.ndarray[Any, np.dtype[np.int64]]:
        """``rows`` sequences of ``length`` stream tokens from stream position ``start``, BOS prepended."""
        fh.seek(start * TOKEN_DTYPE.itemsize)
        raw = fh.read(rows * length * TOKEN_DTYPE.itemsize)
        ids = np.frombuffer(raw, dtype=TOKEN_DTYPE).astype(np.int64).reshape(rows, length)  # (B, T)
        if self.bos_id is None:
            return ids
        return np.concatenate([np.full((rows, 1), self.bos_id, dtype=np.int64), ids], axis=1)  # (B, 1 + T)


def find_files(paths: list[Path]) -> list[Path]:
    """Corpus files: the files given, and the text / JSONL files under the folders given (sorted)."""
    out: list[Path] = []
    for p in paths:
        p = Path(p).expanduser()
        if not p.exists():
            raise TunelensError(f"corpus {p}: no such file or folder")
        if p.is_file():
            out.append(p)
            continue
        found = sorted(f for f in p.rglob("*") if f.is_file() and _kind(f) is not None)
        if not found:
            raise TunelensError(f"corpus folder {p} holds no .txt / .jsonl files (optionally .gz)")
        out.extend(found)
    if not out:
        raise TunelensError("no corpus files given")
    return list(dict.fromkeys(out))


def tokenize(files: list[Path], tokenizer: Any, options: ActivationOptions, work_dir: Path) -> TokenizedCorpus:
    """Tokenize ``files`` once into ``work_dir/tokens.u32`` (stops at ``options.max_tokens``)."""
    bos_id = _bos_id(tokenizer, options)
    eos_id = tokenizer.eos_token_id
    limit = options.max_tokens
    path = work_dir / "tokens.u32"
    total, documents, max_id, truncated = 0, 0, -1, False
    records: list[dict[str, Any]] = []
    headers: list[Any] = []
    with path.open("wb") as out:
        for file in files:
            if limit is not None and total >= limit:
                truncated = True
                records.append({"path": str(file), "used": False})
                continue
            entry: dict[str, Any] = {"path": str(file), "bytes": file.stat().st_size, "sha256": _sha256(file)}
            docs = 0
            doc_start: int | None = None  # stream position where the current document began
            chunks = _chunks(_pieces(file, options.text_field, headers))
            for texts, ends in chunks:
                encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
                ids: list[int] = []
                for piece, end in zip(encoded, ends, strict=True):
                    if doc_start is None:
                        doc_start = total + len(ids)
                    ids.extend(piece)
                    if end:
                        if eos_id is not None:
                            ids.append(eos_id)
                        docs += int(limit is None or doc_start < limit)  # some of its tokens are used
                        doc_start = None
                if limit is not None and total + len(ids) >= limit:
                    truncated = total + len(ids) > limit or next(chunks, None) is not None
                    ids = ids[: limit - total]
                arr = np.asarray(ids, dtype=np.int64)
                if arr.size:
                    if arr.min() < 0 or arr.max() > np.iinfo(TOKEN_DTYPE).max:
                        raise TunelensError(f"{file}: the tokenizer returned ids outside uint32")
                    max_id = max(max_id, int(arr.max()))
                out.write(arr.astype(TOKEN_DTYPE).tobytes())
                total += int(arr.size)
                if limit is not None and total >= limit:
                    break
            chunks.close()
            if doc_start is not None and (limit is None or doc_start < limit):
                docs += 1  # a text file cut by --max-tokens before its end
            entry.update(documents=docs, used=True)
            documents += docs
            records.append(entry)
    if total == 0:
        raise TunelensError("the corpus holds no text (no documents, or every document is empty)")
    identity = {
        "files": records,
        "headers": headers,
        "documents": documents,
        "stream_tokens": total,
        "separator_token_id": eos_id,
        "bos_token_id": bos_id,
        "bos_counted": bool(bos_id is not None and options.count_bos),
        "seq_len": options.seq_len,
        "max_tokens": limit,
        "truncated_by_max_tokens": truncated,
        "text_field": options.text_field,
        "max_token_id": max(max_id, bos_id if bos_id is not None else -1),
    }
    corpus = TokenizedCorpus(path, total, bos_id, options.count_bos, options.seq_len, options.batch_size, identity)
    identity.update(sequences=corpus.sequences, tokens=corpus.tokens)
    return corpus


def _bos_id(tokenizer: Any, options: ActivationOptions) -> int | None:
    bos = tokenizer.bos_token_id
    if options.bos == "no":
        return None
    if bos is None:
        if options.bos == "yes":
            raise TunelensError("--bos yes: the tokenizer defines no BOS token")
        return None
    return int(bos)


def _kind(path: Path) -> str | None:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    return None


def _open_text(path: Path) -> IO[str]:
    try:
        if path.name.lower().endswith(".gz"):
            return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
        return path.open(encoding="utf-8")
    except OSError as exc:
        raise TunelensError(f"corpus {path}: cannot read ({exc.strerror})") from exc


def _pieces(path: Path, field: str, headers: list[Any]) -> Iterator[tuple[str, bool]]:
    """``(text, ends_document)`` pieces of one file."""
    try:
        with _open_text(path) as fh:
            if _kind(path) == "jsonl":
                yield from _jsonl_pieces(path, fh, field, headers)
            else:
                yield from _text_pieces(fh)
    except UnicodeDecodeError as exc:
        raise TunelensError(f"corpus {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise TunelensError(f"corpus {path}: cannot read ({exc})") from exc


def _jsonl_pieces(path: Path, fh: IO[str], field: str, headers: list[Any]) -> Iterator[tuple[str, bool]]:
    for lineno, line in enumerate(fh, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TunelensError(f"corpus {path}:{lineno}: invalid JSON ({exc.msg})") from exc
        if lineno == 1 and isinstance(record, dict) and "_header" in record:
            headers.append({"path": str(path), **record})
            continue
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise TunelensError(
                f"corpus {path}:{lineno}: expected an object with a string {field!r} field "
                "(choose the field with --text-field)"
            )
        text = record[field]
        if text:
            yield text, True


def _text_pieces(fh: IO[str]) -> Iterator[tuple[str, bool]]:
    buf: list[str] = []
    size = 0
    buf_was_used = False
    for line in fh:
        buf.append(line)
        size += len(line)
        if size >= PIECE_CHARS:
            yield "".join(buf), False
            buf, size, buf_was_used = [], 0, True
    tail = "".join(buf)
    if tail or buf_was_used:
        yield tail, True


def _chunks(pieces: Iterator[tuple[str, bool]]) -> Generator[tuple[list[str], list[bool]], None, None]:
    texts: list[str] = []
    ends: list[bool] = []
    size = 0
    for text, end in pieces:
        texts.append(text)
        ends.append(end)
        size += len(text)
        if size >= CHUNK_CHARS or len(texts) >= 1024:
            yield texts, ends
            texts, ends, size = [], [], 0
    if texts:
        yield texts, ends


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()

"""The exact singular basis of a pre-trained weight, and its on-disk cache.

``W = U diag(S) Vᵀ`` for a 2-D weight ``W`` in the ``[out, in]`` convention, computed in float64
and never by a randomized low-rank method:

- ``gram``: eigendecomposition of the Gram matrix of the smaller side (``W Wᵀ`` when
  ``out <= in``, else ``Wᵀ W``) with ``torch.linalg.eigh`` (LAPACK ``syevd``); ``σ = √λ`` and the
  other side is ``Wᵀ U / σ`` (or ``W V / σ``). Squaring ``W`` squares its condition number: column
  ``i`` of the other side loses orthogonality by about ``0.1 · eps64 · σ₁²/σᵢ²`` (measured in
  ``tests/stats/test_subspace_math.py``). Only the leading ``trusted`` columns, those with
  ``eps64 · σ₁²/σᵢ² ≤`` :data:`GRAM_MAX_ERROR` (accurate to ≲ 1e-7, the precision of their float32
  storage), may be used; the other-side columns beyond are zero. A projection that needs a larger k
  recomputes that tensor with ``svd`` (:func:`tunelens.stats.subspace.analyse_tensor`);
- ``svd``: ``torch.linalg.svd(W, full_matrices=False)`` in float64 (LAPACK ``gesdd``).

``auto`` picks ``gram`` when the smaller side is at least :data:`GRAM_MIN_SIDE`, ``svd`` below it
(measured in ``bench/bench_subspace.py``: both are instant below; Gram is 3-10x faster above).

The cache stores ``U``, ``V`` (float32, computed in float64) and ``S`` (float64) as safetensors,
one file per analysed part, keyed by the sha256 of the base tensor's *stored bytes* plus the slice
and method. A content hash (rather than the checkpoint's header fingerprint) is used because a base
re-saved with new values but the same shapes has identical headers; the hash costs one pass over
bytes that are read anyway.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from tunelens.errors import TunelensError

Method = Literal["auto", "gram", "svd"]
CriterionKind = Literal["energy", "rank_fraction", "rank"]
CACHE_VERSION = "tunelens-ssa-basis-v4"  # v4: a Gram basis stores only the larger side's columns asked for
GRAM_MIN_SIDE = 128
GRAM_MAX_ERROR = 1e-6  # largest eps64 · σ₁²/σᵢ² of a usable gram column (else full SVD when needed)
_EPS64 = float(torch.finfo(torch.float64).eps)


@dataclass(frozen=True)
class Basis:
    """``W = U diag(S) Vᵀ``: ``U [out, r]``, ``S [r]`` descending, ``V [in, r]``, ``r = min(out, in)``.

    ``U``/``V`` are float32 (computed in float64); ``S`` is float64. ``method`` is the one used; only the
    first ``trusted`` columns may be used (see the module doc).
    """

    U: torch.Tensor
    S: torch.Tensor
    V: torch.Tensor
    method: str
    trusted: int  # leading columns accurate to ~1e-7 (all of them for svd)

    @property
    def rank(self) -> int:
        return int(self.S.numel())

    @property
    def cols(self) -> int:
        """Leading columns present on both sides (a Gram basis computes only the larger side's columns
        that were asked for: the rest would cost as much as the Gram product itself)."""
        return min(self.U.shape[1], self.V.shape[1])

    def to(self, device: str) -> Basis:
        """The same basis with its tensors on ``device``."""
        if self.S.device == torch.device(device):
            return self
        return Basis(self.U.to(device), self.S.to(device), self.V.to(device), self.method, self.trusted)


@dataclass(frozen=True)
class Criterion:
    """How k is chosen: an energy threshold η, a fraction f of the rank, or a fixed k."""

    kind: CriterionKind
    value: float

    def __post_init__(self) -> None:
        if self.kind in ("energy", "rank_fraction") and not 0.0 < self.value <= 1.0:
            raise TunelensError(f"--{self.kind.replace('_', '-')} values must be in (0, 1], got {self.value}")
        if self.kind == "rank" and (self.value < 1 or self.value != int(self.value)):
            raise TunelensError(f"--rank values must be positive integers, got {self.value}")

    @property
    def label(self) -> str:
        value = int(self.value) if self.kind == "rank" else self.value
        return f"{self.kind}={value}"

    def k(self, s: torch.Tensor) -> int:
        """k for singular values ``s`` (float64, descending, ``r = len(s)``)."""
        r = int(s.numel())
        if self.kind == "rank":
            return min(int(self.value), r)
        if self.kind == "rank_fraction":
            return min(max(1, math.ceil(self.value * r - 1e-9)), r)
        energy = s.square().cumsum(0)
        total = float(energy[-1]) if r else 0.0
        if total <= 0.0:
            return 0
        return min(int(torch.searchsorted(energy, self.value * total * (1 - 1e-12)).item()) + 1, r)


def resolve_method(method: Method, shape: tuple[int, int]) -> Literal["gram", "svd"]:
    """``auto`` → ``gram`` when ``min(out, in) >= GRAM_MIN_SIDE``, else ``svd``."""
    if method == "auto":
        return "gram" if min(shape) >= GRAM_MIN_SIDE else "svd"
    return method


#: how many leading singular vectors a caller needs, from the singular values (None: every trusted one)
Columns = Callable[[torch.Tensor], int] | None


def decompose(w: torch.Tensor, method: Method = "auto", columns: Columns = None) -> Basis:
    """The exact singular basis of a 2-D weight ``w [out, in]`` (float64 compute, see module doc).

    ``columns(S)``: the leading columns the caller will use; a Gram basis then forms only those
    columns of its larger side (``Wᵀ U_k / σ``, O(out·in·k) instead of O(out·in·min(out, in))).
    """
    if w.dim() != 2:
        raise ValueError(f"decompose needs a 2-D weight, got shape {tuple(w.shape)}")
    chosen = resolve_method(method, (w.shape[0], w.shape[1]))
    a = w.detach().to(torch.float64)
    if chosen == "gram":
        basis = _gram(a, columns)
        if basis is not None:
            return basis
    u, s, vh = torch.linalg.svd(a, full_matrices=False)  # [out, r], [r], [r, in]
    return Basis(u.float().contiguous(), s.contiguous(), vh.T.float().contiguous(), "svd", int(s.numel()))


def _gram(a: torch.Tensor, columns: Columns = None) -> Basis | None:
    """Gram-eigh path; ``None`` for an all-zero ``a``."""
    wide = a.shape[0] <= a.shape[1]
    side = a if wide else a.T  # [s, big]
    lam, e = torch.linalg.eigh(side @ side.T)  # ascending; e [s, s]
    lam_max = float(lam[-1]) if lam.numel() else 0.0
    if lam_max <= 0.0:
        return None
    lam, e = lam.flip(0).clamp_min(0.0), e.flip(1)  # descending
    trusted = int((lam * GRAM_MAX_ERROR > lam_max * _EPS64).sum())  # a prefix: lam is descending
    s = lam.sqrt()
    cols = trusted if columns is None else min(max(columns(s), 0), trusted)
    other = side.T @ e[:, :cols]  # [big, cols]
    other.div_(s[:cols])  # columns of the other side, σ-normalised
    big = other.float().contiguous()
    small = e.float().contiguous()
    u, v = (small, big) if wide else (big, small)
    return Basis(u, s.contiguous(), v, "gram", trusted)


def content_hash(t: torch.Tensor) -> str:
    """sha256 of a tensor's raw bytes (its stored dtype), hex."""
    flat = t.contiguous().view(-1)
    if flat.numel() == 0:
        return hashlib.sha256(b"").hexdigest()
    return hashlib.sha256(memoryview(flat.view(torch.uint8).numpy())).hexdigest()  # type: ignore[arg-type]


def default_cache_dir() -> Path:
    """``<cache_root>/subspace`` (:func:`tunelens.cache.cache_root`)."""
    from tunelens.cache import cache_root

    return cache_root() / "subspace"


@dataclass(frozen=True)
class BasisKey:
    """What identifies one cached decomposition: the base bytes, the slice and the method."""

    content_sha256: str
    stored: str  # "<dtype>:<shape>" of the stored tensor
    part: str  # fused-part slice "dim:start:stop" ("-" for the whole tensor) + layout
    slicing: str  # "whole" or "heads:<axis>:<head_size>"
    method: Literal["gram", "svd"]

    def digest(self) -> str:
        text = "|".join((CACHE_VERSION, self.content_sha256, self.stored, self.part, self.slicing, self.method))
        return hashlib.sha256(text.encode()).hexdigest()


class BasisCache:
    """Decompositions on disk, one safetensors file per :class:`BasisKey` (never pickle).

    Files are written to a temporary name and renamed, so concurrent writers and interrupted runs
    never leave a partial entry. ``folder=None`` disables the cache (every lookup misses).
    """

    def __init__(self, folder: Path | None) -> None:
        self.folder = None if folder is None else Path(folder).expanduser()
        if self.folder is not None:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise TunelensError(f"cannot create the subspace cache {self.folder}: {exc.strerror}") from exc

    def path(self, key: BasisKey) -> Path | None:
        if self.folder is None:
            return None
        d = key.digest()
        return self.folder / d[:2] / f"{d}.safetensors"

    def load(self, key: BasisKey) -> list[Basis] | None:
        """The cached bases of ``key`` (one per slice), or ``None`` when absent or unreadable."""
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        p = self.path(key)
        if p is None or not p.exists():
            return None
        try:
            state = load_file(str(p))
            with safe_open(str(p), framework="pt") as fh:
                meta = fh.metadata() or {}
            methods = meta.get("methods", "").split(",")
            trusted = [int(x) for x in meta.get("trusted", "").split(",")]
        except (OSError, SafetensorError, ValueError):
            return None  # a damaged entry is recomputed and overwritten
        n = sum(1 for name in state if name.startswith("S."))
        if len(methods) != n or len(trusted) != n:
            return None  # an entry without per-slice methods (or a damaged one) is recomputed
        try:
            return [
                Basis(state[f"U.{i}"], state[f"S.{i}"], state[f"V.{i}"], methods[i], trusted[i]) for i in range(n)
            ] or None
        except KeyError:
            return None

    def save(self, key: BasisKey, bases: list[Basis], meta: dict[str, str]) -> int:
        """Store ``bases`` under ``key``; returns the bytes written (0 when disabled)."""
        from safetensors.torch import save_file

        p = self.path(key)
        if p is None:
            return 0
        state: dict[str, torch.Tensor] = {}
        for i, b in enumerate(bases):
            b = b.to("cpu")
            state[f"U.{i}"], state[f"S.{i}"], state[f"V.{i}"] = b.U, b.S, b.V
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
        metadata = {
            "format": CACHE_VERSION,
            "content_sha256": key.content_sha256,
            "stored": key.stored,
            "part": key.part,
            "slicing": key.slicing,
            "method": key.method,
            "methods": ",".join(b.method for b in bases),  # per slice: gram, or svd after a fallback
            "trusted": ",".join(str(b.trusted) for b in bases),  # per slice: usable leading columns
            "precision": "computed in float64; U, V stored float32, S float64",
            **meta,
        }
        try:
            save_file(state, str(tmp), metadata=metadata)
            os.replace(tmp, p)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise TunelensError(f"cannot write the subspace cache entry {p}: {exc.strerror}") from exc
        return p.stat().st_size

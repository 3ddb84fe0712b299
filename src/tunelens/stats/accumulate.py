"""Float64 sums of one streaming pass: ‖W‖², ‖τᵢ‖², ⟨W, τᵢ⟩, ⟨τᵢ, τⱼ⟩ and Σ τᵢ²τⱼ² per part.

Products are formed in float32 and summed in float64 (``torch.sum(..., dtype=float64)``), chunk
by chunk of 64K elements: for bf16/fp16 weights the float32 product of two stored values is exact
and the float64 sum keeps ‖W‖² exact to ~1e-15; products involving τ carry float32 rounding
(≤ 2⁻²⁴ relative per term, so a cosine is off by at most 6e-8 absolute, by Cauchy-Schwarz).
All group values derive from these sums, so they reduce by addition.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

CHUNK = 1 << 16  # elements per step: temporaries stay in cache (measured fastest of 16K-1M, bench/)


@dataclass(frozen=True)
class Sums:
    """Additive sufficient statistics of a group of elements for N tuning vectors.

    ``cross[i][j] = ⟨τᵢ, τⱼ⟩`` (so ``cross[i][i] = ‖τᵢ‖²``), ``base_dot[i] = ⟨W, τᵢ⟩``,
    ``cross_sq[i][j] = Σ τᵢ²τⱼ²`` (the variance of the sign-flip null of ⟨τᵢ, τⱼ⟩).
    """

    numel: int
    base_sq: float
    base_dot: tuple[float, ...]
    cross: tuple[tuple[float, ...], ...]
    cross_sq: tuple[tuple[float, ...], ...]

    @classmethod
    def zero(cls, n: int) -> Sums:
        z = tuple(0.0 for _ in range(n))
        return cls(0, 0.0, z, tuple(z for _ in range(n)), tuple(z for _ in range(n)))

    def __add__(self, other: Sums) -> Sums:
        return Sums(
            self.numel + other.numel,
            self.base_sq + other.base_sq,
            tuple(a + b for a, b in zip(self.base_dot, other.base_dot, strict=True)),
            _add2(self.cross, other.cross),
            _add2(self.cross_sq, other.cross_sq),
        )

    def finite(self) -> bool:
        """Whether every sum is finite (a NaN/Inf anywhere in a part's inputs makes one of them non-finite)."""
        vals = [self.base_sq, *self.base_dot, *(v for row in self.cross for v in row)]
        return all(math.isfinite(v) for v in vals)

    def delta_sq(self, i: int) -> float:
        return self.cross[i][i]

    def tuned_sq(self, i: int) -> float:
        """‖W + τᵢ‖² = ‖W‖² + 2⟨W, τᵢ⟩ + ‖τᵢ‖²."""
        return self.base_sq + 2.0 * self.base_dot[i] + self.cross[i][i]


def _add2(a: tuple[tuple[float, ...], ...], b: tuple[tuple[float, ...], ...]) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(x + y for x, y in zip(ra, rb, strict=True)) for ra, rb in zip(a, b, strict=True))


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch single-threaded: the pass parallelises across tensors (``jobs.iter_jobs``) instead.

    Intra-op threads on top of the job threads oversubscribe the cores; on 2 busy cores that
    measured up to 15x slower for these memory-bound kernels (``bench/``).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def part_sums(
    base: torch.Tensor, others: list[tuple[torch.Tensor, bool] | None], *, null: bool = True, chunk: int = CHUNK
) -> Sums:
    """Sums for one part from stored tensors: ``base`` W and, per source, its tensor and ``is_tau``
    (False: a fine-tuned tensor), or None where τ = 0.

    τᵢ = float32(ftᵢ) − float32(W) for a fine-tune, float32(stored) for a stored τ, formed chunk by
    chunk (cache-resident temporaries); never subsampled.
    """
    w = base.reshape(-1)
    present = [i for i, o in enumerate(others) if o is not None]
    srcs = [(o[0].reshape(-1), o[1]) for o in others if o is not None]
    m = len(srcs)
    base_sq = 0.0
    base_dot = [0.0] * m
    cross = [[0.0] * m for _ in range(m)]
    cross_sq = [[0.0] * m for _ in range(m)]
    f64 = torch.float64
    for s in range(0, w.numel(), chunk):
        a = w[s : s + chunk].float()
        ds = [t[s : s + chunk].float() if vec else t[s : s + chunk].float().sub_(a) for t, vec in srcs]
        base_sq += float(torch.sum(a * a, dtype=f64))
        for i, d in enumerate(ds):
            base_dot[i] += float(torch.sum(a * d, dtype=f64))
            for j in range(i, m):
                p = d * ds[j]
                v = float(torch.sum(p, dtype=f64))
                cross[i][j] += v
                if j != i:
                    cross[j][i] += v
                    if null:
                        q = float(torch.sum(p * p, dtype=f64))
                        cross_sq[i][j] += q
                        cross_sq[j][i] += q
    return _spread(w.numel(), base_sq, base_dot, cross, cross_sq, present, len(others))


def _spread(
    numel: int,
    base_sq: float,
    base_dot: list[float],
    cross: list[list[float]],
    cross_sq: list[list[float]],
    present: list[int],
    n: int,
) -> Sums:
    """:class:`Sums` over all ``n`` sources from those of the ``present`` ones (τ = 0 elsewhere: zeros)."""
    dot = [0.0] * n
    c = [[0.0] * n for _ in range(n)]
    c2 = [[0.0] * n for _ in range(n)]
    for a, i in enumerate(present):
        dot[i] = base_dot[a]
        for b, j in enumerate(present):
            c[i][j] = cross[a][b]
            c2[i][j] = cross_sq[a][b]
    return Sums(numel, base_sq, tuple(dot), tuple(tuple(r) for r in c), tuple(tuple(r) for r in c2))


def part_sums_device(
    base: torch.Tensor, others: list[tuple[torch.Tensor, bool] | None], *, null: bool = True, device: str = "cuda"
) -> Sums:
    """:func:`part_sums` as whole-tensor kernels on ``device`` (a GPU), one host sync per part.

    Same definitions: products in float32, sums in float64 (on the device). Only the order of the
    float64 additions differs from the chunked CPU loop, so results agree to ~1e-12 relative
    (``tests/stats/test_diff_reference.py`` runs this path on the CPU; ``-m gpu`` on a GPU).
    """
    f64 = torch.float64
    present = [i for i, o in enumerate(others) if o is not None]
    a = base.reshape(-1).to(device, torch.float32)
    ds = [
        t.reshape(-1).to(device, torch.float32) if vec else t.reshape(-1).to(device, torch.float32).sub_(a)
        for t, vec in (o for o in others if o is not None)
    ]
    m = len(ds)
    vals: list[torch.Tensor] = [torch.sum(a * a, dtype=f64)]
    vals += [torch.sum(a * d, dtype=f64) for d in ds]
    pairs = [(i, j) for i in range(m) for j in range(i, m)]
    for i, j in pairs:
        p = ds[i] * ds[j]
        vals.append(torch.sum(p, dtype=f64))
        vals.append(torch.sum(p * p, dtype=f64) if null and i != j else torch.zeros((), dtype=f64, device=device))
    host = torch.stack(vals).cpu().tolist()  # the one sync
    base_dot = host[1 : 1 + m]
    cross = [[0.0] * m for _ in range(m)]
    cross_sq = [[0.0] * m for _ in range(m)]
    for k, (i, j) in enumerate(pairs):
        v, q = host[1 + m + 2 * k], host[2 + m + 2 * k]
        cross[i][j] = cross[j][i] = v
        if i != j:
            cross_sq[i][j] = cross_sq[j][i] = q
    return _spread(a.numel(), host[0], base_dot, cross, cross_sq, present, len(others))


def lowrank_sums(base: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> Sums:
    """:class:`Sums` of one part for a single τ = L R given by its factors (``base`` W ``[out, in]``,
    ``L [out, r]``, ``R [r, in]``), never forming τ: ``⟨W, τ⟩ = Σ (LᵀW) ∘ R`` (float32 products, float64
    sum) and ``‖τ‖² = Σ (LᵀL) ∘ (RRᵀ)`` (float64); ``‖W‖²`` as in :func:`part_sums`."""
    f64 = torch.float64
    w = base.float()
    base_sq = part_sums(base, [None]).base_sq
    dot = float(torch.sum((left.T @ w) * right, dtype=f64))
    lf, rf = left.to(f64), right.to(f64)
    tau_sq = float(((lf.T @ lf) * (rf @ rf.T)).sum())
    return Sums(w.numel(), base_sq, (dot,), ((tau_sq,),), ((0.0,),))

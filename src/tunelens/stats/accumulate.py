"""Float64 sums of one streaming pass: ‖W‖², ‖τᵢ‖², ⟨W, τᵢ⟩, ⟨τᵢ, τⱼ⟩ and Σ τᵢ²τⱼ² per part.

Products are formed in float32 and summed in float64 (``torch.sum(..., dtype=float64)``) chunk by
chunk: for bf16/fp16 weights a float32 product of two stored values is exact, and the float64 sum
keeps every group total exact to ~1e-15 relative; τ products carry float32 rounding (≤ 6e-8
relative per term, unbiased). All group values derive from these sums, so they reduce by addition.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CHUNK = 1 << 20  # elements per float64 reduction step: bounded temporaries, cache friendly


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

    def delta_sq(self, i: int) -> float:
        return self.cross[i][i]

    def tuned_sq(self, i: int) -> float:
        """‖W + τᵢ‖² = ‖W‖² + 2⟨W, τᵢ⟩ + ‖τᵢ‖²."""
        return self.base_sq + 2.0 * self.base_dot[i] + self.cross[i][i]


def _add2(a: tuple[tuple[float, ...], ...], b: tuple[tuple[float, ...], ...]) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(x + y for x, y in zip(ra, rb, strict=True)) for ra, rb in zip(a, b, strict=True))


def _dot64(a: torch.Tensor, b: torch.Tensor) -> float:
    total = 0.0
    for s in range(0, a.numel(), CHUNK):
        x = a[s : s + CHUNK]
        y = x if b is a else b[s : s + CHUNK]
        total += float(torch.sum(x * y, dtype=torch.float64))
    return total


def part_sums(base: torch.Tensor, deltas: list[torch.Tensor], *, null: bool = True) -> Sums:
    """Sums for one part: ``base`` W and each τᵢ (float32, same shape). Never subsamples."""
    w = base.reshape(-1)
    ds = [d.reshape(-1) for d in deltas]
    n = len(ds)
    base_sq = _dot64(w, w)
    base_dot = tuple(_dot64(w, d) for d in ds)
    cross = [[0.0] * n for _ in range(n)]
    cross_sq = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i, n):
            cross[i][j] = cross[j][i] = _dot64(ds[i], ds[j])
            if null and i != j:
                cross_sq[i][j] = cross_sq[j][i] = _sq_dot64(ds[i], ds[j])
    return Sums(
        w.numel(),
        base_sq,
        base_dot,
        tuple(tuple(r) for r in cross),
        tuple(tuple(r) for r in cross_sq),
    )


def _sq_dot64(a: torch.Tensor, b: torch.Tensor) -> float:
    total = 0.0
    for s in range(0, a.numel(), CHUNK):
        x = a[s : s + CHUNK] * b[s : s + CHUNK]
        total += float(torch.sum(x * x, dtype=torch.float64))
    return total

"""Confidence intervals and paired tests for evaluation scores: pure functions, float64, numpy only.

A score is a *ratio over items*: ``Σ num_i / Σ den_i``. For an ordinary per-item score ``den_i = 1``
and the ratio is the mean; for a held-out loss ``num_i`` is a document's summed cross-entropy and
``den_i`` its scored tokens, so the ratio is the token-weighted mean loss.

- :func:`wilson` — Wilson score interval of a proportion ``k / n`` (0/1 scores).
- :func:`bootstrap_ci` — percentile bootstrap of the ratio: ``resamples`` draws of ``n`` items with
  replacement, ``idx = numpy.random.default_rng(seed).integers(0, n, size=(resamples, n))`` (drawn in
  row chunks, the same stream), interval = ``numpy.quantile`` (linear) at ``(1 ∓ level) / 2``.
- :func:`paired_bootstrap_ci` — the same draws applied to both score vectors of a paired comparison
  (items resampled jointly): interval of ``ratio_b − ratio_a``.
- :func:`mcnemar_exact` — exact two-sided McNemar test: a binomial test of ``b_only`` successes in
  ``a_only + b_only`` discordant items at p = 1/2, ``min(1, 2·P(X ≤ min(a_only, b_only)))``, in exact
  integer arithmetic (equal to ``scipy.stats.binomtest(...).pvalue`` for p = 1/2).
- :func:`signflip_p` — paired sign-flip permutation test of ``Σ d_i = 0`` with ``d_i = num_b,i −
  num_a,i``: exact over all ``2^m`` sign patterns of the ``m`` non-zero differences when ``2^m ≤
  resamples``, else Monte Carlo, ``p = (1 + #{|Σ s_i d_i| ≥ |Σ d_i|}) / (resamples + 1)`` with signs from
  ``default_rng(seed)``.
- :func:`holm` — Holm's step-down adjustment of a family of p-values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

from tunelens.errors import TunelensError

Array = npt.NDArray[np.float64]
_CHUNK = 1 << 22  # elements of the resample index matrix drawn at once (32 MiB of int64)
_TIE = 1e-9  # relative tolerance when a resampled statistic is compared with the observed one


@dataclass(frozen=True)
class StatsOptions:
    """How intervals and paired tests are computed (recorded in every output that uses them)."""

    level: float = 0.95
    resamples: int = 10_000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.5 <= self.level < 1.0:
            raise TunelensError(f"confidence level must be in [0.5, 1), got {self.level}")
        if self.resamples < 10_000:
            raise TunelensError(f"resamples must be at least 10000, got {self.resamples}")

    def describe(self) -> dict[str, Any]:
        return {"level": self.level, "resamples": self.resamples, "seed": self.seed}


DEFAULT = StatsOptions()


def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson(k: float, n: int, level: float = 0.95) -> tuple[float | None, float | None]:
    """Wilson score interval of the proportion ``k / n``; ``(None, None)`` when ``n == 0``."""
    if n <= 0:
        return None, None
    z = _z(level)
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # at k = 0 / k = n the bound is exactly 0 / 1 (the formula leaves it an ulp short, outside p itself)
    low = 0.0 if k <= 0 else max(0.0, center - half)
    high = 1.0 if k >= n else min(1.0, center + half)
    return low, high


def _as_arrays(num: Sequence[float], den: Sequence[float] | None) -> tuple[Array, Array]:
    x = np.asarray(num, dtype=np.float64)
    w = np.ones_like(x) if den is None else np.asarray(den, dtype=np.float64)
    if x.shape != w.shape or x.ndim != 1:
        raise ValueError("num and den must be 1-D and of one length")
    return x, w


def _resampled_sums(columns: list[Array], resamples: int, seed: int) -> list[Array]:
    """For each column, its sum over ``resamples`` bootstrap draws of the items (one index stream)."""
    n = len(columns[0])
    rng = np.random.default_rng(seed)
    out = [np.empty(resamples, dtype=np.float64) for _ in columns]
    rows = max(1, _CHUNK // max(n, 1))
    for start in range(0, resamples, rows):
        stop = min(resamples, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))
        for col, dst in zip(columns, out, strict=True):
            dst[start:stop] = col[idx].sum(axis=1)
    return out


def _percentile(stats: Array, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_ci(
    num: Sequence[float], den: Sequence[float] | None = None, opts: StatsOptions = DEFAULT
) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of ``Σ num / Σ den`` over items; ``(None, None)`` for fewer than 2 items."""
    x, w = _as_arrays(num, den)
    if len(x) < 2 or not (np.isfinite(x).all() and np.isfinite(w).all()):
        return None, None
    sx, sw = _resampled_sums([x, w], opts.resamples, opts.seed)
    return _percentile(sx / sw, opts.level)


def paired_bootstrap_ci(
    num_a: Sequence[float],
    num_b: Sequence[float],
    den_a: Sequence[float] | None = None,
    den_b: Sequence[float] | None = None,
    opts: StatsOptions = DEFAULT,
) -> tuple[float | None, float | None]:
    """Percentile interval of ``ratio_b − ratio_a`` with the items resampled jointly (paired)."""
    xa, wa = _as_arrays(num_a, den_a)
    xb, wb = _as_arrays(num_b, den_b)
    if len(xa) != len(xb):
        raise ValueError("paired vectors must have one length")
    if len(xa) < 2 or not all(np.isfinite(v).all() for v in (xa, wa, xb, wb)):
        return None, None
    sxa, swa, sxb, swb = _resampled_sums([xa, wa, xb, wb], opts.resamples, opts.seed)
    return _percentile(sxb / swb - sxa / swa, opts.level)


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts (1.0 when there are none)."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    k = min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, float(Fraction(2 * tail, 2**n)))


def signflip_p(diffs: Sequence[float], opts: StatsOptions = DEFAULT) -> tuple[float, str]:
    """Two-sided paired sign-flip p-value of ``Σ d = 0`` and how it was computed (``exact`` / ``monte_carlo``)."""
    d = np.asarray(diffs, dtype=np.float64)
    d = d[d != 0]
    m = len(d)
    observed = abs(float(d.sum()))
    if m == 0 or observed == 0.0:
        return 1.0, "exact"
    threshold = observed * (1 - _TIE)
    if 2**m <= opts.resamples:
        bits = (np.arange(2**m, dtype=np.int64)[:, None] >> np.arange(m, dtype=np.int64)) & 1
        sums = np.abs((1 - 2 * bits).astype(np.float64) @ d)
        return float((sums >= threshold).sum()) / 2**m, "exact"
    rng = np.random.default_rng(opts.seed)
    hits = 0
    rows = max(1, _CHUNK // m)
    for start in range(0, opts.resamples, rows):
        stop = min(opts.resamples, start + rows)
        signs = 1.0 - 2.0 * rng.integers(0, 2, size=(stop - start, m))
        hits += int((np.abs(signs @ d) >= threshold).sum())
    return (1 + hits) / (opts.resamples + 1), "monte_carlo"


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm step-down adjusted p-values (``None`` entries are left out of the family and stay ``None``)."""
    present = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(present)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out

"""Distances between two models' binary activation patterns, as pure functions and exact sums.

Patterns travel bit-packed: ``np.packbits(mask, axis=1)`` turns ``(tokens, d_ff)`` booleans into
``(tokens, ceil(d_ff / 8))`` bytes (the last byte zero-padded, identically for both models, so the
padding never counts). Per-token distances are integers (bits or edits); per layer they are summed
exactly in int64 and kept as a histogram over ``0..d_ff`` so quantiles are exact too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tunelens.activations.options import Distance
from tunelens.errors import TunelensError

U8 = np.ndarray[Any, np.dtype[np.uint8]]
I64 = np.ndarray[Any, np.dtype[np.int64]]
QUANTILES = (0.5, 0.9, 0.99)
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)  # numpy < 2 has no bitwise_count


def pack(mask: np.ndarray[Any, np.dtype[np.bool_]]) -> U8:
    """``(tokens, d_ff)`` booleans → ``(tokens, ceil(d_ff/8))`` bytes, most significant bit first."""
    return np.packbits(mask, axis=1)


def pack_torch(mask: torch.Tensor) -> torch.Tensor:
    """:func:`pack` computed where ``mask`` lives: on a GPU, 8x less to copy back to the host."""
    n, d_ff = mask.shape  # (tokens, d_ff)
    bits = mask.to(torch.uint8)
    if d_ff % 8:
        bits = torch.nn.functional.pad(bits, (0, 8 - d_ff % 8))  # zero bits at the end, as np.packbits
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=mask.device)
    return (bits.reshape(n, -1, 8) * weights).sum(dim=-1, dtype=torch.uint8)  # (tokens, ceil(d_ff / 8))


def hamming(a: U8, b: U8) -> I64:
    """Per-token Hamming distance (differing neurons) between two packed pattern blocks."""
    xor = np.bitwise_xor(a, b)  # (tokens, nbytes)
    counts = np.bitwise_count(xor) if hasattr(np, "bitwise_count") else _POPCOUNT[xor]
    bits: I64 = counts.sum(axis=1, dtype=np.int64)
    return bits


def active_indices(packed: U8, d_ff: int) -> list[list[int]]:
    """Per token, the ascending list of active neuron indices."""
    bits = np.unpackbits(packed, axis=1, count=d_ff)
    return [np.flatnonzero(row).tolist() for row in bits]


def require_rapidfuzz() -> None:
    """``--distance levenshtein`` needs rapidfuzz; say so before any heavy work."""
    try:
        import rapidfuzz  # noqa: F401
    except ImportError as exc:
        raise TunelensError("--distance levenshtein needs rapidfuzz: pip install 'tunelens[activations]'") from exc


def levenshtein(a: U8, b: U8, d_ff: int) -> I64:
    """Per-token edit distance between the active-index lists (insert, delete, substitute cost 1)."""
    from rapidfuzz.distance import Levenshtein
    from rapidfuzz.process import cpdist

    ia, ib = active_indices(a, d_ff), active_indices(b, d_ff)
    if not ia:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(cpdist(ia, ib, scorer=Levenshtein.distance, workers=1), dtype=np.int64)


def quantile_from_histogram(hist: I64, q: float) -> int:
    """Smallest value v with at least ``q`` of the tokens at or below v (numpy ``inverted_cdf``)."""
    total = int(hist.sum())
    if total == 0:
        return 0
    cdf = np.cumsum(hist)
    return int(np.searchsorted(cdf, q * total, side="left"))


@dataclass
class PairSums:
    """Exact per-layer sums of the per-token distances of one model pair."""

    a: str
    b: str
    metric: Distance
    layers: int
    d_ff: int
    tokens: int = 0
    hamming_bits: I64 = field(init=False)
    metric_sum: I64 = field(init=False)
    histogram: I64 = field(init=False)  # (layers, d_ff + 1): tokens per distance value of ``metric``

    def __post_init__(self) -> None:
        self.hamming_bits = np.zeros(self.layers, dtype=np.int64)
        self.metric_sum = np.zeros(self.layers, dtype=np.int64)
        self.histogram = np.zeros((self.layers, self.d_ff + 1), dtype=np.int64)

    def add(self, layer: int, ref: U8, packed: U8) -> None:
        """Add one block of tokens of ``layer``: ``ref`` from model ``a``, ``packed`` from model ``b``."""
        ham = hamming(ref, packed)
        self.hamming_bits[layer] += int(ham.sum())
        per_token = ham if self.metric == "hamming" else levenshtein(ref, packed, self.d_ff)
        self.metric_sum[layer] += int(per_token.sum())
        self.histogram[layer] += np.bincount(per_token, minlength=self.d_ff + 1)

    def summary(self) -> dict[str, Any]:
        denom = float(self.tokens) * self.d_ff
        dist = [float(s) / denom for s in self.metric_sum]
        ham = [float(s) / denom for s in self.hamming_bits]
        out: dict[str, Any] = {
            "a": self.a,
            "b": self.b,
            "metric": self.metric,
            "distance": dist,
            "mean": float(np.mean(dist)) if dist else 0.0,
            "hamming": ham,
            "hamming_mean": float(np.mean(ham)) if ham else 0.0,
            "tokens": self.tokens,
            "d_ff": self.d_ff,
        }
        for q in QUANTILES:
            out[f"distance_p{round(q * 100)}"] = [quantile_from_histogram(h, q) / self.d_ff for h in self.histogram]
        out["distance_max"] = [_max_value(h) / self.d_ff for h in self.histogram]
        out["sums"] = {"hamming_bits": self.hamming_bits.tolist(), "distance_units": self.metric_sum.tolist()}
        return out


def _max_value(hist: I64) -> int:
    nz = np.flatnonzero(hist)
    return int(nz[-1]) if nz.size else 0

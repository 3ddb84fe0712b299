"""Packed-bit distances, exact quantiles and the on-disk pattern store against naive references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tunelens.activations import compare
from tunelens.activations.compare import (
    PairSums,
    active_indices,
    hamming,
    levenshtein,
    pack,
    pack_torch,
    quantile_from_histogram,
)
from tunelens.activations.store import PatternStore, store_bytes


def _naive_levenshtein(a: list[int], b: list[int]) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


@pytest.mark.parametrize("d_ff", [8, 13, 64, 100])
def test_hamming_on_packed_bits_equals_naive(d_ff: int) -> None:
    rng = np.random.default_rng(d_ff)
    a = rng.random((50, d_ff)) < 0.5
    b = rng.random((50, d_ff)) < 0.5
    assert pack(a).shape == (50, (d_ff + 7) // 8)
    np.testing.assert_array_equal(hamming(pack(a), pack(b)), (a != b).sum(axis=1))
    assert active_indices(pack(a), d_ff) == [list(np.flatnonzero(r)) for r in a]


@pytest.mark.parametrize("d_ff", [8, 13, 64, 100])
def test_device_packing_equals_numpy_packbits(d_ff: int) -> None:
    import torch

    mask = torch.rand(37, d_ff, generator=torch.Generator().manual_seed(d_ff)) < 0.5
    np.testing.assert_array_equal(pack_torch(mask).numpy(), np.packbits(mask.numpy(), axis=1))


def test_hamming_without_numpy_bitwise_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """numpy < 2 has no bitwise_count: the byte lookup table gives the same counts."""
    rng = np.random.default_rng(2)
    a, b = rng.random((30, 77)) < 0.5, rng.random((30, 77)) < 0.3
    if hasattr(np, "bitwise_count"):
        monkeypatch.delattr(np, "bitwise_count")
    np.testing.assert_array_equal(compare.hamming(pack(a), pack(b)), (a != b).sum(axis=1))


def test_levenshtein_equals_naive_dynamic_programming() -> None:
    rng = np.random.default_rng(7)
    d_ff = 21
    a = rng.random((40, d_ff)) < 0.4
    b = a ^ (rng.random((40, d_ff)) < 0.15)
    want = [_naive_levenshtein(list(np.flatnonzero(x)), list(np.flatnonzero(y))) for x, y in zip(a, b, strict=True)]
    got = levenshtein(pack(a), pack(b), d_ff)
    np.testing.assert_array_equal(got, want)
    assert (got <= hamming(pack(a), pack(b))).all()  # a substitution replaces a delete + insert
    assert max(want) > 0


@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 0.9, 0.99, 1.0])
def test_quantile_from_histogram_equals_numpy_inverted_cdf(q: float) -> None:
    values = np.random.default_rng(3).integers(0, 30, size=997)
    hist = np.bincount(values, minlength=31).astype(np.int64)
    assert quantile_from_histogram(hist, q) == int(np.quantile(values, q, method="inverted_cdf"))


def test_pair_sums_are_exact_over_blocks() -> None:
    rng = np.random.default_rng(11)
    layers, d_ff, n = 2, 19, 60
    a = rng.random((layers, n, d_ff)) < 0.5
    b = rng.random((layers, n, d_ff)) < 0.5
    acc = PairSums("x", "y", "hamming", layers, d_ff)
    for layer in range(layers):
        for start in range(0, n, 25):  # uneven blocks
            acc.add(layer, pack(a[layer, start : start + 25]), pack(b[layer, start : start + 25]))
    acc.tokens = n
    s = acc.summary()
    for layer in range(layers):
        per_token = (a[layer] != b[layer]).sum(axis=1) / d_ff
        assert s["distance"][layer] == pytest.approx(per_token.mean(), rel=1e-15)
        assert s["sums"]["hamming_bits"][layer] == int((a[layer] != b[layer]).sum())
        assert s["distance_max"][layer] == per_token.max()
        assert s["distance_p90"][layer] == np.quantile(per_token, 0.9, method="inverted_cdf")


def test_store_round_trip_and_memmap_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    layers, tokens, d_ff = 3, 41, 20
    bits = rng.random((layers, tokens, d_ff)) < 0.5
    path = tmp_path / "p.u8"
    with PatternStore(path, layers, tokens, d_ff) as store:
        for layer in range(layers):
            for start in range(0, tokens, 16):
                store.write(layer, start, pack(bits[layer, start : start + 16]))
        np.testing.assert_array_equal(store.read(1, 5, 10), pack(bits[1, 5:15]))
        with pytest.raises(IndexError):
            store.read(0, 40, 2)
    assert path.stat().st_size == store_bytes(layers, tokens, d_ff) == layers * tokens * 3
    mm = np.memmap(path, dtype=np.uint8, mode="r", shape=(layers, tokens, 3))
    np.testing.assert_array_equal(np.unpackbits(mm, axis=2, count=d_ff).astype(bool), bits)

"""Intervals and paired tests against independent references: scipy, a direct numpy bootstrap, textbook formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from tunelens.errors import TunelensError
from tunelens.evaluation import stats
from tunelens.evaluation.compare import Scores, compare_all, compare_pair
from tunelens.evaluation.stats import StatsOptions

OPTS = StatsOptions()


@pytest.mark.parametrize(("k", "n"), [(0, 1), (0, 40), (1, 40), (20, 40), (39, 40), (40, 40), (7, 13), (523, 1000)])
@pytest.mark.parametrize("level", [0.95, 0.9])
def test_wilson_equals_scipy_and_its_formula(k: int, n: int, level: float) -> None:
    lo, hi = stats.wilson(k, n, level)
    ref = sps.binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    assert (lo, hi) == pytest.approx((ref.low, ref.high), abs=1e-12)
    # Wilson (1927): (p + z²/2n ± z √(p(1−p)/n + z²/4n²)) / (1 + z²/n), z the normal quantile
    z = sps.norm.ppf(0.5 + level / 2)
    p = k / n
    center, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert lo == pytest.approx(max(0.0, (center - half) / (1 + z * z / n)), abs=1e-12)
    assert hi == pytest.approx(min(1.0, (center + half) / (1 + z * z / n)), abs=1e-12)
    assert lo <= p <= hi  # exactly, bounds included: an error bar is never negative (k = n: hi is 1.0, not 1 − ulp)
    assert stats.wilson(0, 0) == (None, None)


@pytest.mark.parametrize(("a_only", "b_only"), [(0, 0), (0, 1), (2, 12), (12, 2), (5, 5), (7, 8), (0, 30), (40, 61)])
def test_mcnemar_exact_equals_scipy_binomtest(a_only: int, b_only: int) -> None:
    got = stats.mcnemar_exact(a_only, b_only)
    want = 1.0 if a_only + b_only == 0 else sps.binomtest(b_only, a_only + b_only, 0.5).pvalue
    assert got == pytest.approx(want, rel=1e-12, abs=0)


def _direct_bootstrap(x: np.ndarray, resamples: int, seed: int, level: float) -> tuple[float, float]:
    """The textbook percentile bootstrap of a mean: one index matrix, row means, quantiles."""
    idx = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    lo, hi = np.quantile(x[idx].mean(axis=1), [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


@pytest.mark.parametrize("n", [2, 40, 1000])  # n = 1000 draws the index matrix in several chunks
def test_bootstrap_ci_equals_a_direct_numpy_bootstrap(n: int) -> None:
    x = np.random.default_rng(7).normal(0.3, 1.0, size=n)
    for opts in (OPTS, StatsOptions(level=0.9, resamples=12_000, seed=5)):
        assert stats.bootstrap_ci(x.tolist(), None, opts) == _direct_bootstrap(x, opts.resamples, opts.seed, opts.level)


def test_ratio_bootstrap_and_paired_bootstrap_equal_direct_ones() -> None:
    rng = np.random.default_rng(3)
    tokens = rng.integers(5, 60, size=25).astype(float)
    nll_a = tokens * rng.uniform(2.0, 3.0, size=25)
    nll_b = nll_a - tokens * 0.1
    idx = np.random.default_rng(0).integers(0, 25, size=(10_000, 25))
    ratio = nll_a[idx].sum(1) / tokens[idx].sum(1)
    assert stats.bootstrap_ci(nll_a, tokens, OPTS) == tuple(np.quantile(ratio, [0.025, 0.975]))
    diff = nll_b[idx].sum(1) / tokens[idx].sum(1) - ratio  # the same items for both sides
    assert stats.paired_bootstrap_ci(nll_a, nll_b, tokens, tokens, OPTS) == tuple(np.quantile(diff, [0.025, 0.975]))
    assert stats.bootstrap_ci([1.0]) == (None, None)


@pytest.mark.parametrize("n", [2, 5, 12])
def test_exact_signflip_equals_scipy_permutation_test(n: int) -> None:
    rng = np.random.default_rng(n)
    a, b = rng.normal(size=n), rng.normal(size=n) + 0.4
    p, how = stats.signflip_p((b - a).tolist(), OPTS)
    ref = sps.permutation_test(
        (b, a), lambda x, y, axis: np.mean(x - y, axis=axis), permutation_type="samples", n_resamples=10_000,
        vectorized=True,
    )  # fmt: skip
    assert how == "exact" and p == pytest.approx(ref.pvalue, abs=1e-12)


def test_monte_carlo_signflip_agrees_with_scipy_within_sampling_error() -> None:
    rng = np.random.default_rng(11)
    d = rng.normal(0.25, 1.0, size=60)
    p, how = stats.signflip_p(d.tolist(), OPTS)
    ref = sps.permutation_test(
        (d, np.zeros_like(d)), lambda x, y, axis: np.mean(x - y, axis=axis), permutation_type="samples",
        n_resamples=200_000, vectorized=True, rng=np.random.default_rng(1),
    )  # fmt: skip
    se = math.sqrt(ref.pvalue * (1 - ref.pvalue) / 10_000)
    assert how == "monte_carlo" and abs(p - ref.pvalue) < 4 * se + 1e-4
    assert p == stats.signflip_p(d.tolist(), OPTS)[0]  # same seed, same p
    assert stats.signflip_p([0.0, 0.0]) == (1.0, "exact")


def _holm_textbook(p: list[float]) -> list[float]:
    """Holm (1979) as usually written: adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out = [0.0] * m
    for rank, i in enumerate(order):
        out[i] = max(min(1.0, (m - j) * p[order[j]]) for j in range(rank + 1))
    return out


def test_holm_adjustment() -> None:
    p = [0.01, 0.04, 0.03, 0.005, 0.2, 0.04]
    assert stats.holm(p) == pytest.approx(_holm_textbook(p), abs=1e-15)
    assert stats.holm(p) == pytest.approx([0.05, 0.12, 0.12, 0.03, 0.2, 0.12], abs=1e-12)  # worked by hand
    assert stats.holm([0.01, None, 0.02]) == [0.02, None, 0.02]  # None is not part of the family


def _scores(label: str, task: str, values: dict[str, list[float]]) -> Scores:
    s = Scores(label, task)
    n = len(next(iter(values.values())))
    for i in range(n):
        s.add({"id": f"q{i}", "scores": {m: v[i] for m, v in values.items()}})
    return s


def test_planted_pair_with_a_known_outcome() -> None:
    """40 items: A right on 26, B right on 36; 2 items only A got right, 12 only B; gold margins shifted by +1."""
    a_acc = [1.0] * 24 + [1.0, 1.0] + [0.0] * 12 + [0.0, 0.0]
    b_acc = [1.0] * 24 + [0.0, 0.0] + [1.0] * 12 + [0.0, 0.0]
    rng = np.random.default_rng(0)
    margin_a = rng.normal(size=40)
    margin_b = margin_a + 1.0
    noise_b = margin_a + rng.choice([-0.5, 0.5], size=40)  # no systematic change
    a = _scores("base", "t", {"acc": a_acc, "gold_margin": margin_a.tolist(), "other": margin_a.tolist()})
    b = _scores("ft", "t", {"acc": b_acc, "gold_margin": margin_b.tolist(), "other": noise_b.tolist()})
    rows = {r["metric"]: r for r in compare_all([(a, b)], OPTS)}
    acc = rows["acc"]
    assert (acc["n"], acc["a_only"], acc["b_only"], acc["test"]) == (40, 2, 12, "mcnemar_exact")
    assert (acc["mean_a"], acc["mean_b"], acc["diff"]) == (26 / 40, 36 / 40, pytest.approx(10 / 40))
    assert acc["p_value"] == pytest.approx(2 * (1 + 14 + 91) / 2**14, rel=1e-12)  # 2 P(X <= 2), X ~ Bin(14, 1/2)
    assert acc["ci_low"] < 10 / 40 < acc["ci_high"] and acc["ci_low"] > 0
    m = rows["gold_margin"]
    assert m["test"] == "signflip_monte_carlo" and m["diff"] == pytest.approx(1.0)
    assert m["p_value"] == pytest.approx(1 / 10_001) and m["ci_low"] == pytest.approx(1.0) == m["ci_high"]
    assert rows["other"]["p_value"] > 0.05 and rows["other"]["ci_low"] < 0 < rows["other"]["ci_high"]
    # Holm over the three rows of this family
    assert [r["p_adjusted"] for r in rows.values()] == pytest.approx(
        stats.holm([r["p_value"] for r in rows.values()]), abs=1e-15
    )
    assert rows["gold_margin"]["p_adjusted"] == pytest.approx(3 / 10_001)


def test_comparison_pairs_items_by_id_and_rejects_non_binary_scores() -> None:
    a = _scores("a", "t", {"acc": [1.0, 0.0, 1.0]})
    b = Scores("b", "t")
    for i, v in ((2, 0.0), (0, 1.0), (9, 1.0)):  # another order, one item a never scored
        b.add({"id": f"q{i}", "scores": {"acc": v}})
    row = compare_pair(a, b, "acc", OPTS)
    assert row is not None and (row["n"], row["a_only"], row["b_only"]) == (2, 1, 0)
    bad = _scores("c", "t", {"acc": [0.5, 1.0, 1.0]})
    with pytest.raises(TunelensError, match="0/1 metric"):
        compare_pair(a, bad, "acc", OPTS)


def test_options_are_checked() -> None:
    with pytest.raises(TunelensError, match="at least 10000"):
        StatsOptions(resamples=999)
    with pytest.raises(TunelensError, match="level"):
        StatsOptions(level=1.0)

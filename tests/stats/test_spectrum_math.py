"""spectrum's math against direct float64 ``numpy.linalg.svd`` on planted τ (references use no tunelens math)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tunelens.stats.spectrum_math import (
    LowRank,
    amplification,
    effective_rank,
    energy_rank,
    intruders,
    lowrank_svd,
    norm_sq,
    random_effective_rank,
    random_stable_rank,
    stable_rank,
    tau_svd,
    top_left_vectors,
)

pytestmark = pytest.mark.usefixtures("single_blas")
EPS32 = np.finfo(np.float32).eps


def ref_svals(tau: np.ndarray) -> np.ndarray:
    """numpy's float64 singular values with the documented numerical-rank tolerance applied."""
    s = np.linalg.svd(tau.astype(np.float64), compute_uv=False)
    return s[s > s[0] * max(tau.shape) * EPS32]


def ref_measures(tau: np.ndarray) -> dict[str, float]:
    s = ref_svals(tau)
    t2 = float(np.sum(tau.astype(np.float64) ** 2))
    p = s / s.sum()
    cum = np.cumsum(s**2)
    return {
        "effective_rank": float(np.exp(-np.sum(p * np.log(p)))),
        "stable_rank": t2 / s[0] ** 2,
        "energy_rank_90": int(np.argmax(cum >= 0.9 * t2 * (1 - 1e-12))) + 1,
        "energy_rank_99": int(np.argmax(cum >= 0.99 * t2 * (1 - 1e-12))) + 1,
    }


def ours(tau: torch.Tensor | LowRank, method: str = "gram") -> dict[str, float]:
    t = tau_svd(tau, 16, method)  # type: ignore[arg-type]
    t2 = norm_sq(tau)
    return {
        "effective_rank": effective_rank(t.S),
        "stable_rank": stable_rank(t.S, t2),
        "energy_rank_90": energy_rank(t.S, t2, 0.9),
        "energy_rank_99": energy_rank(t.S, t2, 0.99),
    }


def planted_low_rank(out: int, inp: int, r: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, -1, r)
    return torch.randn(out, r, generator=g) * scales, torch.randn(r, inp, generator=g) * 0.01


def decaying(out: int, inp: int, seed: int, decay: float = 0.5) -> torch.Tensor:
    """A float32 matrix with distinct singular values (i+1)^-decay and random singular vectors."""
    rng = np.random.default_rng(seed)
    n = min(out, inp)
    u, _ = np.linalg.qr(rng.standard_normal((out, n)))
    v, _ = np.linalg.qr(rng.standard_normal((inp, n)))
    s = (np.arange(n) + 1.0) ** -decay
    return torch.from_numpy((u * s) @ v.T).float()


@pytest.mark.parametrize("shape", [(150, 300), (300, 150), (40, 64)])
@pytest.mark.parametrize("method", ["gram", "svd", "factors"])
def test_exact_rank_r_tau_gives_every_rank_measure_at_most_r(shape: tuple[int, int], method: str) -> None:
    r = 5
    L, R = planted_low_rank(*shape, r, seed=1)  # noqa: N806
    tau: torch.Tensor | LowRank = LowRank(L, R) if method == "factors" else (L @ R)  # float32: rounding noise
    t = tau_svd(tau, 16, "gram" if method == "factors" else method)  # type: ignore[arg-type]
    assert t.rank == r and t.U.shape == (shape[0], r) and t.V.shape == (shape[1], r)
    m = ours(tau, "gram" if method == "factors" else method)
    assert all(v <= r + 1e-9 for v in m.values()), m
    ref = ref_measures((L @ R).numpy())
    for key, v in m.items():
        assert v == pytest.approx(ref[key], rel=1e-6), key


@pytest.mark.parametrize("shape", [(150, 300), (300, 150), (64, 64)])
@pytest.mark.parametrize("method", ["gram", "svd"])
def test_full_rank_measures_equal_numpy(shape: tuple[int, int], method: str) -> None:
    tau = decaying(*shape, seed=2) * 1e-3 + torch.randn(*shape, generator=torch.Generator().manual_seed(3)) * 1e-6
    m = ours(tau, method)
    ref = ref_measures(tau.numpy())
    assert m["energy_rank_90"] == ref["energy_rank_90"] and m["energy_rank_99"] == ref["energy_rank_99"]
    assert m["effective_rank"] == pytest.approx(ref["effective_rank"], rel=1e-9)
    assert m["stable_rank"] == pytest.approx(ref["stable_rank"], rel=1e-9)
    t = tau_svd(tau, 16, method)  # type: ignore[arg-type]
    s = np.linalg.svd(tau.double().numpy(), compute_uv=False)
    np.testing.assert_allclose(t.S.numpy(), s[: t.rank], rtol=1e-9, atol=s[0] * 1e-12)


def _proj(a: np.ndarray) -> np.ndarray:
    return a @ a.T


@pytest.mark.parametrize("shape", [(120, 200), (200, 120)])
@pytest.mark.parametrize("method", ["gram", "svd", "factors"])
def test_top_vectors_and_amplification_equal_numpy(shape: tuple[int, int], method: str) -> None:
    out, inp = shape
    w = decaying(out, inp, seed=4)
    if method == "factors":
        L, R = planted_low_rank(out, inp, 12, seed=5)  # noqa: N806
        tau: torch.Tensor | LowRank = LowRank(L, R)
        dense = (L.double() @ R.double()).numpy()
    else:
        tau = decaying(out, inp, seed=6, decay=1.0) * 1e-2
        dense = tau.double().numpy()
    r = 8
    t = tau_svd(tau, r, "svd" if method == "svd" else "gram")
    u, s, vt = np.linalg.svd(dense, full_matrices=False)
    np.testing.assert_allclose(_proj(t.U.numpy()), _proj(u[:, :r]), atol=1e-9)
    np.testing.assert_allclose(_proj(t.V.numpy()), _proj(vt[:r].T), atol=1e-9)
    expected = np.linalg.norm(dense) / np.linalg.norm(u[:, :r].T @ w.double().numpy() @ vt[:r].T)
    assert amplification(w, t, math.sqrt(norm_sq(tau))) == pytest.approx(expected, rel=1e-7)
    assert math.sqrt(norm_sq(tau)) == pytest.approx(np.linalg.norm(dense), rel=1e-6 if method != "factors" else 1e-12)


def test_lowrank_svd_equals_numpy_svd_of_the_product() -> None:
    L, R = planted_low_rank(90, 70, 6, seed=7)  # noqa: N806
    u, s, v = lowrank_svd(L, R)
    prod = L.double().numpy() @ R.double().numpy()
    ref = np.linalg.svd(prod, compute_uv=False)[:6]
    np.testing.assert_allclose(s.numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose((u * s) @ v.T, prod, atol=1e-14 * np.abs(prod).max() * 100)
    np.testing.assert_allclose(u.T @ u, np.eye(6), atol=1e-12)
    np.testing.assert_allclose(v.T @ v, np.eye(6), atol=1e-12)


def test_dense_and_factored_tau_agree() -> None:
    L, R = planted_low_rank(100, 160, 7, seed=8)  # noqa: N806
    w = decaying(100, 160, seed=9)
    dense = (L.double() @ R.double()).float()
    a, b = ours(dense), ours(LowRank(L, R))
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-5), k
    ua = top_left_vectors(w, dense, 10)
    ub = top_left_vectors(w, LowRank(L, R), 10)
    np.testing.assert_allclose(_proj(ua.numpy()), _proj(ub.numpy()), atol=1e-6)


def ref_intruders(w: np.ndarray, wft: np.ndarray, k: int, eps: float) -> int:
    """Shuttleworth et al.'s count from numpy's reduced SVDs."""
    u_pre = np.linalg.svd(w.astype(np.float64), full_matrices=False)[0]
    u_ft = np.linalg.svd(wft.astype(np.float64), full_matrices=False)[0][:, :k]
    return int(np.sum(np.max(np.abs(u_pre.T @ u_ft), axis=0) < eps))


def _pre_basis(w: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svd(w.double(), full_matrices=False)[0].float()


@pytest.mark.parametrize("shape", [(160, 240), (240, 160)])
@pytest.mark.parametrize("method", ["gram", "svd"])
def test_planted_intruder_is_counted_and_small_noise_is_not(shape: tuple[int, int], method: str) -> None:
    out, inp = shape
    rng = np.random.default_rng(10)
    n = min(out, inp)
    u, _ = np.linalg.qr(rng.standard_normal((out, n)))
    v, _ = np.linalg.qr(rng.standard_normal((inp, n)))
    s = 10.0 * 0.8 ** np.arange(n) + 0.01  # well-separated top singular values
    w = torch.from_numpy((u * s) @ v.T).float()
    u_pre = _pre_basis(w)
    # a direction spread evenly over 16 of W_pre's weakest left singular vectors: |cos| <= 1/4 with each
    x = u[:, -16:].sum(1) / 4.0
    y = v[:, -16:].sum(1) / 4.0
    intruder = torch.from_numpy(3 * s[0] * np.outer(x, y)).float()
    noise = torch.randn(out, inp, generator=torch.Generator().manual_seed(11)) * 1e-4
    for tau, expected in ((intruder, 1), (noise, 0), (intruder + noise, 1)):
        u_ft = top_left_vectors(w, tau, 10, method)  # type: ignore[arg-type]
        got = intruders(u_pre, u_ft, 0.5)
        assert got == expected == ref_intruders(w.numpy(), (w.double() + tau.double()).numpy(), 10, 0.5)
    if out > inp:  # tall W: a direction outside W's column space is an intruder (cos 0 with all of U_pre)
        q, _ = np.linalg.qr(np.concatenate([u, rng.standard_normal((out, 1))], axis=1))
        z = q[:, -1]
        tau = torch.from_numpy(3 * s[0] * np.outer(z, v[:, 0])).float()
        u_ft = top_left_vectors(w, tau, 10, method)  # type: ignore[arg-type]
        assert (
            intruders(u_pre, u_ft, 0.5) == 1 == ref_intruders(w.numpy(), (w.double() + tau.double()).numpy(), 10, 0.5)
        )


@pytest.mark.parametrize("shape", [(150, 260), (260, 150)])
def test_top_left_vectors_gram_equals_numpy(shape: tuple[int, int]) -> None:
    w = decaying(*shape, seed=12)
    tau = decaying(*shape, seed=13, decay=1.0) * 0.05
    ref = np.linalg.svd(w.double().numpy() + tau.double().numpy(), full_matrices=False)[0][:, :10]
    for method in ("gram", "svd"):
        got = top_left_vectors(w, tau, 10, method)  # type: ignore[arg-type]
        np.testing.assert_allclose(_proj(got.numpy()), _proj(ref), atol=1e-9)


def test_zero_tau_is_undefined() -> None:
    tau = torch.zeros(30, 50)
    t = tau_svd(tau, 16, "gram")
    assert t.rank == 0 and t.U.shape == (30, 0)
    for v in (effective_rank(t.S), stable_rank(t.S, 0.0), energy_rank(t.S, 0.0, 0.9)):
        assert math.isnan(v)
    assert math.isnan(amplification(decaying(30, 50, seed=1), t, 0.0))


def test_gram_falls_back_to_svd_when_a_top_vector_is_not_trusted() -> None:
    """For 40×60, σ₂/σ₁ = 1e-5 is above the numerical-rank tolerance (60·eps32 ≈ 7.2e-6) but its Gram column
    is not trusted (eps64·σ₁²/σ₂² ≈ 2.2e-6 > 1e-6): the decomposition falls back to full SVD."""
    rng = np.random.default_rng(14)
    u, _ = np.linalg.qr(rng.standard_normal((40, 2)))
    v, _ = np.linalg.qr(rng.standard_normal((60, 2)))
    tau = torch.from_numpy((u * np.array([1.0, 1e-5])) @ v.T).float()
    t = tau_svd(tau, 16, "gram")
    assert t.method == "svd" and t.rank == 2
    assert tau_svd(tau, 1, "gram").method == "gram"  # only the top vector needed: trusted


@pytest.mark.parametrize("shape", [(200, 200), (200, 600), (600, 200), (100, 900)])
def test_random_baselines_match_monte_carlo(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(15)
    er, sr = [], []
    for _ in range(4):
        s = np.linalg.svd(rng.standard_normal(shape), compute_uv=False)
        p = s / s.sum()
        er.append(np.exp(-np.sum(p * np.log(p))))
        sr.append(np.sum(s**2) / s[0] ** 2)
    assert random_effective_rank(*shape) == pytest.approx(np.mean(er), rel=0.01)
    assert random_stable_rank(*shape) == pytest.approx(np.mean(sr), rel=0.06)

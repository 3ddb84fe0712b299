"""SSA math against numpy/scipy: exact bases, planted τ (share ≈ 1 / ≈ 0), random τ ≈ baseline."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import scipy.linalg
import torch

from tunelens.errors import TunelensError
from tunelens.stats.subspace import baselines, random_share_std, share_curves, tau_spectrum
from tunelens.stats.subspace_basis import Criterion, decompose

SHAPES = [(48, 160), (160, 48), (130, 130)]

pytestmark = pytest.mark.usefixtures("single_blas")


def planted_weight(out: int, inp: int, seed: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """W = U diag(σ) Vᵀ with known orthonormal U, V (scipy QR) and well-separated σ."""
    rng = np.random.default_rng(seed)
    r = min(out, inp)
    u, _ = scipy.linalg.qr(rng.standard_normal((out, out)))
    v, _ = scipy.linalg.qr(rng.standard_normal((inp, inp)))
    sigma = np.geomspace(10.0, 0.1, r)
    w = (u[:, :r] * sigma) @ v[:, :r].T
    return torch.from_numpy(w).float(), u, v


def _shares(w: torch.Tensor, tau: torch.Tensor, k: int, method: Any = "auto") -> tuple[float, float, float]:
    basis = decompose(w, method)
    t2, left, right, both = share_curves(basis, tau, k)
    return float(left[k - 1]) / t2, float(right[k - 1]) / t2, float(both[k - 1]) / t2


@pytest.mark.parametrize("method", ["gram", "svd"])
@pytest.mark.parametrize("shape", SHAPES)
def test_basis_matches_scipy(shape: tuple[int, int], method: Any) -> None:
    torch.manual_seed(0)
    w = torch.randn(shape)
    basis = decompose(w, method)
    assert basis.method == method
    s_ref = scipy.linalg.svdvals(w.double().numpy())
    np.testing.assert_allclose(basis.S.numpy(), s_ref, rtol=1e-9, atol=1e-12)
    u, _, vt = scipy.linalg.svd(w.double().numpy(), full_matrices=False)
    for k in (1, 10, min(shape) // 2, min(shape)):
        pu = basis.U[:, :k].double().numpy()
        pv = basis.V[:, :k].double().numpy()
        np.testing.assert_allclose(pu @ pu.T, u[:, :k] @ u[:, :k].T, atol=2e-5)
        np.testing.assert_allclose(pv @ pv.T, vt[:k].T @ vt[:k], atol=2e-5)


def test_gram_trusts_only_resolved_columns_when_rank_deficient() -> None:
    torch.manual_seed(1)
    w = torch.randn(150, 6) @ torch.randn(6, 200)  # rank 6 < 150
    basis = decompose(w, "gram")
    assert basis.method == "gram" and basis.trusted == 6
    np.testing.assert_allclose(basis.S[:6].numpy(), scipy.linalg.svdvals(w.double().numpy())[:6], rtol=1e-9)
    u, _, vt = scipy.linalg.svd(w.double().numpy(), full_matrices=False)
    pv = basis.V[:, :6].double().numpy()
    np.testing.assert_allclose(pv @ pv.T, vt[:6].T @ vt[:6], atol=2e-6)
    assert decompose(w, "svd").trusted == 150


@pytest.mark.parametrize(("kappa", "all_trusted"), [(1e3, True), (3e4, True), (3e5, False), (1e7, False)])
def test_gram_accuracy_and_trusted_columns_by_condition_number(kappa: float, all_trusted: bool) -> None:
    """Gram squares the condition number: only columns that stay accurate (~1e-7) are trusted."""
    rng = np.random.default_rng(9)
    out, inp = 60, 200
    u, _ = scipy.linalg.qr(rng.standard_normal((out, out)))
    v, _ = scipy.linalg.qr(rng.standard_normal((inp, out)), mode="economic")
    sigma = np.geomspace(1.0, 1.0 / kappa, out)
    w = (u * sigma) @ v.T
    basis = decompose(torch.from_numpy(w), "gram")
    assert basis.method == "gram"
    expect = int(np.sum(np.finfo(np.float64).eps / sigma**2 <= 1e-6))
    assert basis.trusted == expect and (expect == out) == all_trusted
    for k in (out // 2, basis.trusted - 1, basis.trusted):  # projectors onto V_k, the side divided by sigma
        pv = basis.V[:, :k].double().numpy()
        np.testing.assert_allclose(pv @ pv.T, v[:, :k] @ v[:, :k].T, atol=1e-6)


@pytest.mark.parametrize("method", ["gram", "svd"])
@pytest.mark.parametrize("shape", SHAPES)
def test_planted_inside_top_k_gives_one(shape: tuple[int, int], method: Any) -> None:
    w, u, v = planted_weight(*shape, seed=2)
    k = min(shape) // 4
    a = np.random.default_rng(3).standard_normal((k, k))
    tau = torch.from_numpy(u[:, :k] @ a @ v[:, :k].T).float()
    left, right, both = _shares(w, tau, k, method)
    assert left == pytest.approx(1.0, abs=1e-5)
    assert right == pytest.approx(1.0, abs=1e-5)
    assert both == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("method", ["gram", "svd"])
@pytest.mark.parametrize("shape", SHAPES)
def test_planted_in_complement_gives_zero(shape: tuple[int, int], method: Any) -> None:
    w, u, v = planted_weight(*shape, seed=4)
    k = min(shape) // 4
    rng = np.random.default_rng(5)
    # left and right complements: orthogonal to the top-k on both sides
    tau = torch.from_numpy(u[:, k:] @ rng.standard_normal((shape[0] - k, shape[1] - k)) @ v[:, k:].T).float()
    left, right, both = _shares(w, tau, k, method)
    assert abs(left) < 1e-6 and abs(right) < 1e-6 and abs(both) < 1e-6
    # one-sided plant: new output directions, any input directions -> left 0, right at chance
    tau_left = torch.from_numpy(u[:, k:] @ rng.standard_normal((shape[0] - k, shape[1]))).float()
    left, right, both = _shares(w, tau_left, k, method)
    assert abs(left) < 1e-6 and abs(both) < 1e-6
    assert right > 0.5 * k / shape[1]


@pytest.mark.parametrize("shape", SHAPES)
def test_random_tau_within_sampling_error_of_baseline(shape: tuple[int, int]) -> None:
    torch.manual_seed(6)
    w = torch.randn(shape) * torch.linspace(3, 0.1, shape[1])  # anisotropic spectrum
    basis = decompose(w)
    out, inp = shape
    for seed in range(3):
        tau = torch.randn(shape, generator=torch.Generator().manual_seed(100 + seed))
        t2, left, right, both = share_curves(basis, tau, min(shape))
        for k in (3, min(shape) // 3, min(shape) - 2):
            for curve, base in zip((left, right, both), baselines(k, out, inp), strict=True):
                z = (float(curve[k - 1]) / t2 - base) / random_share_std(base, out * inp)
                assert abs(z) < 5, (k, z)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("kind", "value"), [("energy", 0.5), ("energy", 0.9), ("rank_fraction", 0.3), ("rank", 7)])
def test_shares_match_reference(
    shape: tuple[int, int], kind: Any, value: float, ssa_ref: Callable[..., dict[str, float]]
) -> None:
    torch.manual_seed(7)
    w = torch.randn(shape) * torch.linspace(2, 0.2, shape[0])[:, None]
    tau = torch.randn(shape) + 0.3 * w  # partly aligned
    basis = decompose(w)
    crit = Criterion(kind, value)
    k = crit.k(basis.S)
    ref = ssa_ref(w.numpy(), tau.numpy(), kind, value)
    assert k == ref["k"]
    t2, left, right, both = share_curves(basis, tau, k)
    assert float(left[k - 1]) / t2 == pytest.approx(ref["share_left"], rel=1e-5, abs=1e-7)
    assert float(right[k - 1]) / t2 == pytest.approx(ref["share_right"], rel=1e-5, abs=1e-7)
    assert float(both[k - 1]) / t2 == pytest.approx(ref["share_both"], rel=1e-5, abs=1e-7)
    # every k <= K comes out of one projection
    for kk in (1, k // 2 + 1, k):
        r2 = ssa_ref(w.numpy(), tau.numpy(), "rank", kk)
        assert float(both[kk - 1]) / t2 == pytest.approx(r2["share_both"], rel=1e-5, abs=1e-7)


def test_criteria_choose_k() -> None:
    s = torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64)  # energies 16, 9, 4, 1 of 30
    assert Criterion("energy", 16 / 30).k(s) == 1
    assert Criterion("energy", 0.54).k(s) == 2
    assert Criterion("energy", 0.9).k(s) == 3
    assert Criterion("energy", 1.0).k(s) == 4
    assert Criterion("rank_fraction", 0.5).k(s) == 2
    assert Criterion("rank_fraction", 0.6).k(s) == 3
    assert Criterion("rank", 10).k(s) == 4
    assert Criterion("energy", 0.9).label == "energy=0.9" and Criterion("rank", 16).label == "rank=16"
    for bad in (("energy", 0.0), ("energy", 1.5), ("rank_fraction", -0.1), ("rank", 0), ("rank", 2.5)):
        with pytest.raises(TunelensError):
            Criterion(*bad)  # type: ignore[arg-type]


def test_tau_spectrum_matches_reference(tau_ref: Callable[..., tuple[float, float]]) -> None:
    gen = torch.Generator().manual_seed(8)
    low = torch.randn(60, 5, generator=gen) @ torch.randn(5, 90, generator=gen)  # LoRA-like rank 5
    erank, top = tau_spectrum(low, 16)
    ref_e, ref_top = tau_ref(low.numpy(), 16)
    assert erank == pytest.approx(ref_e, rel=1e-6) and 1 < erank <= 5
    assert top == pytest.approx(1.0, abs=1e-9) and ref_top == pytest.approx(1.0, abs=1e-9)
    full = torch.randn(90, 60, generator=gen)
    erank, top = tau_spectrum(full, 4)
    ref_e, ref_top = tau_ref(full.numpy(), 4)
    assert erank == pytest.approx(ref_e, rel=1e-6) and top == pytest.approx(ref_top, rel=1e-6)
    assert all(math.isnan(x) for x in tau_spectrum(torch.zeros(4, 6), 2))

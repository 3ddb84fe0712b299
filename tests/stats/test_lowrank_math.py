"""The low-rank paths (a LoRA adapter's τ = L R kept factored) equal the dense computations: numpy float64
SVD for singular values, the dense share curves and the dense float64 sums."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tunelens.stats.accumulate import lowrank_sums, part_sums
from tunelens.stats.spectrum_math import LowRank
from tunelens.stats.subspace import lowrank_singular_values, share_curves, share_curves_lowrank, tau_spectrum
from tunelens.stats.subspace_basis import decompose


@pytest.fixture
def planted() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(48, 80, generator=gen)
    left = torch.randn(48, 5, generator=gen) * 0.1
    right = torch.randn(5, 80, generator=gen) * 0.1
    return w, left, right


def test_singular_values_from_factors(planted: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    _, left, right = planted
    ref = np.linalg.svd(left.double().numpy() @ right.double().numpy(), compute_uv=False)[:5]
    got = lowrank_singular_values(left, right).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    dense = tau_spectrum((left.double() @ right.double()).float(), 3)
    fact = tau_spectrum(LowRank(left, right), 3)
    assert fact == pytest.approx(dense, rel=1e-5)


def test_share_curves_from_factors(planted: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    w, left, right = planted
    basis = decompose(w.double().float(), "svd")
    dense = share_curves(basis, (left.double() @ right.double()).float(), 30)
    fact = share_curves_lowrank(basis, left, right, 30)
    assert fact[0] == pytest.approx(dense[0], rel=1e-6)
    for a, b in zip(fact[1:], dense[1:], strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-9)


def test_sums_from_factors(planted: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    w, left, right = planted
    tau = left.double() @ right.double()
    got = lowrank_sums(w, left, right)
    ref = part_sums(w, [(tau.float(), True)], null=False)
    wd = w.double().numpy()
    assert got.base_sq == pytest.approx(float((wd * wd).sum()), rel=1e-7)  # float32 products
    # float32 products: error bounded relative to ‖W‖·‖τ‖ (Cauchy-Schwarz), as for diff's cosines
    bound = 1e-6 * float(np.linalg.norm(wd) * np.linalg.norm(tau.numpy()))
    assert got.base_dot[0] == pytest.approx(float((wd * tau.numpy()).sum()), abs=bound)
    assert got.cross[0][0] == pytest.approx(float((tau.numpy() ** 2).sum()), rel=1e-12)
    assert got.cross[0][0] == pytest.approx(ref.cross[0][0], rel=1e-6)

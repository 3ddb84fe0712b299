"""Independent numpy/scipy references for the subspace-alignment tests (no tunelens math used)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
import scipy.linalg


def _ref_k(s: np.ndarray, kind: str, value: float) -> int:
    r = len(s)
    if kind == "rank":
        return min(int(value), r)
    if kind == "rank_fraction":
        return min(max(1, int(np.ceil(value * r - 1e-9))), r)
    e = np.cumsum(s**2) / np.sum(s**2)
    return int(np.argmax(e >= value * (1 - 1e-12))) + 1


def reference_shares(w: np.ndarray, tau: np.ndarray, kind: str, value: float) -> dict[str, float]:
    """k, retained energy and the three shares from scipy's float64 SVD of ``w`` ([out, in])."""
    u, s, vt = scipy.linalg.svd(w.astype(np.float64), full_matrices=False)
    k = _ref_k(s, kind, value)
    uk, vk = u[:, :k], vt[:k].T
    t = tau.astype(np.float64)
    t2 = np.sum(t**2)
    return {
        "k": k,
        "energy": float(np.sum(s[:k] ** 2) / np.sum(s**2)),
        "share_left": float(np.sum((uk.T @ t) ** 2) / t2),
        "share_right": float(np.sum((t @ vk) ** 2) / t2),
        "share_both": float(np.sum((uk.T @ t @ vk) ** 2) / t2),
    }


def reference_tau_spectrum(tau: np.ndarray, r: int) -> tuple[float, float]:
    s = scipy.linalg.svdvals(tau.astype(np.float64))
    s = s[s > s[0] * 1e-7]
    p = s / s.sum()
    return float(np.exp(-np.sum(p * np.log(p)))), float(np.sum(s[:r] ** 2) / np.sum(s**2))


def reference_spectrum(w: np.ndarray, tau: np.ndarray, k: int = 10, eps: float = 0.5, r: int = 16) -> dict[str, float]:
    """Every spectrum.csv measure of one [out, in] weight and τ from numpy's float64 SVDs (the documented
    formulas and numerical-rank tolerance σ₁·max(out, in)·eps32; no tunelens math)."""
    w64, t64 = w.astype(np.float64), tau.astype(np.float64)
    u, s_all, vt = np.linalg.svd(t64, full_matrices=False)
    t2 = float(np.sum(t64**2))
    rank = int(np.sum(s_all > s_all[0] * max(tau.shape) * np.finfo(np.float32).eps)) if s_all[0] > 0 else 0
    s = s_all[:rank]
    out = {"tau_norm": float(np.sqrt(t2)), "sigma_1": float(s_all[0])}
    if rank:
        p = s / s.sum()
        cum = np.cumsum(s**2)
        rr = min(r, rank)
        out |= {
            "effective_rank": float(np.exp(-np.sum(p * np.log(p)))),
            "stable_rank": t2 / s[0] ** 2,
            "energy_rank_90": min(int(np.argmax(cum >= 0.9 * t2 * (1 - 1e-12))) + 1, rank),
            "energy_rank_99": min(int(np.argmax(cum >= 0.99 * t2 * (1 - 1e-12))) + 1, rank),
            "amplification": float(np.sqrt(t2) / np.linalg.norm(u[:, :rr].T @ w64 @ vt[:rr].T)),
        }
    u_pre = np.linalg.svd(w64, full_matrices=False)[0]
    u_ft = np.linalg.svd(w64 + t64, full_matrices=False)[0][:, :k]
    out["intruders"] = int(np.sum(np.max(np.abs(u_pre.T @ u_ft), axis=0) < eps))
    return out


@pytest.fixture(scope="session")
def spectrum_ref() -> Callable[..., dict[str, float]]:
    return reference_spectrum


@pytest.fixture(scope="session")
def ssa_ref() -> Callable[[np.ndarray, np.ndarray, str, float], dict[str, float]]:
    return reference_shares


@pytest.fixture(scope="session")
def tau_ref() -> Callable[[np.ndarray, int], tuple[float, float]]:
    return reference_tau_spectrum


@pytest.fixture(scope="module")
def single_blas() -> Iterator[None]:
    """One torch and one numpy/scipy BLAS thread: their threads spin against each other on a busy 2-core
    machine (6x slower).

    Speed only; without ``threadpoolctl`` the tests run unchanged.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: OpenMP barriers only cost time on a shared machine
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
    else:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(threads)

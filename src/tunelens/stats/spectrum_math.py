"""Pure math of ``spectrum``: τ's singular values (dense or low-rank factors), its rank measures, the
amplification factor and the intruder dimensions of ``W + τ`` (tensors in, numbers out; no I/O).

Conventions: 2-D weights are ``[out, in]``; singular values are float64 and descending; a dense τ is
float32. Every product that feeds a singular value is formed in float64 **chunk by chunk** (``CHUNK``
columns of the smaller-side matrix at a time), so no float64 copy of a whole weight is ever held.
``LowRank(L, R)`` is τ = L @ R (a PEFT adapter gives L = scale·B, R = A).

- **Gram path** (``method="gram"``): eigh of the float64 Gram matrix of τ's smaller side gives every
  σᵢ = √λᵢ and one side's singular vectors; the other side's top-r vectors are ``τᵀ u / σ`` (or
  ``τ v / σ``). Such a column is accurate to ≈ 0.1·eps64·σ₁²/σᵢ²; only columns with
  ``eps64·σ₁²/σᵢ² ≤ GRAM_MAX_ERROR`` (1e-6, as for the base's basis) are used, else the whole
  decomposition falls back to ``svd``.
- **svd path**: ``torch.linalg.svd`` of τ in float64 (LAPACK ``gesdd``).
- **factors**: QR of L and of Rᵀ, SVD of the r×r core — exact, O((out + in)·r²).

The **numerical rank** counts σᵢ > σ₁·max(out, in)·eps32 (``numpy.linalg.matrix_rank``'s default
tolerance for float32 data, τ's storage precision); smaller σᵢ are set to 0 (a rank-r τ stored in
float32 has rounding noise of about eps32·σ₁ in every other direction).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from tunelens.stats.subspace_basis import GRAM_MAX_ERROR

EPS32 = float(torch.finfo(torch.float32).eps)
EPS64 = float(torch.finfo(torch.float64).eps)
CHUNK = 2048  # columns of a float64 block (4096 rows x 2048 = 64 MiB)
SvdMethod = Literal["gram", "svd"]


@dataclass(frozen=True)
class LowRank:
    """τ = L @ R with ``L [out, r]`` and ``R [r, in]`` (any float dtype; used in float64)."""

    L: torch.Tensor
    R: torch.Tensor

    def __post_init__(self) -> None:
        if self.L.dim() != 2 or self.R.dim() != 2 or self.L.shape[1] != self.R.shape[0]:
            raise ValueError(
                f"LowRank needs L [out, r] and R [r, in], got {tuple(self.L.shape)}, {tuple(self.R.shape)}"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.L.shape[0]), int(self.R.shape[1])

    @property
    def T(self) -> LowRank:  # noqa: N802  # the matrix transpose, as torch names it
        return LowRank(self.R.T, self.L.T)

    def dense(self) -> torch.Tensor:
        """τ as a float64 ``[out, in]`` matrix."""
        return self.L.double() @ self.R.double()


Tau = torch.Tensor | LowRank


@dataclass(frozen=True)
class TauSVD:
    """τ's singular values and top-r singular vectors.

    ``S`` holds every nonzero singular value (float64, descending; those below the numerical-rank
    tolerance are dropped, so ``len(S)`` is the numerical rank); ``U [out, r']`` and ``V [in, r']`` are
    the top ``r' = min(r, rank)`` singular vectors (float64); ``method`` is gram, svd or factors.
    """

    S: torch.Tensor
    U: torch.Tensor
    V: torch.Tensor
    method: str

    @property
    def rank(self) -> int:
        return int(self.S.numel())


def shape_of(tau: Tau) -> tuple[int, int]:
    return tau.shape if isinstance(tau, LowRank) else (int(tau.shape[0]), int(tau.shape[1]))


def transpose(tau: Tau) -> Tau:
    return tau.T


def narrow(tau: Tau, axis: int, start: int, size: int) -> Tau:
    """Rows (``axis=0``) or columns (``axis=1``) ``start:start+size`` of τ, dense or factored."""
    if isinstance(tau, LowRank):
        return (
            LowRank(tau.L.narrow(0, start, size), tau.R) if axis == 0 else LowRank(tau.L, tau.R.narrow(1, start, size))
        )
    return tau.narrow(axis, start, size)


def cols64(tau: Tau, start: int, stop: int) -> torch.Tensor:
    """Columns ``start:stop`` of τ in float64 (``[rows, stop-start]``)."""
    if isinstance(tau, LowRank):
        return tau.L.double() @ tau.R[:, start:stop].double()
    return tau[:, start:stop].double()


def norm_sq(tau: Tau) -> float:
    """‖τ‖²_F in float64 (from the factors: Σ (LᵀL) ⊙ (RRᵀ), never the dense product)."""
    if isinstance(tau, LowRank):
        a, b = tau.L.double(), tau.R.double()
        return float(((a.T @ a) * (b @ b.T)).sum())
    return float(tau.square().sum(dtype=torch.float64))


Columns = Callable[[int, int], torch.Tensor]


def gram64(cols: Columns, n: int, chunk: int = CHUNK) -> torch.Tensor:
    """``X Xᵀ`` in float64 for the ``[s, n]`` matrix whose column blocks ``cols(a, b)`` yields."""
    g: torch.Tensor | None = None
    for a in range(0, n, chunk):
        blk = cols(a, min(n, a + chunk))  # [s, c] float64
        g = blk @ blk.T if g is None else g.addmm_(blk, blk.T)
    assert g is not None, "gram64 of a matrix without columns"
    return g


def times_t(cols: Columns, n: int, e: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """``Xᵀ E`` (``[n, k]`` float64) for the ``[s, n]`` matrix of ``cols`` and ``E [s, k]``."""
    return torch.cat([cols(a, min(n, a + chunk)).T @ e for a in range(0, n, chunk)])


def rank_tolerance(sigma_1: float, shape: tuple[int, int]) -> float:
    """σ at or below this counts as zero: σ₁·max(out, in)·eps32 (numpy's matrix_rank default for float32)."""
    return sigma_1 * max(shape) * EPS32


def _side(x: Tau, wide: bool) -> Tau:
    return x if wide else transpose(x)


def lowrank_svd(L: torch.Tensor, R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # noqa: N803
    """``(U [out, r], S [r], V [in, r])`` of ``L @ R`` from the factors, float64: ``L = Q_L R_L``,
    ``Rᵀ = Q_R R_R``, ``R_L R_Rᵀ = Uc diag(S) Vcᵀ``, so ``L R = (Q_L Uc) diag(S) (Q_R Vc)ᵀ``."""
    ql, rl = torch.linalg.qr(L.double())  # [out, r], [r, r]
    qr_, rr = torch.linalg.qr(R.double().T)  # [in, r], [r, r]
    uc, s, vch = torch.linalg.svd(rl @ rr.T)  # core [r, r]
    return ql @ uc, s, qr_ @ vch.T


def tau_svd(tau: Tau, top_r: int, method: SvdMethod = "gram", chunk: int = CHUNK) -> TauSVD:
    """Every singular value of τ and its top ``min(top_r, rank)`` singular vector pairs (module doc)."""
    shape = shape_of(tau)
    if isinstance(tau, LowRank):
        u, s, v = lowrank_svd(tau.L, tau.R)
        return _truncate(u, s, v, shape, top_r, "factors")
    if method == "gram":
        found = _gram_svd(tau, top_r, chunk)
        if found is not None:
            return found
    u, s, vh = torch.linalg.svd(tau.double(), full_matrices=False)  # [out, m], [m], [m, in]
    return _truncate(u, s, vh.T, shape, top_r, "svd")


def _truncate(
    u: torch.Tensor, s: torch.Tensor, v: torch.Tensor, shape: tuple[int, int], top_r: int, method: str
) -> TauSVD:
    s1 = float(s[0]) if s.numel() else 0.0
    rank = int((s > rank_tolerance(s1, shape)).sum()) if s1 > 0 else 0
    r = min(top_r, rank)
    return TauSVD(s[:rank].clone(), u[:, :r].contiguous(), v[:, :r].contiguous(), method)


def _gram_svd(tau: torch.Tensor, top_r: int, chunk: int) -> TauSVD | None:
    """The Gram path, or ``None`` when a needed column is not trusted (the caller uses svd)."""
    out, inp = int(tau.shape[0]), int(tau.shape[1])
    wide = out <= inp
    side = tau if wide else tau.T  # [s, big]
    n = int(side.shape[1])

    def cols(a: int, b: int) -> torch.Tensor:
        return side[:, a:b].double()

    lam, e = torch.linalg.eigh(gram64(cols, n, chunk))  # ascending
    lam, e = lam.flip(0).clamp_min(0.0), e.flip(1)
    s = lam.sqrt()
    s1 = float(s[0]) if s.numel() else 0.0
    rank = int((s > rank_tolerance(s1, (out, inp))).sum()) if s1 > 0 else 0
    r = min(top_r, rank)
    if r and float(lam[r - 1]) * GRAM_MAX_ERROR <= float(lam[0]) * EPS64:
        return None  # a top-r column of the other side would not be accurate
    small = e[:, :r]  # [s, r]
    other = times_t(cols, n, small, chunk) / s[:r]  # [big, r]
    u, v = (small, other) if wide else (other, small)
    return TauSVD(s[:rank].clone(), u.contiguous(), v.contiguous(), "gram")


# --- measures of τ's spectrum -------------------------------------------------------------------------


def effective_rank(s: torch.Tensor) -> float:
    """exp(−Σ pᵢ log pᵢ), pᵢ = σᵢ/Σσⱼ over the nonzero σ (Roy & Vetterli 2007); NaN for τ = 0."""
    s = s[s > 0].double()
    if not s.numel():
        return math.nan
    p = s / s.sum()
    return math.exp(float(-(p * p.log()).sum()))


def stable_rank(s: torch.Tensor, tau_sq: float) -> float:
    """‖τ‖²_F / σ₁²; NaN for τ = 0."""
    return tau_sq / float(s[0]) ** 2 if s.numel() and float(s[0]) > 0 else math.nan


def energy_rank(s: torch.Tensor, tau_sq: float, eta: float) -> float:
    """Smallest r with Σᵢ≤ᵣ σᵢ² ≥ η‖τ‖²_F (capped at the numerical rank ``len(s)``); NaN for τ = 0."""
    if not s.numel() or tau_sq <= 0:
        return math.nan
    energy = s.double().square().cumsum(0)
    found = int(torch.searchsorted(energy, eta * tau_sq * (1 - 1e-12)).item()) + 1
    return min(found, int(s.numel()))


def amplification(w: torch.Tensor, tsvd: TauSVD, tau_norm: float, chunk: int = CHUNK) -> float:
    """The LoRA paper's factor (Hu et al. 2021, §7.3): ‖τ‖_F / ‖U_rᵀ W V_r‖_F with U_r, V_r τ's own
    top-r singular vectors, float64 (``W V_r`` chunked). NaN for τ = 0; inf when W has nothing there."""
    if not tsvd.U.shape[1]:
        return math.nan
    wv = torch.zeros(w.shape[0], tsvd.V.shape[1], dtype=torch.float64)  # W V_r, [out, r]
    for a in range(0, int(w.shape[1]), chunk):
        wv.addmm_(w[:, a : a + chunk].double(), tsvd.V[a : a + chunk])
    den = float(torch.linalg.matrix_norm(tsvd.U.T @ wv))
    return tau_norm / den if den > 0 else math.inf


# --- intruder dimensions ------------------------------------------------------------------------------


def top_left_vectors(w: torch.Tensor, tau: Tau, k: int, method: SvdMethod = "gram", chunk: int = CHUNK) -> torch.Tensor:
    """The top-k left singular vectors of ``W_ft = W + τ`` (``[out, k']`` float64, k' = min(k, out, in)).

    One float64 Gram eigh of W_ft's smaller side (formed chunk by chunk from W and τ); for a tall
    W_ft the left vectors are ``W_ft V_k / σ`` (trusted columns only, else full float64 SVD)."""
    out, inp = int(w.shape[0]), int(w.shape[1])
    k = min(k, out, inp)
    if method == "gram":
        wide = out <= inp
        ws, ts = (w, tau) if wide else (w.T, transpose(tau))
        n = int(ws.shape[1])

        def cols(a: int, b: int) -> torch.Tensor:
            return ws[:, a:b].double() + cols64(ts, a, b)

        lam, e = torch.linalg.eigh(gram64(cols, n, chunk))
        lam, e = lam.flip(0).clamp_min(0.0), e.flip(1)
        top: torch.Tensor
        if wide:
            top = e[:, :k].contiguous()
            return top
        if k and float(lam[k - 1]) * GRAM_MAX_ERROR > float(lam[0]) * EPS64:
            top = times_t(cols, n, e[:, :k], chunk) / lam[:k].sqrt()
            return top
    dense = tau.dense() if isinstance(tau, LowRank) else tau.double()
    u, _s, _vh = torch.linalg.svd(w.double() + dense, full_matrices=False)
    top = u[:, :k].contiguous()
    return top


def max_abs_cos(u_pre: torch.Tensor, u_ft: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """For each column of ``u_ft [out, k]``: max over the columns of ``u_pre [out, r]`` of |cos|
    (both orthonormal; the product in float64, chunked over ``u_pre``'s columns)."""
    r = int(u_pre.shape[1])
    best = torch.zeros(u_ft.shape[1], dtype=torch.float64)
    for a in range(0, r, chunk):
        c = u_pre[:, a : a + chunk].double().T @ u_ft  # [c, k]
        best = torch.maximum(best, c.abs().amax(0))
    return best


def intruders(u_pre: torch.Tensor, u_ft: torch.Tensor, eps: float) -> int:
    """How many of W_ft's top-k left singular vectors have max |cos| < ``eps`` with every left singular
    vector of W_pre (Shuttleworth et al. 2024, "LoRA vs full fine-tuning: an illusion of equivalence")."""
    return int((max_abs_cos(u_pre, u_ft) < eps).sum())


# --- what an isotropic random τ of the same shape would give -------------------------------------------


@functools.lru_cache(maxsize=1024)
def random_effective_rank(rows: int, cols: int, points: int = 4000) -> float:
    """Expected effective rank of a Gaussian ``rows × cols`` matrix in the Marchenko–Pastur limit:
    n·E[s]·exp(−E[s log s]/E[s]), n = min(rows, cols), s = √x, x ~ MP(β = n/max(rows, cols)).

    Midpoint quadrature in θ with x = a + (b − a)(1 − cos θ)/2, which removes the density's square-root
    edges (and its 1/√x pole at β = 1)."""
    n, m = min(rows, cols), max(rows, cols)
    beta = n / m
    a, b = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2
    th = (torch.arange(points, dtype=torch.float64) + 0.5) * (math.pi / points)
    x = a + (b - a) * (1 - torch.cos(th)) / 2
    # MP density f(x) = √((b−x)(x−a)) / (2πβx); dx = (b−a)/2 sin θ dθ and √((b−x)(x−a)) = (b−a)/2 sin θ
    wgt = ((b - a) / 2 * torch.sin(th)) ** 2 / (2 * math.pi * beta * x) * (math.pi / points)
    s = x.sqrt()
    es = float((wgt * s).sum())
    eslogs = float((wgt * s * s.log()).sum())
    return n * es * math.exp(-eslogs / es)


def random_stable_rank(rows: int, cols: int) -> float:
    """Large-size stable rank of a Gaussian ``rows × cols`` matrix: rows·cols / (√rows + √cols)²."""
    return rows * cols / (math.sqrt(rows) + math.sqrt(cols)) ** 2

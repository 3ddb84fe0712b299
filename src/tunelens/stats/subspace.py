"""Subspace alignment (SSA): how much of a tuning vector lies in the pre-trained weight's top-k subspace.

For a pre-trained 2-D weight ``W = U Σ Vᵀ`` (``[out, in]``, basis from :mod:`.subspace_basis`) and a
tuning vector ``τ`` of the same shape, with ``U_k``/``V_k`` the top-k singular vectors:

- left ``‖U_kᵀ τ‖² / ‖τ‖²`` (baseline ``k/out``), right ``‖τ V_k‖² / ‖τ‖²`` (baseline ``k/in``),
  two-sided ``‖U_kᵀ τ V_k‖² / ‖τ‖²`` (baseline ``k²/(out·in)``); the baselines are the expected
  shares of an isotropic random τ. ``ratio = share / baseline`` compares different shapes.
- every k of every criterion comes from one set of projections: ``P = U_Kᵀτ``, ``Q = τV_K`` and
  ``B = U_KᵀτV_K`` for the largest requested ``K``; shares for all ``k ≤ K`` are cumulative sums.

One streaming pass over the aligned tensors; per tensor, the base's basis is loaded from the cache
or computed (and cached), then each model's τ is projected; :func:`summarize` aggregates the rows.
"""

from __future__ import annotations

import functools
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import torch

from tunelens.checkpoints.align import AlignedTensor, Alignment, align
from tunelens.checkpoints.architectures import Component
from tunelens.checkpoints.index import Checkpoint
from tunelens.checkpoints.naming import ArchInfo, Part
from tunelens.checkpoints.stream import select_part, to_out_in
from tunelens.config import ReadOptions, Selection
from tunelens.errors import TunelensError
from tunelens.jobs import run_stage
from tunelens.stats.accumulate import single_threaded
from tunelens.stats.spectrum_math import LowRank, Tau, narrow
from tunelens.stats.subspace_basis import (
    Basis,
    BasisCache,
    BasisKey,
    Columns,
    Criterion,
    Method,
    content_hash,
    decompose,
    resolve_method,
)
from tunelens.vectors.source import NONFINITE_HINT, TauSource, TensorRead, require_finite

SSA_COMPONENTS: tuple[Component, ...] = ("q", "k", "v", "o", "gate", "up", "down")

S = TypeVar("S")

SUBSPACE_COLUMNS = (
    "model", "tensor", "layer", "component", "head", "rows", "cols", "k", "energy",
    "share_left", "share_right", "share_both", "baseline_left", "baseline_right", "baseline_both",
    "criterion", "ratio_left", "ratio_right", "ratio_both", "tau_norm",
    "tau_effective_rank", "tau_top_r", "tau_top_r_share", "method",
)  # fmt: skip


@dataclass(frozen=True)
class SubspaceOptions:
    """Options of ``subspace`` (the CLI's flags, validated once)."""

    criteria: tuple[Criterion, ...] = (Criterion("energy", 0.9),)
    per_head: bool = False
    tau_rank: int = 16
    tau_spectrum: bool = False  # opt-in: one float64 Gram + eigvalsh of τ per tensor and model
    method: Method = "auto"
    cache: BasisCache = field(default_factory=lambda: BasisCache(None))
    device: str = "cpu"  # where decompositions and projections run (cpu or cuda[:N]; float64 kept)

    def __post_init__(self) -> None:
        if not self.criteria:
            raise TunelensError("give at least one of --energy, --rank-fraction, --rank")
        if len({c.label for c in self.criteria}) != len(self.criteria):
            raise TunelensError("the same k criterion was given twice")
        if self.tau_rank < 1:
            raise TunelensError("--tau-rank must be at least 1")
        if self.method not in ("auto", "gram", "svd"):
            raise TunelensError(f"--method must be auto, gram or svd, got {self.method}")


# --- pure math -------------------------------------------------------------------------------------


def share_curves(basis: Basis, tau: torch.Tensor, kmax: int) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(‖τ‖², left, right, both)``: float64 curves whose entry ``k-1`` is the share's numerator at k.

    ``τ`` is ``[out, in]`` float32; products in float32, sums in float64.
    """
    tau_sq = float(tau.square().sum(dtype=torch.float64))
    if kmax == 0:
        empty = torch.zeros(0, dtype=torch.float64)
        return tau_sq, empty, empty, empty
    u, v = basis.U[:, :kmax], basis.V[:, :kmax]  # [out, K], [in, K]
    p = u.T @ tau  # [K, in]
    q = tau @ v  # [out, K]
    b = u.T @ q if tau.shape[0] <= tau.shape[1] else p @ v  # [K, K] = U_Kᵀ τ V_K
    left = p.square().sum(1, dtype=torch.float64).cumsum(0)
    right = q.square().sum(0, dtype=torch.float64).cumsum(0)
    b2 = b.double().square()
    both = (b2.tril().sum(1) + b2.triu(1).sum(0)).cumsum(0)  # L-shaped bands of the k×k corner
    return tau_sq, left, right, both


def share_curves_lowrank(
    basis: Basis, left: torch.Tensor, right: torch.Tensor, kmax: int
) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`share_curves` of ``τ = L R`` (``L [out, r]``, ``R [r, in]``) from its factors, in float64.

    ``‖u_iᵀτ‖² = (u_iᵀL) RRᵀ (Lᵀu_i)``, ``‖τv_j‖² = (Rv_j)ᵀ LᵀL (Rv_j)``, ``U_Kᵀ τ V_K = (U_KᵀL)(R V_K)``:
    O((out + in)·r·K + r·K²) instead of O(out·in·K) for a dense τ.
    """
    f64 = torch.float64
    lf, rf = left.to(f64), right.to(f64)
    ltl, rrt = lf.T @ lf, rf @ rf.T  # [r, r]
    tau_sq = float((ltl * rrt).sum())
    if kmax == 0:
        empty = torch.zeros(0, dtype=f64)
        return tau_sq, empty, empty, empty
    u, v = basis.U[:, :kmax].to(f64), basis.V[:, :kmax].to(f64)
    p = u.T @ lf  # [K, r]
    q = rf @ v  # [r, K]
    left_c = ((p @ rrt) * p).sum(1).cumsum(0)
    right_c = ((ltl @ q) * q).sum(0).cumsum(0)
    b2 = (p @ q).square()  # [K, K] = (U_Kᵀ τ V_K)²
    both = (b2.tril().sum(1) + b2.triu(1).sum(0)).cumsum(0)
    return tau_sq, left_c, right_c, both


def lowrank_singular_values(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """The singular values (float64, descending) of ``L R`` from its factors: with ``L = Q_L T_L`` and
    ``Rᵀ = Q_R T_R`` (thin QR), ``L R = Q_L (T_L T_Rᵀ) Q_Rᵀ``, so they are those of the r × r core."""
    f64 = torch.float64
    _, tl = torch.linalg.qr(left.to(f64))
    _, tr = torch.linalg.qr(right.to(f64).T)
    sv: torch.Tensor = torch.linalg.svdvals(tl @ tr.T)
    return sv


def baselines(k: int, rows: int, cols: int) -> tuple[float, float, float]:
    """Expected shares of an isotropic random τ: ``k/out``, ``k/in``, ``k²/(out·in)``."""
    return k / rows, k / cols, k * k / (rows * cols)


def random_share_std(p: float, numel: int) -> float:
    """Std of a share with expectation ``p`` for isotropic random τ of ``numel`` entries.

    The share is Beta(pN/2, (1-p)N/2) distributed, so its variance is ``2p(1-p)/(N+2)``.
    """
    return math.sqrt(2.0 * p * (1.0 - p) / (numel + 2))


def tau_spectrum(tau: Tau, top_r: int) -> tuple[float, float]:
    """``(effective rank, share of ‖τ‖² in τ's own top-r directions)`` from a float64 Gram eigvalsh (or,
    for a factored τ, from :func:`lowrank_singular_values`).

    Effective rank (Roy & Vetterli 2007): ``exp(-Σ pᵢ log pᵢ)`` with ``pᵢ = σᵢ / Σσⱼ``; eigenvalues
    below ``λ_max · max(out, in) · eps64`` count as zero.
    """
    if isinstance(tau, LowRank):
        lam = lowrank_singular_values(tau.L, tau.R).square()
        shape = tau.shape
    else:
        a = tau.to(torch.float64)
        side = a if a.shape[0] <= a.shape[1] else a.T
        lam = torch.linalg.eigvalsh(side @ side.T).flip(0)  # descending σ²
        shape = (a.shape[0], a.shape[1])
    lam_max = float(lam[0]) if lam.numel() else 0.0
    if lam_max <= 0.0:
        return math.nan, math.nan
    lam = torch.where(lam > lam_max * max(shape) * torch.finfo(torch.float64).eps, lam, 0.0)
    sigma = lam.sqrt()
    p = sigma / sigma.sum()
    p = p[p > 0]
    erank = math.exp(float(-(p * p.log()).sum()))
    return erank, float(lam[:top_r].sum() / lam.sum())


# --- the pass ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartPlan:
    """One analysed part and, with ``--per-head``, how it slices into heads (axis, head size)."""

    part: Part
    heads: tuple[int, int] | None = None


@dataclass
class PassStats:
    """Counters of one job (added up over jobs)."""

    hits: int = 0
    misses: int = 0
    bytes_written: int = 0
    decompose_seconds: float = 0.0
    project_seconds: float = 0.0
    methods: Counter[str] = field(default_factory=Counter)

    def add(self, other: PassStats) -> None:
        self.hits += other.hits
        self.misses += other.misses
        self.bytes_written += other.bytes_written
        self.decompose_seconds += other.decompose_seconds
        self.project_seconds += other.project_seconds
        self.methods.update(other.methods)


def head_slicing(arch: ArchInfo, component: str, shape: tuple[int, int]) -> tuple[int, int] | None:
    """``(axis, head_size)`` of a ``[out, in]`` weight: q/k/v rows, o columns (GQA: k/v per kv head)."""
    if component not in ("q", "k", "v", "o"):
        return None
    hd, heads = arch.head_dim, arch.num_heads
    if not hd or not heads:
        raise TunelensError("--per-head needs num_attention_heads (and head_dim) in the base's config.json")
    kv = arch.num_kv_heads or heads
    axis, count = (1, heads) if component == "o" else (0, heads if component == "q" else kv)
    if shape[axis] != count * hd:
        raise TunelensError(
            f"--per-head: a {component} weight has {shape[axis]} {'columns' if axis else 'rows'}, the config "
            f"says {count} heads x head_dim {hd}"
        )
    return axis, hd


def plan_parts(alignment: Alignment, selection: Selection, per_head: bool) -> dict[str, tuple[PartPlan, ...]]:
    """Aligned tensor name → its analysed parts (2-D parts of q, k, v, o, gate, up, down only)."""
    arch = alignment.base.arch
    plans: dict[str, tuple[PartPlan, ...]] = {}
    for job in alignment.tensors:
        if len(job.base.shape) != 2:
            continue
        out: list[PartPlan] = []
        for part in job.parts:
            if part.component not in SSA_COMPONENTS or not selection.keeps(part.layer, part.component):
                continue
            shape = part_shape(job.base.shape, part)
            heads = head_slicing(arch, part.component, shape) if per_head else None
            out.append(PartPlan(part, heads))
        if out:
            plans[job.name] = tuple(out)
    return plans


def part_shape(stored: tuple[int, ...], part: Part) -> tuple[int, int]:
    dims = list(stored)
    if part.dim is not None:
        dims[part.dim] = part.stop - part.start
    rows, cols = dims
    return (cols, rows) if part.layout == "in_out" else (rows, cols)


def load_or_build(
    slices: list[torch.Tensor],
    key: BasisKey,
    cache: BasisCache,
    method: Method,
    stats: PassStats,
    name: str,
    columns: Columns = None,
    *,
    sides: Literal["both", "left"] = "both",
) -> list[Basis]:
    """The bases of ``slices`` from the cache, or decomposed (and stored) — one cluster-executable step.

    ``columns(S)`` is how many leading singular vectors the caller uses (None: every trusted one) on
    ``sides`` (``left``: U only, as ``spectrum``'s intruders): a cached entry with fewer is decomposed
    again (and replaced by one with enough)."""
    found = cache.load(key) if key.content_sha256 else None
    if found is not None and len(found) == len(slices):

        def has(b: Basis) -> int:
            return int(b.U.shape[1]) if sides == "left" else b.cols

        if all(has(b) >= min(b.trusted, columns(b.S) if columns else b.trusted) for b in found):
            stats.hits += 1
            return [b.to(str(slices[0].device)) for b in found]
    t0 = time.perf_counter()
    bases = [decompose(s, method, columns) for s in slices]
    stats.decompose_seconds += time.perf_counter() - t0
    stats.misses += 1
    stats.methods.update(b.method for b in bases)
    if key.content_sha256:
        stats.bytes_written += cache.save(key, bases, {"tensor": name})
    return bases


@dataclass(frozen=True)
class TensorTaus:
    """One aligned tensor as ``subspace`` and ``spectrum`` read it: the base (float32, stored layout), each
    model's τ — dense float32, or None where it stays the adapter's factors (``read.factors``) — and whether
    it is finite. Views into the reading thread's buffers (see :class:`TensorRead`)."""

    digest: str  # sha256 of the base tensor's stored bytes (the basis cache's key), "" when not hashed
    base: torch.Tensor
    read: TensorRead
    dense: list[torch.Tensor | None]
    finite: list[bool]

    def part(self, i: int, part: Part) -> Tau:
        """Model ``i``'s τ on ``part``, ``[out, in]``: dense, or factored."""
        tau = self.dense[i]
        if tau is None:
            factors = self.read.part_factors(i, part)
            assert factors is not None
            return LowRank(*factors)
        return to_out_in(select_part(tau, part), part)


def read_taus(source: TauSource, job: AlignedTensor, *, hashed: bool) -> TensorTaus | None:
    """Read ``job`` for a basis stage. A NaN/Inf in the base or a τ is one error line; under
    ``--allow-nonfinite`` a non-finite base gives None and a non-finite τ ``finite[i] = False``.
    A purely low-rank τ (a LoRA adapter's B A) stays factored: its projections cost O((out + in)·r·k)."""
    alignment = source.alignment
    read = source.read(job)
    assert read.base is not None
    digest = content_hash(read.base) if hashed else ""
    base = read.base_float()
    if not require_finite(base, f"{alignment.base.name}'s {job.name}", allow=source.allow_nonfinite):
        return None
    dense: list[torch.Tensor | None] = []
    finite: list[bool] = []
    for i, ck in enumerate(alignment.others):
        lowrank = read.factors[i] is not None and read.raw[i] is None
        tau = None if lowrank else read.tau(i)
        if tau is None and not lowrank:
            tau = torch.zeros_like(base)
        checked = [tau] if tau is not None else list(read.factors[i] or ())
        ok = all(bool(torch.isfinite(t).all()) for t in checked)
        if not ok and not source.allow_nonfinite:
            raise TunelensError(source.nonfinite(job, f"tau of {ck.name}") + f"; {NONFINITE_HINT}")
        dense.append(tau)
        finite.append(ok)
    return TensorTaus(digest, base, read, dense, finite)


def analyse_tensor(
    source: TauSource, job: AlignedTensor, plans: tuple[PartPlan, ...], opts: SubspaceOptions
) -> tuple[list[dict[str, Any]], PassStats]:
    """Rows (one per model × part [× head] × criterion) of one aligned tensor, and its counters."""
    stats = PassStats()
    alignment = source.alignment
    got = read_taus(source, job, hashed=opts.cache.folder is not None)
    if got is None:
        return _undefined_rows(alignment, job, plans, opts), stats
    digest, base = got.digest, got.base
    names = [ck.name for ck in alignment.others]

    def kmax(sigma: torch.Tensor) -> int:
        return max(c.k(sigma) for c in opts.criteria)

    rows: list[dict[str, Any]] = []
    for plan in plans:
        part = plan.part
        w = to_out_in(select_part(base, part), part).to(opts.device)
        ts: list[Tau] = []
        for i in range(len(names)):
            t = got.part(i, part)
            ts.append(
                LowRank(t.L.to(opts.device), t.R.to(opts.device)) if isinstance(t, LowRank) else t.to(opts.device)
            )
        shape = (w.shape[0], w.shape[1])
        part_id = f"{part.dim}:{part.start}:{part.stop}:{part.layout}" if part.fused else f"-:{part.layout}"
        stored = f"{job.base.dtype}:{list(job.base.shape)}"
        units: list[tuple[int | None, list[torch.Tensor], list[list[Tau]], str]] = [
            (None, [w], [[t] for t in ts], "whole")
        ]
        if plan.heads is not None:
            axis, size = plan.heads
            n = shape[axis] // size
            cut = [(h * size, size) for h in range(n)]
            units.append(
                (0, [w.narrow(axis, a, s) for a, s in cut], [[narrow(t, axis, a, s) for a, s in cut] for t in ts],
                 f"heads:{axis}:{size}")
            )  # fmt: skip
        for head0, slices, tau_slices, slicing in units:
            key = BasisKey(
                digest, stored, part_id, slicing, resolve_method(opts.method, (slices[0].shape[0], slices[0].shape[1]))
            )
            bases = load_or_build(slices, key, opts.cache, opts.method, stats, job.name, kmax)
            if any(kmax(b.S) > b.trusted for b in bases):
                # a k beyond the columns a Gram basis resolves (near-singular W): exact SVD instead
                key = BasisKey(digest, stored, part_id, slicing, "svd")
                bases = load_or_build(slices, key, opts.cache, "svd", stats, job.name)
            t0 = time.perf_counter()
            for h, basis in enumerate(bases):
                head = None if head0 is None else h
                for name, per_slice in zip(names, tau_slices, strict=True):
                    rows += _rows(name, part, head, basis, per_slice[h], opts)
            stats.project_seconds += time.perf_counter() - t0
    return rows, stats


def _rows(
    model: str, part: Part, head: int | None, basis: Basis, tau: Tau, opts: SubspaceOptions
) -> list[dict[str, Any]]:
    ks = [c.k(basis.S) for c in opts.criteria]
    if isinstance(tau, LowRank):
        rows_n, cols_n = tau.shape
        tau_sq, left, right, both = share_curves_lowrank(basis, tau.L, tau.R, max(ks))
    else:
        rows_n, cols_n = tau.shape[0], tau.shape[1]
        tau_sq, left, right, both = share_curves(basis, tau, max(ks))
    defined = math.isfinite(tau_sq)  # False only for a NaN/Inf τ under --allow-nonfinite
    spectrum = opts.tau_spectrum and defined
    erank, top_share = tau_spectrum(tau, opts.tau_rank) if spectrum else (math.nan, math.nan)
    s2 = basis.S.square()
    total = float(s2.sum())
    out = []
    for crit, k in zip(opts.criteria, ks, strict=True):
        bl, br, bb = baselines(k, rows_n, cols_n)
        if defined and tau_sq > 0 and k > 0:
            sl, sr, sb = (float(c[k - 1]) / tau_sq for c in (left, right, both))
        else:
            sl = sr = sb = 0.0 if defined and tau_sq > 0 else math.nan
        out.append(
            {
                "model": model, "tensor": part.tensor, "layer": "" if part.layer is None else part.layer,
                "component": part.component, "head": "" if head is None else head, "rows": rows_n, "cols": cols_n,
                "k": k, "energy": float(s2[:k].sum()) / total if total > 0 else math.nan,
                "share_left": sl, "share_right": sr, "share_both": sb,
                "baseline_left": bl, "baseline_right": br, "baseline_both": bb, "criterion": crit.label,
                "ratio_left": _ratio(sl, bl), "ratio_right": _ratio(sr, br), "ratio_both": _ratio(sb, bb),
                "tau_norm": math.sqrt(tau_sq), "tau_effective_rank": erank,
                "tau_top_r": min(opts.tau_rank, rows_n, cols_n) if opts.tau_spectrum else "",
                "tau_top_r_share": top_share, "method": basis.method,
            }
        )  # fmt: skip
    return out


def _undefined_rows(
    alignment: Alignment, job: AlignedTensor, plans: tuple[PartPlan, ...], opts: SubspaceOptions
) -> list[dict[str, Any]]:
    """Rows of a tensor whose base holds NaN/Inf (under --allow-nonfinite): no basis, every number null."""
    nan = math.nan
    out = []
    for plan in plans:
        part = plan.part
        rows_n, cols_n = part_shape(job.base.shape, part)
        for ck in alignment.others:
            for crit in opts.criteria:
                out.append(
                    {
                        "model": ck.name, "tensor": part.tensor, "layer": "" if part.layer is None else part.layer,
                        "component": part.component, "head": "", "rows": rows_n, "cols": cols_n, "k": "",
                        "energy": nan, "share_left": nan, "share_right": nan, "share_both": nan,
                        "baseline_left": nan, "baseline_right": nan, "baseline_both": nan, "criterion": crit.label,
                        "ratio_left": nan, "ratio_right": nan, "ratio_both": nan, "tau_norm": nan,
                        "tau_effective_rank": nan, "tau_top_r": "", "tau_top_r_share": nan, "method": "",
                    }
                )  # fmt: skip
    return out


def _ratio(share: float, baseline: float) -> float:
    return share / baseline if baseline > 0 and not math.isnan(share) else math.nan


@dataclass(frozen=True)
class SubspacePass:
    """Every row of the pass and the added counters."""

    rows: list[dict[str, Any]]
    stats: PassStats
    excluded: dict[str, int]


#: the analysis of one aligned tensor: (source, job, its planned parts) → (rows, counters)
Analyse = Callable[[TauSource, AlignedTensor, tuple[PartPlan, ...]], tuple[list[dict[str, Any]], S]]


@dataclass
class PartWork(Generic[S]):
    """The per-tensor job of ``subspace`` and ``spectrum``: picklable (the plan, and ``analyse`` a
    module-level function with its options bound)."""

    source: TauSource
    plans: dict[str, tuple[PartPlan, ...]]
    analyse: Analyse[S]

    def __call__(self, job: AlignedTensor) -> tuple[list[dict[str, Any]], S]:
        return self.analyse(self.source, job, self.plans[job.name])

    def close(self) -> None:
        self.source.close()


def part_pass(
    alignment: Alignment, selection: Selection, read: ReadOptions, per_head: bool, desc: str, analyse: Analyse[S]
) -> tuple[list[tuple[list[dict[str, Any]], S]], dict[str, int]]:
    """Run ``analyse`` over every analysable 2-D part of ``alignment`` (tensor order), one job per
    tensor; and count the q/k/v/o/gate/up/down tensors left out, by reason."""
    plans = plan_parts(alignment, selection, per_head)
    if not plans:
        raise TunelensError("no 2-D q/k/v/o/gate/up/down weights selected: nothing to analyse")
    jobs = [j for j in alignment.tensors if j.name in plans]
    n = len(alignment.others)
    work = PartWork(TauSource(alignment, read.allow_nonfinite), plans, analyse)
    try:
        # one intra-op thread per worker: tensors run in parallel instead, and a BLAS call's float sums do not
        # depend on how many threads were free when it ran (the same rows bit for bit, cached basis or not)
        with single_threaded():
            results = run_stage(
                jobs,
                work,
                read,
                desc=desc,
                weight=lambda j: j.base.nbytes * (1 + n),
                ranges=AlignedTensor.byte_ranges,
            )
    finally:
        work.close()
    excluded = Counter(
        "1-D (bias/norm): never SVD-analysed" if len(j.base.shape) != 2 else "not selected"
        for j in alignment.tensors
        if j.name not in plans
        and any(p.component in SSA_COMPONENTS for p in j.parts)
    )  # fmt: skip
    return results, dict(excluded)


def subspace_pass(alignment: Alignment, selection: Selection, read: ReadOptions, opts: SubspaceOptions) -> SubspacePass:
    """Run SSA over every analysable part of ``alignment``; rows in tensor order."""
    results, excluded = part_pass(
        alignment, selection, read, opts.per_head, "subspace", functools.partial(analyse_tensor, opts=opts)
    )
    stats = PassStats()
    rows: list[dict[str, Any]] = []
    for r, s in results:
        rows += r
        stats.add(s)
    return SubspacePass(rows, stats, excluded)


# --- aggregation ------------------------------------------------------------------------------------

TABLE4_COLUMNS: dict[str, str] = {
    "q": "W_Q", "k": "W_K", "v": "W_V", "o": "W_O", "gate": "W_gate", "up": "W_up", "down": "W_down",
}  # fmt: skip
_KINDS = ("left", "right", "both")
READING_Z = 3.0  # a ratio further than this many null standard deviations from 1 is read as an effect
SMALL_EFFECT = 0.1  # |ratio − 1| below this is called slight

DEFINITIONS: dict[str, str] = {
    "basis": "W = U diag(S) V^T of the pre-trained weight in the [out, in] convention (GPT-2 Conv1D transposed, "
    "Phi-3/GPT-2 fused tensors split first); exact, float64: eigh of the smaller-side Gram matrix (gram) or "
    "full SVD (svd), never randomized; U, V used in float32",
    "k": "energy=eta: smallest k with sum_{i<=k} s_i^2 >= eta * sum s_i^2; rank_fraction=f: ceil(f * min(out, in)); "
    "rank=k: min(k, min(out, in))",
    "energy": "retained energy sum_{i<=k} s_i^2 / sum s_i^2 of W",
    "criterion": "the --energy / --rank-fraction / --rank value that chose k (all criteria share one basis)",
    "rows, cols": "the analysed [out, in] shape (one head's slice on head rows)",
    "tau": "tau = theta_ft - theta_pre in float32 (or the vector folder's tensor)",
    "tau_norm": "|tau| (Frobenius), float64 sum",
    "share_left": "|U_k^T tau|^2 / |tau|^2 (Frobenius), products float32, sums float64",
    "share_right": "|tau V_k|^2 / |tau|^2",
    "share_both": "|U_k^T tau V_k|^2 / |tau|^2",
    "baseline": "expected share of an isotropic random tau: left k/out, right k/in, both k^2/(out*in); its sampling "
    "std is sqrt(2p(1-p)/(out*in+2)) (Beta distribution)",
    "ratio": "share / baseline (compares tensors of different shapes; 1 = no alignment beyond chance)",
    "tau_effective_rank": "exp(-sum p_i log p_i), p_i = s_i(tau)/sum s_j(tau) (Roy & Vetterli 2007); singular "
    "values from a float64 Gram eigvalsh, eigenvalues < lambda_max * max(out, in) * eps64 count as zero",
    "tau_top_r_share": "sum_{i<=r} s_i(tau)^2 / |tau|^2: share of |tau|^2 in tau's own top-r directions "
    "(r = tau_top_r)",
    "head": "with --per-head: q/k/v rows and o columns sliced per head of head_dim; k/v are indexed by kv head "
    "(GQA: query head h reads kv head h // (heads / kv_heads)); each head slice has its own basis and k",
    "plain_mean": "unweighted mean over the group's tensors (or heads) of the per-tensor values",
    "energy_weighted": "sum_t |tau_t|^2 share_t / sum_t |tau_t|^2: the share of the group's pooled |tau|^2 that "
    "lies in the per-tensor top-k subspaces (baselines weighted the same way; ratio = weighted share / "
    "weighted baseline)",
    "undefined": "tensors with tau = 0 have no share (NaN in the CSV, null in JSON) and are left out of aggregates",
    "tensors": "aggregate: number of rows (tensors, or heads) in the group, undefined ones included",
    "mean_k": "aggregate: plain mean of k over the group's defined rows",
    "mean_energy": "aggregate: plain mean of the retained energy over the group's defined rows",
    "plain_mean.ratio_*": "mean of the per-tensor ratios share/baseline (not the ratio of the means)",
    "ratio_*_null_std": "standard deviation the aggregate ratio would have for an isotropic random tau: per tensor the "
    "share is Beta distributed with std sd_t = sqrt(2p(1-p)/(out*in+2)) (p = baseline); plain_mean: "
    "sqrt(sum_t (sd_t/p_t)^2) / n; energy_weighted: sqrt(sum_t w_t^2 sd_t^2) / sum_t w_t / weighted baseline "
    "(weights w_t = |tau_t|^2 held fixed)",
    "ratio_*_sd": "plain_mean only: sample standard deviation of the per-tensor ratios (how much tensors differ; "
    "not an uncertainty of the mean)",
    "readings": f"sentences computed from the plain-mean ratio r and its null std u: |r - 1| <= {READING_Z:g} u: no "
    "evidence of amplification / new directions; r > 1 + z u: amplification of W's existing top-k directions; "
    f"r < 1 - z u: new directions; 'slightly' when |r - 1| < {SMALL_EFFECT:g}. Attention and MLP are compared by "
    "the difference of their ratios against sqrt(u_attention^2 + u_mlp^2), never by the absolute shares, which "
    "depend on shape (the baselines)",
    "by_component": "per component (q, k, v, o, gate, up, down): whole-tensor rows of every layer",
    "by_group": "all = every whole-tensor row; attention = q,k,v,o; mlp = gate,up,down",
    "by_layer": "per layer index: the same groups over that layer's whole-tensor rows",
    "heads_by_component": "with --per-head: per component, over every layer's head rows",
    "method": "gram or svd: the decomposition that produced the row's basis; a gram basis is used only when its "
    "first k columns all have eps64 * s_1^2 / s_i^2 <= 1e-6 (accurate to ~1e-7), else the tensor is decomposed "
    "by full svd",
    "tau_top_r": "r used for tau_top_r_share: min(--tau-rank, rows, cols)",
    "table4": "paper Table 4 shape: rows = models (x share kind), columns = components W_Q W_K W_V W_O W_gate "
    "W_up W_down, values = plain mean over layers of whole-tensor shares; the ratio row is the plain mean of "
    "the per-tensor ratios share/baseline",
    "decompose_seconds": "wall seconds spent decomposing, summed over worker threads (0 when every basis came from "
    "the cache)",
}


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Plain and energy-weighted means of shares, baselines and ratios over ``rows``, each ratio with the
    standard deviation it would have for an isotropic random τ (``*_null_std``) and, for the plain mean,
    the spread of the per-tensor ratios (``ratio_*_sd``)."""
    ok = [r for r in rows if not math.isnan(r["share_left"])]
    out: dict[str, Any] = {"tensors": len(rows), "undefined": len(rows) - len(ok)}
    if not ok:
        return out
    weights = [r["tau_norm"] ** 2 for r in ok]
    total = sum(weights)
    plain: dict[str, float] = {}
    weighted: dict[str, float] = {}
    for kind in _KINDS:
        for col in (f"share_{kind}", f"baseline_{kind}", f"ratio_{kind}"):
            plain[col] = math.fsum(r[col] for r in ok) / len(ok)
        for col in (f"share_{kind}", f"baseline_{kind}"):
            weighted[col] = math.fsum(w * r[col] for w, r in zip(weights, ok, strict=True)) / total
        weighted[f"ratio_{kind}"] = _ratio(weighted[f"share_{kind}"], weighted[f"baseline_{kind}"])
        sds = [random_share_std(r[f"baseline_{kind}"], r["rows"] * r["cols"]) for r in ok]
        # mean of independent per-tensor ratios share/p: std sqrt(sum (sd_t / p_t)^2) / n
        plain[f"ratio_{kind}_null_std"] = math.sqrt(
            math.fsum((sd / r[f"baseline_{kind}"]) ** 2 for sd, r in zip(sds, ok, strict=True))
        ) / len(ok)
        plain[f"ratio_{kind}_sd"] = _sd([r[f"ratio_{kind}"] for r in ok])
        # weighted share sum w_t s_t / sum w_t (weights held fixed): std sqrt(sum w_t^2 sd_t^2) / sum w_t
        wsd = math.sqrt(math.fsum((w * sd) ** 2 for w, sd in zip(weights, sds, strict=True))) / total
        weighted[f"ratio_{kind}_null_std"] = _ratio(wsd, weighted[f"baseline_{kind}"])
    out["plain_mean"] = plain
    out["energy_weighted"] = weighted
    out["mean_k"] = math.fsum(r["k"] for r in ok) / len(ok)
    out["mean_energy"] = math.fsum(r["energy"] for r in ok) / len(ok)
    return out


def _sd(xs: list[float]) -> float:
    """Sample standard deviation (n − 1); NaN for fewer than two values."""
    if len(xs) < 2:
        return math.nan
    m = math.fsum(xs) / len(xs)
    return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _groups(rows: list[dict[str, Any]]) -> dict[str, Any]:
    attn = [r for r in rows if r["component"] in ("q", "k", "v", "o")]
    mlp = [r for r in rows if r["component"] in ("gate", "up", "down")]
    return {"all": aggregate(rows), "attention": aggregate(attn), "mlp": aggregate(mlp)}


def summarize(rows: list[dict[str, Any]], names: list[str], opts: SubspaceOptions) -> dict[str, Any]:
    """Aggregates per model × criterion: by component, attention/mlp, layer, heads; and the Table-4 view."""
    models: dict[str, dict[str, Any]] = {}
    table4: dict[str, Any] = {}
    for crit in opts.criteria:
        t4_rows = []
        for name in names:
            sel = [r for r in rows if r["model"] == name and r["criterion"] == crit.label]
            whole = [r for r in sel if r["head"] == ""]
            comps = [c for c in SSA_COMPONENTS if any(r["component"] == c for r in whole)]
            by_comp = {c: aggregate([r for r in whole if r["component"] == c]) for c in comps}
            layers = sorted({r["layer"] for r in whole if r["layer"] != ""})
            block: dict[str, Any] = {
                "by_component": by_comp,
                "by_group": _groups(whole),
                "by_layer": [{"layer": la, **_groups([r for r in whole if r["layer"] == la])} for la in layers],
            }
            if opts.per_head:
                heads = [r for r in sel if r["head"] != ""]
                block["heads_by_component"] = {
                    c: aggregate([r for r in heads if r["component"] == c])
                    for c in SSA_COMPONENTS
                    if any(r["component"] == c for r in heads)
                }
            models.setdefault(name, {})[crit.label] = block
            for kind in _KINDS:
                cell = {key: {TABLE4_COLUMNS[c]: by_comp[c].get("plain_mean", {}).get(f"{key}_{kind}") for c in comps}
                        for key in ("share", "baseline", "ratio")}  # fmt: skip
                cell["null_std"] = {
                    TABLE4_COLUMNS[c]: by_comp[c].get("plain_mean", {}).get(f"ratio_{kind}_null_std") for c in comps
                }
                t4_rows.append({"model": name, "share": kind, **cell["share"], "baseline": cell["baseline"],
                                "ratio": cell["ratio"], "ratio_null_std": cell["null_std"]})  # fmt: skip
        table4[crit.label] = {
            "columns": [TABLE4_COLUMNS[c] for c in SSA_COMPONENTS],
            "aggregate": "plain mean over layers of whole-tensor shares; baseline, ratio (mean of per-tensor "
            "share/baseline) and the ratio's std for an isotropic random tau beside each share",
            "rows": t4_rows,
        }
    return {
        "definitions": DEFINITIONS,
        "criteria": [c.label for c in opts.criteria],
        "models": [{"name": n, "by_criterion": models.get(n, {})} for n in names],
        "table4": table4,
    }


# --- readings ---------------------------------------------------------------------------------------

Verdict = Literal["amplification", "new directions", "no evidence"]
_KIND_WORDS = {"left": "left (output-side)", "right": "right (input-side)", "both": "two-sided"}


def verdict(ratio: float, null_std: float, z: float = READING_Z) -> Verdict:
    """What a share / baseline ratio says, given its std under an isotropic random τ."""
    if abs(ratio - 1.0) <= z * null_std:
        return "no evidence"
    return "amplification" if ratio > 1.0 else "new directions"


def ratio_sentence(label: str, mean: dict[str, float], kind: str = "left", z: float = READING_Z) -> str:
    """One reading of an aggregate's plain mean (``aggregate(...)["plain_mean"]``)."""
    r, u = mean[f"ratio_{kind}"], mean[f"ratio_{kind}_null_std"]
    numbers = (
        f"{_KIND_WORDS[kind]} share {mean[f'share_{kind}']:.3f} vs random-tau baseline {mean[f'baseline_{kind}']:.3f}, "
        f"ratio {r:.3f} (±{z:g}σ of chance: ±{z * u:.2g})"
    )
    v = verdict(r, u, z)
    if v == "no evidence":
        return f"{label}: {numbers}: within chance — no evidence of amplification / new directions"
    slight = "slightly " if abs(r - 1.0) < SMALL_EFFECT else ""
    if v == "amplification":
        return f"{label}: {numbers}: {slight}more of tau in W's top-k directions than chance — amplification"
    return f"{label}: {numbers}: {slight}less of tau in W's top-k directions than chance — new directions"


def contrast_sentence(model: str, attention: dict[str, float], mlp: dict[str, float], kind: str = "left",
                      z: float = READING_Z) -> str:  # fmt: skip
    """Attention against MLP by the difference of their ratios (the paper's contrast, read from ratios)."""
    ra, rm = attention[f"ratio_{kind}"], mlp[f"ratio_{kind}"]
    u = math.hypot(attention[f"ratio_{kind}_null_std"], mlp[f"ratio_{kind}_null_std"])
    shape = (
        f" (absolute shares attention {attention[f'share_{kind}']:.3f}, MLP {mlp[f'share_{kind}']:.3f}; random-tau "
        f"baselines {attention[f'baseline_{kind}']:.3f}, {mlp[f'baseline_{kind}']:.3f}: shape alone accounts for "
        f"{attention[f'baseline_{kind}'] - mlp[f'baseline_{kind}']:+.3f} of the difference)"
    )
    d = ra - rm
    if abs(d) <= z * u:
        return f"{model}: attention ratio {ra:.3f} vs MLP {rm:.3f}: no evidence of a difference (±{z * u:.2g})" + shape
    side = "lower in MLP than in attention, the paper's direction" if d > 0 else "higher in MLP than in attention, " \
        "opposite to the paper's direction"  # fmt: skip
    return f"{model}: attention ratio {ra:.3f} vs MLP {rm:.3f}: {side} (difference {d:+.3f}, ±{z * u:.2g})" + shape


def readings(summary: dict[str, Any], *, criterion: str | None = None, kind: str = "left") -> list[str]:
    """Sentences about every model's attention and MLP SSA, derived from ratios and their null std only."""
    crit = criterion or summary["criteria"][0]
    out: list[str] = []
    for m in summary["models"]:
        groups = m["by_criterion"].get(crit, {}).get("by_group", {})
        means = {g: groups[g]["plain_mean"] for g in ("attention", "mlp") if "plain_mean" in groups.get(g, {})}
        for g, mean in means.items():
            out.append(ratio_sentence(f"{m['name']}, {'MLP' if g == 'mlp' else g}", mean, kind))
        if len(means) == 2:
            out.append(contrast_sentence(m["name"], means["attention"], means["mlp"], kind))
    return out


@dataclass(frozen=True)
class SubspaceResult:
    """Rows of ``subspace.csv`` and the ``summary.json`` content."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    alignment: Alignment

    def to_pandas(self) -> Any:
        """Tidy pandas frames of this result, equal to ``tunelens.load`` of its output folder."""
        from tunelens.frames import csv_frame, subspace_results

        return subspace_results(self.summary, lambda: csv_frame(self.rows, SUBSPACE_COLUMNS))


def subspace(
    base: Checkpoint, tuned: list[Checkpoint], *, selection: Selection, read: ReadOptions, opts: SubspaceOptions
) -> SubspaceResult:
    """SSA of each tuned model's (or vector folder's) τ against ``base``: align → pass → summarize.

    Embeddings are never analysed, so a vocabulary resize only skips them (``vocab="skip"``).
    """
    alignment = align(base, tuned, vocab="skip", missing=read.missing)
    done = subspace_pass(alignment, selection, read, opts)
    names = [ck.name for ck in tuned]
    summary = summarize(done.rows, names, opts)
    st = done.stats
    summary["cache"] = {
        "folder": None if opts.cache.folder is None else str(opts.cache.folder),
        "key": "sha256 of the base tensor's stored bytes + dtype/shape + fused-part slice + head slicing + method",
        "hits": st.hits,
        "misses": st.misses,
        "bytes_written": st.bytes_written,
    }
    summary["decomposition"] = {
        "methods": dict(st.methods),
        "decompose_seconds": round(st.decompose_seconds, 3),
        "project_seconds": round(st.project_seconds, 3),
        "seconds_note": "summed over worker threads",
    }
    summary["excluded"] = done.excluded
    summary["options"] = {
        "device": opts.device,
        "per_head": opts.per_head,
        "tau_rank": opts.tau_rank,
        "tau_spectrum": opts.tau_spectrum,
        "method": opts.method,
    }
    return SubspaceResult(done.rows, summary, alignment)

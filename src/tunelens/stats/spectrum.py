"""``spectrum``: the spectral anatomy of τ per 2-D attention / MLP weight, streamed like ``subspace``.

Per model × part (× head): τ's singular values (float64; a Gram eigh, or the factors of a low-rank τ)
give ``tau_norm, sigma_1, effective_rank, stable_rank, energy_rank_90, energy_rank_99``; τ's own top-r
singular vectors and W give ``amplification``; the top-k left singular vectors of ``W_ft = W + τ`` (one
more Gram eigh) against every left singular vector of ``W_pre`` give ``intruders``. ``W_pre``'s basis is
the one ``subspace`` computes and caches (:mod:`.subspace_basis`: same key, same cache), so a base that
``subspace`` has seen costs nothing here. The math is in :mod:`.spectrum_math`.
"""

from __future__ import annotations

import functools
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from tunelens.checkpoints.align import AlignedTensor, Alignment, align
from tunelens.checkpoints.index import Checkpoint
from tunelens.checkpoints.naming import Part
from tunelens.checkpoints.stream import select_part, to_out_in
from tunelens.config import ReadOptions, Selection
from tunelens.errors import TunelensError
from tunelens.stats.spectrum_math import (
    Tau,
    amplification,
    effective_rank,
    energy_rank,
    intruders,
    narrow,
    norm_sq,
    random_effective_rank,
    random_stable_rank,
    shape_of,
    stable_rank,
    tau_svd,
    top_left_vectors,
)
from tunelens.stats.subspace import SSA_COMPONENTS, PartPlan, PassStats, load_or_build, part_pass, part_shape, read_taus
from tunelens.stats.subspace_basis import Basis, BasisCache, BasisKey, Method, resolve_method
from tunelens.vectors.source import TauSource

SPECTRUM_COLUMNS = (
    "model", "tensor", "layer", "component", "head", "shape", "tau_norm", "sigma_1", "effective_rank",
    "stable_rank", "energy_rank_90", "energy_rank_99", "amplification", "intruders",
)  # fmt: skip
MEASURES = ("effective_rank", "stable_rank", "energy_rank_90", "energy_rank_99", "amplification", "intruders")


@dataclass(frozen=True)
class SpectrumOptions:
    """Options of ``spectrum`` (the CLI's flags, validated once)."""

    intruder_k: int = 10
    intruder_eps: float = 0.5
    amp_rank: int = 16
    per_head: bool = False
    method: Method = "auto"
    cache: BasisCache = field(default_factory=lambda: BasisCache(None))

    def __post_init__(self) -> None:
        if self.intruder_k < 1:
            raise TunelensError(f"--intruder-k must be at least 1, got {self.intruder_k}")
        if not 0.0 < self.intruder_eps <= 1.0:
            raise TunelensError(f"--intruder-eps must be in (0, 1], got {self.intruder_eps}")
        if self.amp_rank < 1:
            raise TunelensError(f"--amp-rank must be at least 1, got {self.amp_rank}")
        if self.method not in ("auto", "gram", "svd"):
            raise TunelensError(f"--method must be auto, gram or svd, got {self.method}")


DEFINITIONS: dict[str, str] = {
    "tau": "tau = theta_ft - theta_pre in float32 per 2-D q/k/v/o/gate/up/down weight in the [out, in] convention "
    "(GPT-2 Conv1D transposed, fused Phi-3/GPT-2 tensors split first), or the vector folder's tensor",
    "singular values": "of tau in float64, never randomized: eigh of the float64 Gram matrix of tau's smaller side "
    "(formed in column chunks; method gram) or a full float64 SVD (svd; auto = gram when min(out, in) >= 128); a "
    "low-rank tau = L @ R (adapter) from QR of L and R^T and the SVD of the r x r core (factors)",
    "numerical rank": "singular values <= s_1 * max(out, in) * eps32 count as zero (numpy.linalg.matrix_rank's "
    "default tolerance for float32 data, tau's storage precision)",
    "shape": "the analysed [out, in] shape (one head's slice on head rows)",
    "tau_norm": "|tau|_F, float64 sum of squares",
    "sigma_1": "largest singular value of tau",
    "effective_rank": "exp(-sum p_i log p_i), p_i = s_i / sum_j s_j over the nonzero singular values of tau "
    "(Roy & Vetterli 2007)",
    "stable_rank": "|tau|_F^2 / s_1^2",
    "energy_rank_90": "smallest r with sum_{i<=r} s_i^2 >= 0.90 |tau|_F^2 (capped at the numerical rank)",
    "energy_rank_99": "smallest r with sum_{i<=r} s_i^2 >= 0.99 |tau|_F^2 (capped at the numerical rank)",
    "amplification": "|tau|_F / |U_r^T W V_r|_F with U_r, V_r tau's own top-r singular vectors, r = min(amp_rank, "
    "numerical rank of tau), W the pre-trained weight, float64 (Hu et al. 2021, LoRA, section 7.3): large when tau "
    "boosts directions W holds only weakly; inf when W has no component there",
    "intruders": "how many of W_ft = W + tau's top-k left singular vectors (k = min(intruder_k, out, in)) have "
    "max |cos| < intruder_eps with every left singular vector of W_pre (reduced SVD; the basis subspace caches, "
    "with every column trusted) (Shuttleworth et al. 2024, 'LoRA vs full fine-tuning: an illusion of equivalence'); "
    "W_ft's vectors from one more float64 Gram eigh (or SVD)",
    "undefined": "tau = 0 has no spectrum: every rank measure and amplification NaN (empty in the CSV, null in "
    "JSON); such rows are left out of the means",
    "head": "with --per-head: q/k/v rows and o columns sliced per head of head_dim (k/v per kv head); each head "
    "slice has its own W_pre basis, tau spectrum and W_ft vectors",
    "mean": "aggregate: plain mean over the group's defined rows (amplification: over its finite values)",
    "random_effective_rank": "aggregate: mean over the group's rows of the effective rank an isotropic Gaussian "
    "matrix of the row's shape has (Marchenko-Pastur limit: n E[s] exp(-E[s log s]/E[s]), n = min(out, in)); "
    "effective_rank_vs_random = mean of the per-row ratios effective_rank / that value",
    "random_stable_rank": "aggregate: mean of out*in/(sqrt(out)+sqrt(in))^2, a Gaussian matrix's stable rank "
    "(large-size limit); stable_rank_vs_random = mean of the per-row ratios",
    "intruders_total": "aggregate: sum of intruders over the group's rows; tensors_with_intruders: rows with >= 1",
    "by_component": "per component (q, k, v, o, gate, up, down): whole-tensor rows of every layer",
    "by_group": "all = every whole-tensor row; attention = q,k,v,o; mlp = gate,up,down",
    "by_layer": "per layer index: the same groups over that layer's whole-tensor rows",
    "readings": "sentences computed from by_group.all of each model; a model named <name>-lora is compared with "
    "<name> (the demo zoo's LoRA and full fine-tune of one domain)",
    "heads_by_component": "with --per-head: per component, over every layer's head rows",
}


# --- the pass -------------------------------------------------------------------------------------------


@dataclass
class SpectrumStats:
    """Counters of one job: the base-basis cache (as subspace's) and the τ decompositions used."""

    basis: PassStats = field(default_factory=PassStats)
    tau_methods: Counter[str] = field(default_factory=Counter)
    spectrum_seconds: float = 0.0

    def add(self, other: SpectrumStats) -> None:
        self.basis.add(other.basis)
        self.tau_methods.update(other.tau_methods)
        self.spectrum_seconds += other.spectrum_seconds


def _read_parts(
    source: TauSource, job: AlignedTensor, plans: tuple[PartPlan, ...], hashed: bool
) -> tuple[str, list[tuple[PartPlan, torch.Tensor, list[Tau | None]]]]:
    """Per planned part, W ``[out, in]`` float32 and each model's τ (dense float32, or a
    :class:`~.spectrum_math.LowRank` for an adapter's ``B A``; None where it holds NaN/Inf under
    ``--allow-nonfinite``), plus the basis cache's key (:func:`~.subspace.read_taus`). A non-finite base
    stops there, or (allowed) gives no parts."""
    got = read_taus(source, job, hashed=hashed)
    if got is None:
        return "", []
    parts: list[tuple[PartPlan, torch.Tensor, list[Tau | None]]] = []
    for plan in plans:
        p = plan.part
        taus: list[Tau | None] = []
        for i, ok in enumerate(got.finite):
            taus.append(got.part(i, p) if ok else None)
        parts.append((plan, to_out_in(select_part(got.base, p), p), taus))
    return got.digest, parts


def _left_complete(
    slices: list[torch.Tensor], bases: list[Basis], key: BasisKey, opts: SpectrumOptions, stats: PassStats, name: str
) -> list[Basis]:
    """Intruders compare with *every* left singular vector of W_pre: a tall W's Gram basis whose left side
    has untrusted (zero) columns is replaced by the exact SVD basis (cached under subspace's svd key)."""
    if all(b.trusted >= b.rank or b.U.shape[0] <= b.V.shape[0] for b in bases):
        return bases
    svd_key = BasisKey(key.content_sha256, key.stored, key.part, key.slicing, "svd")
    return load_or_build(slices, svd_key, opts.cache, "svd", stats, name, sides="left")


def analyse_tensor(
    source: TauSource, job: AlignedTensor, plans: tuple[PartPlan, ...], opts: SpectrumOptions
) -> tuple[list[dict[str, Any]], SpectrumStats]:
    """Rows (one per model × part [× head]) of one aligned tensor, and its counters."""
    stats = SpectrumStats()
    digest, parts = _read_parts(source, job, plans, opts.cache.folder is not None)
    names = [ck.name for ck in source.alignment.others]
    if not parts:  # a non-finite base under --allow-nonfinite: every row undefined
        dims = tuple(job.base.shape)
        return [_undefined(n, p.part, None, part_shape(dims, p.part)) for p in plans for n in names], stats
    stored = f"{job.base.dtype}:{list(job.base.shape)}"
    rows: list[dict[str, Any]] = []
    for plan, w, taus in parts:
        part = plan.part
        # the same key subspace uses (stats/subspace.py: analyse_tensor), so the two commands share entries
        part_id = f"{part.dim}:{part.start}:{part.stop}:{part.layout}" if part.fused else f"-:{part.layout}"
        units: list[tuple[bool, list[torch.Tensor], list[list[Tau | None]], str]] = [
            (False, [w], [[t] for t in taus], "whole")
        ]
        if plan.heads is not None:
            axis, size = plan.heads
            cut = [(h * size, size) for h in range(int(w.shape[axis]) // size)]
            units.append((True, [w.narrow(axis, a, s) for a, s in cut],
                          [[None if t is None else narrow(t, axis, a, s) for a, s in cut] for t in taus],
                          f"heads:{axis}:{size}"))  # fmt: skip
        for per_head, slices, tau_slices, slicing in units:
            shape = (int(slices[0].shape[0]), int(slices[0].shape[1]))
            key = BasisKey(digest, stored, part_id, slicing, resolve_method(opts.method, shape))
            bases = load_or_build(slices, key, opts.cache, opts.method, stats.basis, job.name, sides="left")
            bases = _left_complete(slices, bases, key, opts, stats.basis, job.name)
            t0 = time.perf_counter()
            for h, (wh, basis) in enumerate(zip(slices, bases, strict=True)):
                for name, per_slice in zip(names, tau_slices, strict=True):
                    tau = per_slice[h]
                    if tau is None:
                        rows.append(_undefined(name, part, h if per_head else None, (wh.shape[0], wh.shape[1])))
                        continue
                    row, method = measure(wh, basis, tau, opts)
                    stats.tau_methods[method] += 1
                    rows.append({"model": name, **_ids(part, h if per_head else None), **row})
            stats.spectrum_seconds += time.perf_counter() - t0
    return rows, stats


def _undefined(model: str, part: Part, head: int | None, shape: tuple[int, int]) -> dict[str, Any]:
    """A row whose inputs hold NaN/Inf (under --allow-nonfinite): every measure undefined (null/empty)."""
    nan = math.nan
    return {"model": model, **_ids(part, head), "shape": f"{shape[0]}x{shape[1]}", "tau_norm": nan, "sigma_1": nan,
            "effective_rank": nan, "stable_rank": nan, "energy_rank_90": nan, "energy_rank_99": nan,
            "amplification": nan, "intruders": nan}  # fmt: skip


def _ids(part: Part, head: int | None) -> dict[str, Any]:
    return {
        "tensor": part.tensor,
        "layer": "" if part.layer is None else part.layer,
        "component": part.component,
        "head": "" if head is None else head,
    }


def measure(w: torch.Tensor, basis: Basis, tau: Tau, opts: SpectrumOptions) -> tuple[dict[str, Any], str]:
    """The spectrum columns of one ``[out, in]`` weight W (with its basis) and τ; and τ's decomposition."""
    shape = shape_of(tau)
    method = resolve_method(opts.method, shape)
    tau_sq = norm_sq(tau)
    tsvd = tau_svd(tau, opts.amp_rank, method)
    s, tau_norm = tsvd.S, math.sqrt(tau_sq)
    u_ft = top_left_vectors(w, tau, opts.intruder_k, method)
    row = {
        "shape": f"{shape[0]}x{shape[1]}",
        "tau_norm": tau_norm,
        "sigma_1": float(s[0]) if s.numel() else 0.0,
        "effective_rank": effective_rank(s),
        "stable_rank": stable_rank(s, tau_sq),
        "energy_rank_90": energy_rank(s, tau_sq, 0.90),
        "energy_rank_99": energy_rank(s, tau_sq, 0.99),
        "amplification": amplification(w, tsvd, tau_norm),
        "intruders": intruders(basis.U, u_ft, opts.intruder_eps),
    }
    return row, tsvd.method


# --- aggregation ----------------------------------------------------------------------------------------


def _mean(xs: list[float]) -> float:
    return math.fsum(xs) / len(xs) if xs else math.nan


def _dims(row: dict[str, Any]) -> tuple[int, int]:
    a, b = str(row["shape"]).split("x")
    return int(a), int(b)


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means of the measures over ``rows`` (defined rows only), intruder totals, random-τ references."""
    ok = [r for r in rows if not math.isnan(r["effective_rank"])]
    out: dict[str, Any] = {"tensors": len(rows), "undefined": len(rows) - len(ok)}
    if not ok:
        return out
    mean = {m: _mean([float(r[m]) for r in ok if math.isfinite(float(r[m]))]) for m in MEASURES}
    mean["sigma_1"] = _mean([r["sigma_1"] for r in ok])
    out["mean"] = mean
    out["amplification_infinite"] = sum(1 for r in ok if math.isinf(r["amplification"]))
    out["tau_norm_pooled"] = math.sqrt(math.fsum(r["tau_norm"] ** 2 for r in ok))
    rand_e = [random_effective_rank(*_dims(r)) for r in ok]
    rand_s = [random_stable_rank(*_dims(r)) for r in ok]
    out["random_effective_rank"] = _mean(rand_e)
    out["effective_rank_vs_random"] = _mean([r["effective_rank"] / x for r, x in zip(ok, rand_e, strict=True)])
    out["random_stable_rank"] = _mean(rand_s)
    out["stable_rank_vs_random"] = _mean([r["stable_rank"] / x for r, x in zip(ok, rand_s, strict=True)])
    out["max_effective_rank"] = max(r["effective_rank"] for r in ok)
    out["intruders_total"] = sum(int(r["intruders"]) for r in ok)
    out["tensors_with_intruders"] = sum(1 for r in ok if int(r["intruders"]) > 0)
    return out


def _groups(rows: list[dict[str, Any]]) -> dict[str, Any]:
    attn = [r for r in rows if r["component"] in ("q", "k", "v", "o")]
    mlp = [r for r in rows if r["component"] in ("gate", "up", "down")]
    return {"all": aggregate(rows), "attention": aggregate(attn), "mlp": aggregate(mlp)}


def summarize(rows: list[dict[str, Any]], names: list[str], opts: SpectrumOptions) -> dict[str, Any]:
    """Aggregates per model: by component, attention / mlp, layer and (with --per-head) head."""
    models = []
    for name in names:
        sel = [r for r in rows if r["model"] == name]
        whole = [r for r in sel if r["head"] == ""]
        layers = sorted({r["layer"] for r in whole if r["layer"] != ""})
        block: dict[str, Any] = {
            "name": name,
            "by_component": {
                c: aggregate([r for r in whole if r["component"] == c])
                for c in SSA_COMPONENTS
                if any(r["component"] == c for r in whole)
            },
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
        models.append(block)
    return {"definitions": DEFINITIONS, "models": models}


def readings(summary: dict[str, Any]) -> list[str]:
    """Sentences computed from the summary: per model its rank structure against a random matrix of the same
    shapes, amplification and intruders; and each ``<name>-lora`` against ``<name>`` (LoRA vs full)."""
    opts = summary.get("options", {})
    where = f"k = {opts.get('intruder_k', '?')}, eps = {opts.get('intruder_eps', '?')}"
    by_name = {m["name"]: m["by_group"]["all"] for m in summary["models"]}
    out: list[str] = []
    for name, g in by_name.items():
        if "mean" not in g:
            out.append(f"{name}: tau = 0 on every analysed weight (no spectrum)")
            continue
        mean = g["mean"]
        out.append(
            f"{name}: tau's effective rank {mean['effective_rank']:.1f} on average "
            f"({g['effective_rank_vs_random']:.2f}x that of an isotropic random matrix of the same shape; "
            f"largest {g['max_effective_rank']:.1f}), 90% of |tau|^2 in {mean['energy_rank_90']:.1f} directions, "
            f"amplification {mean['amplification']:.2f}; "
            f"{g['intruders_total']} intruder dimension(s) in {g['tensors_with_intruders']} of {g['tensors']} "
            f"weights ({where})"
        )
    for name, full in by_name.items():
        lora = by_name.get(f"{name}-lora")
        if lora is None or "mean" not in full or "mean" not in lora:
            continue
        fi, li = full["intruders_total"], lora["intruders_total"]
        if li > 0 and fi == 0:
            verdict = "LoRA writes intruder dimensions and the full fine-tune none, as Shuttleworth et al. report"
        elif li > fi:
            verdict = "LoRA writes more intruder dimensions than the full fine-tune, as Shuttleworth et al. report"
        elif li == fi == 0:
            verdict = f"neither writes intruder dimensions at {where}"
        else:
            verdict = "LoRA writes no more intruder dimensions than the full fine-tune, unlike Shuttleworth et al."
        er_f, er_l = full["mean"]["effective_rank"], lora["mean"]["effective_rank"]
        out.append(
            f"{name}-lora vs {name} (LoRA vs full fine-tuning on the same rows): effective rank {er_l:.1f} vs "
            f"{er_f:.1f} ({er_l / er_f:.3f}x), intruder dimensions {li} vs {fi}: {verdict}"
        )
    return out


@dataclass(frozen=True)
class SpectrumResult:
    """Rows of ``spectrum.csv`` and the ``summary.json`` content."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    alignment: Alignment

    def to_pandas(self) -> Any:
        """Tidy pandas frames of this result, equal to ``tunelens.load`` of its output folder."""
        from tunelens.frames import csv_frame, spectrum_results

        return spectrum_results(self.summary, lambda: csv_frame(self.rows, SPECTRUM_COLUMNS))


def spectrum(
    base: Checkpoint, tuned: list[Checkpoint], *, selection: Selection, read: ReadOptions, opts: SpectrumOptions
) -> SpectrumResult:
    """τ's spectrum, amplification and intruders per 2-D q/k/v/o/gate/up/down part: align → pass → summarize.

    Embeddings are never analysed, so a vocabulary resize only skips them (``vocab="skip"``).
    """
    alignment = align(base, tuned, vocab="skip", missing=read.missing)
    results, excluded = part_pass(
        alignment, selection, read, opts.per_head, "spectrum", functools.partial(analyse_tensor, opts=opts)
    )
    stats = SpectrumStats()
    rows: list[dict[str, Any]] = []
    for r, s in results:
        rows += r
        stats.add(s)
    names = [ck.name for ck in tuned]
    summary = summarize(rows, names, opts)
    st = stats.basis
    summary["cache"] = {
        "folder": None if opts.cache.folder is None else str(opts.cache.folder),
        "shared_with": "subspace (same key: sha256 of the base tensor's stored bytes + dtype/shape + fused-part "
        "slice + head slicing + method)",
        "hits": st.hits,
        "misses": st.misses,
        "bytes_written": st.bytes_written,
    }
    summary["decomposition"] = {
        "base_methods": dict(st.methods),
        "tau_methods": dict(stats.tau_methods),
        "decompose_seconds": round(st.decompose_seconds, 3),
        "spectrum_seconds": round(stats.spectrum_seconds, 3),
        "seconds_note": "summed over worker threads",
    }
    summary["excluded"] = excluded
    summary["options"] = {
        "intruder_k": opts.intruder_k,
        "intruder_eps": opts.intruder_eps,
        "amp_rank": opts.amp_rank,
        "per_head": opts.per_head,
        "method": opts.method,
    }
    return SpectrumResult(rows, summary, alignment)

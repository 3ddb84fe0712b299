"""Cosine, 1 − cosine, relative change and vector cosine from :class:`Sums` (pure float64 math)."""

from __future__ import annotations

import math
from typing import Any

from tunelens.stats.accumulate import CHUNK, Sums

DEFINITIONS: dict[str, str] = {
    "tuning_vector": "tau = theta_ft - theta_pre per tensor, computed in float32",
    "cosine": "sum<A,B> / sqrt(sum|A|^2 * sum|B|^2) over all elements of the group (A = base, B = tuned), "
    "exact float64 accumulation, never subsampled, never a mean of per-tensor cosines",
    "one_minus_cosine": "(|tau|^2 - (|A|-|B|)^2) / (2|A||B|) with (|A|-|B|)^2 = (2<A,tau>+|tau|^2)^2/(|A|+|B|)^2: "
    "accurate near cosine = 1 (no cancellation in 1 - fraction)",
    "relative_change": "|tau| / |theta_pre| over the group",
    "vector_cosine": "sum<tau_i,tau_j> / sqrt(sum|tau_i|^2 * sum|tau_j|^2) over the group, float64",
    "baseline_random_std": "1/sqrt(D): std of the cosine of two independent isotropic random vectors of the "
    "group's size D (null mean 0)",
    "baseline_signflip_std": "sqrt(sum tau_i^2 tau_j^2) / (|tau_i||tau_j|): exact std of the cosine when "
    "tau_j's element signs are flipped at random (measured control, null mean 0)",
    "accumulation": "products in float32 (exact for bf16/fp16 inputs), sums in float64, per "
    f"2^{CHUNK.bit_length() - 1}-element chunk",
    "fused_tensors": "Phi-3 qkv_proj / gate_up_proj and GPT-2 c_attn split into q,k,v / gate,up by the config's "
    "head counts; GPT-2 Conv1D weights are [in, out] (transpose-invariant here)",
    "tied_weights": "a tied lm_head is reported once, as embed",
    "undefined": "cosine and one_minus_cosine are NaN (null in JSON, empty in CSV) when a group's base or tuned "
    "norm is 0; relative_change is NaN when the base norm is 0 and tau is not; vector_cosine and "
    "baseline_signflip_std are NaN when either tau is 0 over the group (signflip_std is 0 on the diagonal); "
    "any value computed from a non-finite sum (a NaN or Inf weight, read with --allow-nonfinite) is NaN",
}


def metrics(s: Sums, i: int) -> dict[str, Any]:
    """Weight cosine, 1 − cosine, relative change and norms of model ``i`` over a group."""
    a2 = s.base_sq
    d2 = s.delta_sq(i)
    b2 = max(s.tuned_sq(i), 0.0)
    a, b = math.sqrt(a2), math.sqrt(b2)
    finite = all(math.isfinite(x) for x in (a2, d2, s.base_dot[i]))
    if a == 0.0 or b == 0.0 or not finite:  # undefined (e.g. Gemma norms initialised to 0): NaN, null in JSON
        cosine = omc = math.nan
    else:
        gap = 2.0 * s.base_dot[i] + d2  # |B|^2 - |A|^2
        norm_gap_sq = gap * gap / ((a + b) ** 2)  # (|A| - |B|)^2 without cancellation
        omc = max(d2 - norm_gap_sq, 0.0) / (2.0 * a * b)
        cosine = 1.0 - omc
    return {
        "numel": s.numel,
        "cosine": cosine,
        "one_minus_cosine": omc,
        "relative_change": math.nan if not finite else math.sqrt(d2) / a if a > 0 else (0.0 if d2 == 0 else math.nan),
        "base_norm": a,
        "tuned_norm": b,
        "delta_norm": math.sqrt(d2),
    }


def vector_cosine(s: Sums, i: int, j: int) -> float:
    """cos(τᵢ, τⱼ) over the group; NaN (null in JSON) when either vector is zero there or a sum is not
    finite (a NaN / Inf weight): an undefined cosine is never written as a number."""
    den = math.sqrt(s.cross[i][i] * s.cross[j][j])
    if not (den > 0 and math.isfinite(den) and math.isfinite(s.cross[i][j])):
        return math.nan
    return s.cross[i][j] / den


def signflip_std(s: Sums, i: int, j: int) -> float:
    """Exact std of cos(τᵢ, ε⊙τⱼ) over random signs ε (the measured null control); NaN when the cosine
    itself is undefined, and 0 on the diagonal (a vector against itself is not a null comparison)."""
    den = s.cross[i][i] * s.cross[j][j]
    if not (den > 0 and math.isfinite(den)):
        return math.nan
    if i == j:
        return 0.0
    q = s.cross_sq[i][j]
    return math.sqrt(q / den) if math.isfinite(q) else math.nan


def random_std(numel: int) -> float:
    """Std of the cosine of two independent random vectors of dimension ``numel`` (NaN for none)."""
    return 1.0 / math.sqrt(numel) if numel > 0 else math.nan

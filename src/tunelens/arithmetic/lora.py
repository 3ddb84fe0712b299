"""Extract a PEFT LoRA adapter from a tuning vector: per 2-D layer weight, τ ≈ B A by truncated SVD.

For each 2-D weight inside a layer (attention and MLP projections; fused Phi-3 / GPT-2 tensors as
stored, GPT-2 Conv1D weights turned to ``[out, in]``), ``τ = U S Vh`` (float64 thin SVD) is cut to
rank r, fixed (``rank``) or the smallest r with ``Σ_{i≤r} σ_i² ≥ energy · Σ σ_i²``, and stored as
``A = sqrt(S_r) Vh_r`` (``[r, in]``) and ``B = U_r sqrt(S_r)`` (``[out, r]``) with ``lora_alpha = r``
per module (PEFT scale α/r = 1), so PEFT's merged weight is ``θ_base + B A``. Per tensor the
report gives the rank, the retained energy ``Σ_{i≤r} σ_i² / Σ σ_i²`` and the relative Frobenius
error ``‖τ − B A‖_F / ‖τ‖_F`` measured on the stored float32 factors. Tensors a LoRA cannot carry
(1-D norms and biases, embeddings, lm_head, weights outside layers) are dropped and listed with
their share of ``‖τ‖²``, or with ``keep_full`` stored whole: their fine-tuned values
``θ_base + τ`` (in the base's dtype) through PEFT's ``modules_to_save`` (norms, embeddings,
lm_head: every tensor of such a module is stored) and ``bias="lora_only"`` (the bias of a module
that has a LoRA), so that PEFT's merged model is ``θ_ft`` there. Tied embeddings are never kept full
(``modules_to_save`` would untie them). All-zero τ are dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunelens.checkpoints.align import AlignedTensor, align
from tunelens.checkpoints.index import Checkpoint
from tunelens.checkpoints.output import atomic_dir, check_target
from tunelens.checkpoints.stream import TORCH_DTYPES, to_out_in
from tunelens.config import ReadOptions
from tunelens.errors import TunelensError
from tunelens.jobs import iter_jobs
from tunelens.provenance import RunClock
from tunelens.records import write_csv, write_json
from tunelens.vectors.source import TauSource, require_finite, tau_definition

LORA_COLUMNS = (
    "tensor",
    "layer",
    "component",
    "status",
    "rows",
    "cols",
    "rank",
    "energy",
    "relative_error",
    "tau_norm",
)
_DROP_COMPONENTS = ("embed", "lm_head")


@dataclass(frozen=True)
class LoraSpec:
    """How the rank is chosen: a fixed ``rank`` or an ``energy`` threshold in (0, 1]."""

    rank: int | None = None
    energy: float | None = None

    def __post_init__(self) -> None:
        if (self.rank is None) == (self.energy is None):
            raise TunelensError("LoRA extraction needs exactly one of --rank R or --energy E")
        if self.rank is not None and self.rank < 1:
            raise TunelensError("--rank must be at least 1")
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise TunelensError("--energy must be in (0, 1]")


def choose_rank(spectrum: torch.Tensor, spec: LoraSpec) -> int:
    """r from a fixed rank (capped at the matrix rank) or the smallest r reaching the energy share."""
    if spec.rank is not None:
        return min(spec.rank, spectrum.numel())
    energy = spectrum.double().pow(2)
    cum = energy.cumsum(0)
    assert spec.energy is not None
    need = spec.energy * float(cum[-1])
    return min(int(torch.searchsorted(cum, torch.tensor(need, dtype=cum.dtype) * (1 - 1e-12)).item()) + 1, len(cum))


def lora_factors(tau: torch.Tensor, spec: LoraSpec) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(B [out, r], A [r, in], retained energy)`` of a 2-D ``[out, in]`` τ, float32 factors."""
    u, s, vh = torch.linalg.svd(tau.double(), full_matrices=False)
    r = choose_rank(s, spec)
    root = s[:r].sqrt()
    b = (u[:, :r] * root).float().contiguous()
    a = (root[:, None] * vh[:r]).float().contiguous()
    energy = float(s[:r].pow(2).sum() / s.pow(2).sum())
    return b, a, energy


def _is_lora_target(ck: Checkpoint, job: AlignedTensor) -> str | None:
    """None when τ of this tensor goes into the adapter, else the reason it is dropped."""
    layer, component = ck.arch.parse(job.name)
    if len(job.base.shape) != 2:
        return "1-D tensor (norm or bias)"
    if component in _DROP_COMPONENTS or layer is None:
        return "not a layer weight (embedding, lm_head or outside layers)"
    if not job.name.endswith(".weight"):
        return "not a .weight tensor"
    return None


def _can_keep_full(ck: Checkpoint, job: AlignedTensor) -> bool:
    """A tensor PEFT can carry whole: a norm / bias / embedding / lm_head (untied), not a layer weight."""
    _, component = ck.arch.parse(job.name)
    if ck.arch.tie_word_embeddings and component in _DROP_COMPONENTS and "wpe" not in job.name:
        return False  # the tied embedding / lm_head
    return "." in job.name


def _place_full(
    ck: Checkpoint,
    rows: list[dict[str, Any]],
    fulls: list[torch.Tensor | None],
    ranks: dict[str, int],
    tensors: dict[str, torch.Tensor],
) -> tuple[set[str], set[str]]:
    """Put the kept-full tensors into ``tensors`` under PEFT's keys; demote what PEFT cannot carry.

    The bias of a module with a LoRA goes through ``bias="lora_only"``; any other kept tensor makes
    its module a ``modules_to_save`` entry, which PEFT restores whole: every tensor of that module
    must then be kept full, and a module whose tensors all have τ = 0 is left out.
    """
    by_module: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        if r["status"] == "kept full":
            by_module.setdefault(r["tensor"].rsplit(".", 1)[0], []).append(i)
    modules: set[str] = set()
    biases: set[str] = set()
    for module, idx in by_module.items():
        params = [n for n in ck.tensors if n.rsplit(".", 1)[0] == module]
        why: str | None = None
        if module in ranks:
            if not all(rows[i]["tensor"].endswith(".bias") for i in idx):
                why = "a LoRA module's tensor other than its bias"
        elif len(idx) != len(params):
            why = f"{module} also holds tensors that are not kept full"
        elif all(rows[i]["tau_norm"] == 0.0 for i in idx):
            why = "zero tau"
        for i in idx:
            if why is not None:
                rows[i].update(status=f"dropped: {why}", energy=0.0, relative_error=1.0)
                continue
            full = fulls[i]
            assert full is not None
            name = rows[i]["tensor"]
            if module in ranks:
                biases.add(name)
                tensors[f"base_model.model.{module}.base_layer.{name.rsplit('.', 1)[1]}"] = full.contiguous()
            else:
                modules.add(module)
                tensors[f"base_model.model.{name}"] = full.contiguous()
    return modules, biases


def extract_lora(
    base: Checkpoint,
    tuned: Checkpoint,
    out: str | Path,
    spec: LoraSpec,
    *,
    keep_full: bool = False,
    options: ReadOptions | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write ``adapter_model.safetensors``, ``adapter_config.json``, ``lora.csv`` and ``tunelens.json``.

    ``keep_full``: store the tensors a LoRA cannot carry (norms, biases, untied embeddings and
    lm_head) whole, as their fine-tuned values, instead of dropping them.
    """
    from peft import LoraConfig
    from safetensors.torch import save_file

    options = options or ReadOptions()
    if options.executor != "thread":
        raise TunelensError(
            f"--executor {options.executor}: the LoRA export runs in this process (its factors are gathered "
            "into one adapter file); leave --executor out"
        )
    out = Path(out)
    check_target(out, force, inputs=[base, tuned])
    clock = RunClock()
    alignment = align(base, [tuned], vocab=options.vocab, missing=options.missing)
    source = TauSource(alignment, options.allow_nonfinite)

    def work(job: AlignedTensor) -> tuple[dict[str, Any], dict[str, torch.Tensor], torch.Tensor | None]:
        read = source.read(job)
        b = read.base_float()
        tau = read.tau(0)
        if tau is None:
            tau = torch.zeros_like(b)
        require_finite(tau, f"tau of {tuned.name} on {job.name}")  # an SVD of NaN/Inf has no meaning
        layer, component = base.arch.parse(job.name)
        norm = float(tau.double().norm())
        row = {"tensor": job.name, "layer": "" if layer is None else layer, "component": component,
               "rows": tau.shape[0], "cols": tau.shape[1] if tau.dim() == 2 else 1, "tau_norm": norm}  # fmt: skip
        reason = _is_lora_target(base, job)
        if reason is not None and keep_full and _can_keep_full(base, job):
            if job.rows is not None:
                return {**row, "status": f"dropped: {reason}; vocab cropped, cannot be kept full",
                        "rank": 0, "energy": 0.0, "relative_error": 1.0}, {}, None  # fmt: skip
            full = (b + tau).to(TORCH_DTYPES[job.base.dtype])  # θ_ft, in the base's dtype
            err = float((full.double() - b.double() - tau.double()).norm()) / norm if norm else 0.0
            return {**row, "status": "kept full", "rank": 0, "energy": 1.0, "relative_error": err}, {}, full
        if reason is not None and keep_full:
            reason += "; tied embeddings cannot be kept full (modules_to_save would untie them)"
        reason = reason or ("zero tau" if norm == 0.0 else None)
        if reason is not None:
            return {**row, "status": f"dropped: {reason}", "rank": 0, "energy": 0.0, "relative_error": 1.0}, {}, None
        w = to_out_in(tau, job.parts[0]).contiguous()
        row["rows"], row["cols"] = w.shape
        bmat, amat, energy = lora_factors(w, spec)
        err = float((w.double() - bmat.double() @ amat.double()).norm()) / norm
        r = amat.shape[0]
        status = "lora (full rank)" if r == min(w.shape) else "lora"
        module = job.name.removesuffix(".weight")
        factors = {
            f"base_model.model.{module}.lora_A.weight": amat,
            f"base_model.model.{module}.lora_B.weight": bmat,
        }
        return {**row, "status": status, "rank": r, "energy": energy, "relative_error": err}, factors, None

    try:
        results = list(
            iter_jobs(list(alignment.tensors), work, workers=options.workers, desc="lora", quiet=options.quiet)
        )
    finally:
        source.close()
    rows = [r for r, _, _ in results]
    tensors = {k: v for _, f, _ in results for k, v in f.items()}
    kept = [r for r in rows if r["status"].startswith("lora")]
    if not kept:
        raise TunelensError(f"{tuned.name}: no 2-D layer weight changed; nothing to put in a LoRA adapter")
    ranks = {r["tensor"].removesuffix(".weight"): int(r["rank"]) for r in kept}
    modules_to_save, biases = _place_full(base, rows, [full for _, _, full in results], ranks, tensors)
    top = max(set(ranks.values()), key=list(ranks.values()).count)
    config = LoraConfig(
        r=top,
        lora_alpha=top,
        target_modules=sorted(ranks),
        rank_pattern={m: k for m, k in ranks.items() if k != top},
        alpha_pattern={m: k for m, k in ranks.items() if k != top},
        modules_to_save=sorted(modules_to_save) or None,
        lora_dropout=0.0,
        bias="lora_only" if biases else "none",
        fan_in_fan_out=base.arch.layout == "in_out",
        task_type="CAUSAL_LM",
        base_model_name_or_path=str(base.path),
    )
    total = sum(r["tau_norm"] ** 2 for r in rows)
    lost = sum(r["tau_norm"] ** 2 for r in rows if r["status"].startswith("dropped"))
    meta = {
        "kind": "lora_extraction",
        "definitions": {
            "tau": tau_definition(),
            "factors": "tau = U S Vh (float64 thin SVD); B = U_r sqrt(S_r), A = sqrt(S_r) Vh_r; lora_alpha = r",
            "rank": f"fixed r = {spec.rank}"
            if spec.rank
            else f"smallest r with sum_{{i<=r}} s_i^2 >= {spec.energy} * sum s_i^2",
            "energy": "sum_{i<=r} s_i^2 / sum s_i^2",
            "relative_error": "||tau - B A||_F / ||tau||_F on the stored float32 factors",
            "dropped_share": "sum of ||tau||^2 over dropped tensors / sum over all tensors",
            "kept_full": "stored whole as theta_base + tau in the base's dtype (PEFT modules_to_save, or "
            "bias='lora_only' for the bias of a LoRA module); relative_error = its rounding error / ||tau||",
        },
        "parent": base.describe(),
        "child": tuned.describe(),
        "rank_spec": {"rank": spec.rank, "energy": spec.energy, "keep_full": keep_full},
        "tensors": {
            "lora": len(kept),
            "kept_full": [r["tensor"] for r in rows if r["status"] == "kept full"],
            "dropped": [
                {"tensor": r["tensor"], "reason": r["status"].removeprefix("dropped: ")}
                for r in rows
                if r["status"].startswith("dropped")
            ],
            "full_rank": [r["tensor"] for r in kept if r["status"] == "lora (full rank)"],
            "modules_to_save": sorted(modules_to_save),
        },  # fmt: skip
        "dropped_share": lost / total if total else 0.0,
        "global_relative_error": math.sqrt(sum((r["relative_error"] * r["tau_norm"]) ** 2 for r in rows) / total)
        if total
        else 0.0,  # fmt: skip
        "alignment": alignment.report(),
    }
    with atomic_dir(out, force=force, inputs=[base, tuned]) as tmp:
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(str(tmp))
        write_csv(tmp / "lora.csv", rows, LORA_COLUMNS)
        meta.update(clock.metadata([base.describe(), tuned.describe()]))
        write_json(tmp / "tunelens.json", meta)
    return meta

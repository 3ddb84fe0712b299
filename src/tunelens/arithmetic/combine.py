"""``apply``: θ = θ_target + Σ_i λ_i τ_i, streamed tensor by tensor into a loadable checkpoint.

τ_i = θ_ft,i − θ_base (float32) for a fine-tuned model, or read as stored from a vector folder. The
target is the base (``pre``) or the first term's fine-tuned model (``ft``). Per tensor part (a
tensor, or a slice of a fused Phi-3 / GPT-2 tensor), the effective λ_i comes from the term's scale,
mask and per-component factors (:meth:`Term.scale_for`). A tensor whose effective λ are all 0 on
every part is copied byte for byte (no float32 round trip, so λ = 0 reproduces the base exactly);
otherwise it is computed in float32 and written in the output dtype (the target tensor's dtype
unless ``dtype`` is set). Parts of a fused tensor with all λ = 0 keep their exact values. Every
output tensor is planned from the headers first and written with :class:`ShardedWriter` at its
final offset (one copy, any order, two tensors in flight by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunelens.arithmetic.card import copy_side_files, write_card
from tunelens.arithmetic.merges import add_update, tensor_update
from tunelens.arithmetic.spec import Recipe
from tunelens.checkpoints.align import AlignedTensor, Alignment, align
from tunelens.checkpoints.index import VECTOR_META, Checkpoint, TensorInfo, open_checkpoint
from tunelens.checkpoints.output import atomic_dir, check_target
from tunelens.checkpoints.stream import ST_DTYPES, TORCH_DTYPES, ReaderPool, Scratch, ScratchPool, TensorReader
from tunelens.checkpoints.writer import PlannedTensor, ShardedWriter, WriteTarget, write_at
from tunelens.config import ReadOptions
from tunelens.errors import TunelensError
from tunelens.jobs import run_stage
from tunelens.provenance import RunClock
from tunelens.report.tables import write_json

OUT_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

DEFINITIONS = {
    "apply": "theta = theta_target + sum_i lambda_i(part) * tau_i, per tensor part, computed in float32",
    "tuning_vector": "tau_i = theta_ft_i - theta_base (float32), or read as stored from a vector folder",
    "lambda_i(part)": "scale_i * product of component factors if the term's mask keeps the part, else 0",
    "target": "pre: the base; ft: the first vector's fine-tuned model",
    "unchanged": "tensors whose effective lambdas are all 0 are copied byte for byte (no float32 round trip)",
    "ties": "PEFT ties (majority_sign_method='total'), per part: trim each tau_i to its top int(density * numel) "
    "entries by |value|; elected sign = +1 where sum_i trimmed tau_i >= 0 else -1 (unweighted); update = "
    "sum of lambda_i * trimmed tau_i over the i whose trimmed tau_i has the elected sign, divided by their "
    "count (at least 1)",
    "dare": "PEFT dare_linear / dare_ties, per part: keep each element of each tau_i with probability density "
    "(drop rate p = 1 - density), rescale kept ones by 1/density, then sum_i lambda_i tau_i (dare_linear) or "
    "the ties sign election and disjoint mean (dare_ties); torch generator seeded per part with the first 63 "
    "bits of sha256('{seed}:{tensor}:{part index}')",
}


@dataclass(frozen=True)
class OutJob:
    """One output tensor: the target's stored tensor and, when it is edited, its aligned inputs."""

    name: str
    info: TensorInfo
    out_dtype: str
    aligned: AlignedTensor | None
    tied: tuple[str, ...] = ()  # other output names that share this tensor's values


@dataclass(frozen=True)
class ApplyPlan:
    recipe: Recipe
    base: Checkpoint
    sources: tuple[Checkpoint, ...]
    target: Checkpoint
    alignment: Alignment
    jobs: tuple[OutJob, ...]
    copied: dict[str, str]  # name → why it is copied unchanged before any λ is looked at


@dataclass(frozen=True)
class ApplyResult:
    out: Path
    metadata: dict[str, Any]


def plan_apply(recipe: Recipe, options: ReadOptions | None = None) -> ApplyPlan:
    """Open and line up the inputs from their headers; decide every output tensor before reading data."""
    options = options or ReadOptions()
    base = open_checkpoint(recipe.base, allow_pickle=options.allow_pickle)
    sources = tuple(
        open_checkpoint(t.spec.path, allow_pickle=options.allow_pickle, name=t.spec.name) for t in recipe.terms
    )
    alignment = align(base, sources, vocab=options.vocab, missing=options.missing)
    target = base
    if recipe.target == "ft":
        target = sources[0]
        if target.kind != "model":
            raise TunelensError(
                f"--target ft needs the first vector to be a fine-tuned model folder; {target.name} is a vector folder"
            )
    n_layers = base.arch.num_layers
    for term in recipe.terms:
        wanted = term.selection.layers
        if wanted is not None and n_layers is not None and any(x >= n_layers for x in wanted):
            bad = sorted(x for x in wanted if x >= n_layers)
            raise TunelensError(
                f"{term.spec.name}: --layers {','.join(map(str, bad))} not in {base.name} (layers 0-{n_layers - 1})"
            )
    # every aligned tensor, including an lm_head that only an untied target stores (its τ is taken
    # against the tied base's embedding, as ``align`` lines it up)
    aligned = {j.name: j for j in alignment.tensors}
    skipped = {s["tensor"]: s["reason"] for s in alignment.skipped}
    tied_to: dict[str, str] = {}
    if target.arch.tie_word_embeddings:
        # the target ties lm_head to its embedding: a stored lm_head gets the edited embedding's values
        embed = next((n for n in target.tensors if target.arch.parse(n)[1] == "embed" and "wpe" not in n), None)
        for name in target.tensors:
            if embed and target.arch.parse(name)[1] == "lm_head":
                tied_to[name] = embed
    jobs: list[OutJob] = []
    copied: dict[str, str] = {}
    for name, info in target.tensors.items():
        if name in tied_to:
            continue
        job = aligned.get(name)
        if job is not None and info.shape != job.base.shape:
            raise TunelensError(
                f"{name}: target {target.name} has shape {list(info.shape)}, base {list(job.base.shape)}; "
                "--target ft needs a fine-tune with the base's shapes"
            )
        if job is None:
            copied[name] = skipped.get(name, "not in the base" if name not in base.tensors else "not aligned")
        dtype = recipe.dtype if recipe.dtype and info.is_float else None
        out_dtype = ST_DTYPES[OUT_DTYPES[dtype]] if dtype else info.dtype
        ties = tuple(n for n, e in tied_to.items() if e == name)
        jobs.append(OutJob(name, info, out_dtype, job, ties))
    return ApplyPlan(recipe, base, sources, target, alignment, tuple(jobs), copied)


def part_scales(plan: ApplyPlan, job: AlignedTensor) -> list[list[float]]:
    """``scales[i][k]``: effective λ of term ``i`` on part ``k`` of ``job``."""
    return [[t.scale_for(p.layer, p.component) for p in job.parts] for t in plan.recipe.terms]


def compute_tensor(
    plan: ApplyPlan, job: OutJob, reader: TensorReader, scratch: Scratch | None = None
) -> tuple[torch.Tensor, bool]:
    """The output tensor of ``job`` and whether it was edited (False: the target's stored bytes).

    With ``scratch``, the result lives in its buffers (valid until the next call on that scratch).
    """
    scratch = scratch or Scratch()
    raw = scratch.read("target", job.info, reader)
    aj = job.aligned
    scales = part_scales(plan, aj) if aj is not None else []
    active = [i for i, row in enumerate(scales) if any(s != 0.0 for s in row)]
    out_dtype = TORCH_DTYPES[job.out_dtype]
    if aj is None or not active:
        return (raw if raw.dtype == out_dtype else scratch.get("final", out_dtype, raw.shape).copy_(raw)), False
    rows = aj.rows
    need_base = plan.target is not plan.base or any(plan.sources[i].kind == "model" for i in active)
    out = raw if raw.dtype == torch.float32 else scratch.get("out", torch.float32, raw.shape).copy_(raw)
    base_f: torch.Tensor | None = None
    if need_base:
        base_f = out if plan.target is plan.base else scratch.read_float("base", aj.base, reader)
        if rows is not None:
            base_f = base_f[:rows]
    taus: dict[int, torch.Tensor] = {}
    for i in active:
        t = scratch.read_float(f"tau{i}", aj.others[i], reader)
        if rows is not None:
            t = t[:rows]
        if plan.sources[i].kind == "model":
            assert base_f is not None
            t = t.sub_(base_f)  # its own buffer: safe in place
        taus[i] = t
    recipe = plan.recipe
    update = tensor_update(aj, scales, taus, method=recipe.method, density=recipe.density, seed=recipe.seed)
    add_update(out if rows is None else out[:rows], update, aj, scales)
    if out_dtype == torch.float32:
        return out, True
    if raw.dtype == out_dtype and raw is not out:  # the target's bytes are no longer needed: reuse them
        return raw.copy_(out), True
    return scratch.get("final", out_dtype, out.shape).copy_(out), True


class ApplyWork:
    """Compute one output tensor and write it (and its tied copies) at the planned places. Picklable:
    the plan and paths/offsets travel; readers and scratch buffers are per thread and never do."""

    def __init__(self, plan: ApplyPlan, targets: dict[str, tuple[WriteTarget, ...]]) -> None:
        self.plan, self.targets = plan, targets
        self.readers = ReaderPool()
        self.scratch = ScratchPool()

    def __call__(self, job: OutJob) -> bool:
        tensor, edited = compute_tensor(self.plan, job, self.readers.get(), self.scratch.get())
        for target in self.targets[job.name]:
            write_at(target, tensor)
        return edited

    def close(self) -> None:
        self.readers.close()
        self.scratch.close()


def apply_recipe(
    recipe: Recipe, out: str | Path, *, options: ReadOptions | None = None, force: bool = False
) -> ApplyResult:
    """Run ``recipe`` and write the edited checkpoint to ``out`` (atomically)."""
    options = options or ReadOptions()
    out = Path(out)
    check_target(out, force, inputs=[recipe.base, *(t.spec.path for t in recipe.terms)])
    clock = RunClock()
    plan = plan_apply(recipe, options)
    planned = [PlannedTensor(j.name, j.info.shape, j.out_dtype) for j in plan.jobs]
    for j in plan.jobs:
        planned.extend(PlannedTensor(t, j.info.shape, j.out_dtype) for t in j.tied)
    order = {n: i for i, n in enumerate(plan.target.tensors)}
    planned.sort(key=lambda p: order.get(p.name, len(order)))
    with atomic_dir(out, force=force, inputs=[plan.base, plan.target, *plan.sources]) as tmp:
        with ShardedWriter(tmp, planned, max_shard_bytes=recipe.shard_bytes) as writer:
            targets = {p.name: writer.target(p.name) for p in planned}
            work = ApplyWork(plan, {j.name: tuple(targets[n] for n in (j.name, *j.tied)) for j in plan.jobs})
            try:
                edited = run_stage(
                    list(plan.jobs), work, options, desc="apply",
                    weight=lambda j: j.info.nbytes * (1 + len(plan.sources)),
                )  # fmt: skip
            finally:
                work.close()
            for job_targets in work.targets.values():  # every job finished: what each was given is written
                for target in job_targets:
                    writer.mark_written(target.planned.name)
        copy_side_files(plan.target.path, tmp, dtype=recipe.dtype)
        meta = _metadata(plan, edited, clock)
        write_json(tmp / VECTOR_META, meta)
        write_card(tmp / "README.md", plan, meta)
    return ApplyResult(out, meta)


def _metadata(plan: ApplyPlan, edited: list[bool], clock: RunClock) -> dict[str, Any]:
    unchanged = [j.name for j, e in zip(plan.jobs, edited, strict=True) if not e and j.name not in plan.copied]
    return {
        "kind": "edited_model",
        "definitions": DEFINITIONS,
        "recipe": plan.recipe.describe(),
        "base": plan.base.describe(),
        "target": plan.target.describe(),
        "vectors": [
            {**t.describe(), "kind": ck.kind, "sha256": ck.fingerprint, "bytes": ck.total_bytes}
            for t, ck in zip(plan.recipe.terms, plan.sources, strict=True)
        ],
        "compute_dtype": "float32",
        "output_dtype": plan.recipe.dtype or "target's dtype per tensor",
        "output_dtypes": sorted({j.out_dtype for j in plan.jobs}),
        "tensors": {
            "written": len(plan.jobs) + sum(len(j.tied) for j in plan.jobs),
            "edited": sum(edited),
            "unchanged_all_lambda_zero": unchanged,
            "copied_unchanged": [{"tensor": n, "reason": r} for n, r in plan.copied.items()],
            "tied": {t: j.name for j in plan.jobs for t in j.tied},
        },
        "alignment": plan.alignment.report(),
        "notes": (
            ["the target ties lm_head to its embedding: lm_head takes the embedding's edit (its mask and factors)"]
            if plan.target.arch.tie_word_embeddings
            else []
        ),
        **clock.metadata([plan.base.describe(), *(s.describe() for s in plan.sources)]),
    }

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

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunelens.arithmetic.card import copy_side_files, write_card
from tunelens.arithmetic.merges import add_update, tensor_update
from tunelens.arithmetic.spec import Recipe
from tunelens.checkpoints.align import AlignedTensor, Alignment, align
from tunelens.checkpoints.gguf import side_files as gguf_side_files
from tunelens.checkpoints.index import VECTOR_META, Checkpoint, TensorInfo, open_checkpoint
from tunelens.checkpoints.output import atomic_dir, check_target
from tunelens.checkpoints.stream import ST_DTYPES, TORCH_DTYPES, TensorReader, row_block
from tunelens.checkpoints.writer import PlannedTensor, ShardedWriter, WriteTarget, write_rows
from tunelens.config import ReadOptions
from tunelens.errors import TunelensError
from tunelens.jobs import run_stage
from tunelens.provenance import RunClock
from tunelens.records import write_json
from tunelens.vectors.source import NONFINITE_HINT, TauSource

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


#: rows per block are chosen so one float32 block holds about this many bytes (apply's memory per worker is
#: a few blocks, whatever the model's size)
# float32 bytes of a block of output rows: its element-wise passes (convert, subtract, scale, add, convert back,
# finiteness) then run on cache-resident temporaries. Measured on the 1B pair, warm, 2 workers: 64 MB 6.9-8.7 s,
# 16 MB 5.4-6.1 s, 8 MB 4.2-5.4 s, 4 MB 3.6 s, 2 MB 4.5-5.1 s (more Python per byte below that).
BLOCK_BYTES = 4 * 1024**2


@dataclass(frozen=True)
class Block:
    """Rows ``[start, stop)`` of one output tensor: the unit of apply's work."""

    job: OutJob
    start: int
    stop: int

    def byte_ranges(self) -> list[tuple[Path, int, int]]:
        """What this block reads: these rows of the target and of the edit's stored inputs (LoRA factors whole)."""
        aligned = self.job.aligned
        rowwise = [self.job.info]
        whole = []
        if aligned is not None:
            rowwise.append(aligned.base)
            for term in aligned.terms:
                rowwise += [t for t in (term.full, term.stored) if t is not None]
                whole += [term.lowrank.a, term.lowrank.b] if term.lowrank is not None else []
        out = []
        for info in rowwise:
            rows = info if len(info.shape) < 2 else row_block(info, self.start, min(self.stop, info.shape[0]))
            if rows is not None and rows.begin >= 0 and rows.end > rows.begin:
                out.append((rows.file, rows.begin, rows.end))
        return out + [(t.file, t.begin, t.end) for t in whole if t.begin >= 0]

    @property
    def nbytes(self) -> int:
        """Stored bytes of these rows of the target."""
        info = self.job.info
        return info.nbytes // info.shape[0] * (self.stop - self.start) if info.shape and info.shape[0] else info.nbytes


def plan_blocks(plan: ApplyPlan, block_bytes: int = BLOCK_BYTES) -> list[Block]:
    """Every output tensor as row blocks when its edit is element-wise per row (``sum``, and fused parts
    that are column slices or share one λ); whole otherwise (TIES / DARE, row-split fused parts with
    different λ, which are merged or scaled part by part)."""
    blocks: list[Block] = []
    for job in plan.jobs:
        rows = job.info.shape[0] if len(job.info.shape) >= 2 else 0
        row_bytes = job.info.numel // rows * 4 if rows else 0
        inputs = [job.info, *(job.aligned.infos() if job.aligned is not None else [])]
        addressable = all(i.encoding == "safetensors" for i in inputs)  # rows of GGUF / pickle: no byte range
        whole = rows == 0 or row_bytes * rows <= block_bytes or not addressable
        if not whole and job.aligned is not None:
            scales = part_scales(plan, job.aligned)
            row_split = any(p.dim == 0 for p in job.aligned.parts)
            uniform = all(len(set(r)) == 1 for r in scales)
            whole = plan.recipe.method != "sum" or (row_split and not uniform)
        if whole:
            blocks.append(Block(job, 0, job.info.shape[0] if job.info.shape else 1))
            continue
        step = max(1, block_bytes // row_bytes)
        blocks += [Block(job, a, min(a + step, rows)) for a in range(0, rows, step)]
    return blocks


def compute_block(plan: ApplyPlan, block: Block, source: TauSource, reader: TensorReader) -> tuple[torch.Tensor, bool]:
    """The output rows of ``block`` (in the output dtype) and whether they were edited (False: the target's
    stored bytes). The result lives in the reading thread's buffers, valid until its next block."""
    job, start, stop = block.job, block.start, block.stop
    sc = source.scratch.get()
    whole = not job.info.shape or (start, stop) == (0, job.info.shape[0])
    info = job.info if whole else row_block(job.info, start, stop)
    raw = sc.read("target", info, reader) if info is not None else sc.read("target", job.info, reader)[start:stop]
    aj = job.aligned
    scales = part_scales(plan, aj) if aj is not None else []
    active = [i for i, row in enumerate(scales) if any(s != 0.0 for s in row)]
    out_dtype = TORCH_DTYPES[job.out_dtype]
    edit_stop = min(stop, aj.rows) if aj is not None and aj.rows is not None else stop
    if aj is None or not active or edit_stop <= start:
        final = raw if raw.dtype == out_dtype else sc.get("final", out_dtype, raw.shape).copy_(raw)
        return final, False
    out = raw if raw.dtype == torch.float32 else sc.get("out", torch.float32, raw.shape).copy_(raw)
    need_base = any(aj.terms[i].full is not None for i in active)
    # the target is the base (θ_pre + Σ λ τ): its rows, read once, are also the base's
    base: bool | torch.Tensor = raw[: edit_stop - start] if plan.target is plan.base else need_base
    read = source.read(aj, rows=(start, edit_stop), models=active, base=base)
    taus: dict[int, torch.Tensor] = {}
    for i in active:
        tau = read.tau(i)
        taus[i] = tau if tau is not None else torch.zeros(read.stop - read.start, *aj.base.shape[1:])
    recipe = plan.recipe
    update = tensor_update(aj, scales, taus, method=recipe.method, density=recipe.density, seed=recipe.seed)
    add_update(out[: edit_stop - start], update, aj, scales)
    if out_dtype == torch.float32:
        return out, True
    if raw.dtype == out_dtype and raw is not out:  # the target's bytes are no longer needed: reuse them
        return raw.copy_(out), True
    return sc.get("final", out_dtype, out.shape).copy_(out), True


class ApplyWork:
    """Compute one block of output rows and write it (and its tied copies) at the planned places. Picklable:
    the plan and paths/offsets travel; readers and scratch buffers are per thread and never do."""

    def __init__(self, plan: ApplyPlan, targets: dict[str, tuple[WriteTarget, ...]], allow_nonfinite: bool) -> None:
        self.plan, self.targets = plan, targets
        self.source = TauSource(plan.alignment, allow_nonfinite)

    def __call__(self, block: Block) -> bool:
        tensor, edited = compute_block(self.plan, block, self.source, self.source.readers.get())
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            self._nonfinite(block, edited)
        for target in self.targets[block.job.name]:
            write_rows(target, block.start, tensor)
        return edited

    def _nonfinite(self, block: Block, edited: bool) -> None:
        name = block.job.name
        if edited and block.job.aligned is not None:
            msg = self.source.nonfinite(block.job.aligned, "the edited tensor")
        else:
            msg = f"{self.plan.target.name}'s {name} holds NaN/Inf values (copied unchanged)"
        if not self.source.allow_nonfinite:
            raise TunelensError(f"{msg}; nothing was written; {NONFINITE_HINT}")
        warnings.warn(f"{msg}; written as is because of --allow-nonfinite", stacklevel=2)

    def close(self) -> None:
        self.source.close()


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
    blocks = plan_blocks(plan)
    with atomic_dir(out, force=force, inputs=[plan.base, plan.target, *plan.sources]) as tmp:
        with ShardedWriter(tmp, planned, max_shard_bytes=recipe.shard_bytes) as writer:
            targets = {p.name: writer.target(p.name) for p in planned}
            work = ApplyWork(
                plan, {j.name: tuple(targets[n] for n in (j.name, *j.tied)) for j in plan.jobs}, options.allow_nonfinite
            )
            try:
                edited_blocks = run_stage(
                    blocks, work, options, desc="apply", weight=lambda b: b.nbytes * (1 + len(plan.sources)),
                    ranges=Block.byte_ranges,
                )  # fmt: skip
            finally:
                work.close()
            for job_targets in work.targets.values():  # every job finished: what each was given is written
                for target in job_targets:
                    writer.mark_written(target.planned.name)
        edited_by: dict[str, bool] = {}
        for b, e in zip(blocks, edited_blocks, strict=True):
            edited_by[b.job.name] = edited_by.get(b.job.name, False) or e
        meta = _metadata(plan, [edited_by[j.name] for j in plan.jobs], clock)
        if plan.target.origin.get("format") == "gguf":  # no folder to copy from: config (+ tokenizer) built
            meta["notes"] = meta["notes"] + gguf_side_files(plan.target, tmp, dtype=recipe.dtype)
        else:
            copy_side_files(plan.target.path, tmp, dtype=recipe.dtype)
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

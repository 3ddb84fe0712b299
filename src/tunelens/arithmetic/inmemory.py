"""Edit a resident transformers model in place, θ ← θ + Σ λ_i τ_i, and restore it bit for bit on exit.

For λ sweeps without writing a checkpoint per point::

    with edited(model, base, [(ft_med, -1.0)], selection=Selection(components=("up",))):
        score = evaluate(model)
    # here the model holds exactly its original bits again

``model`` must have been loaded from ``base`` (any dtype, any device). Checkpoint tensor names are
mapped to ``model.state_dict(keep_vars=True)`` names (exact, else a unique suffix match); tied
tensors (``lm_head`` ↔ ``embed_tokens``) share storage and are edited once; fused Phi-3 tensors
are edited as stored, part by part. τ_i is read from disk per tensor (θ_ft,i − θ_base, float32) and
the new value is ``(θ_model.float() + Σ λ_i τ_i).to(θ_model.dtype)``.

Memory: one tensor per worker in flight, plus a backup of each changed tensor *only when* the
model's values are not bit-identical to the base's stored bytes (e.g. a bf16 model loaded from a
float32 checkpoint): then the original is kept in CPU memory. When they are identical (the usual
case, checked bitwise on entry) the restore re-reads them from the base's files, so the extra
memory stays bounded by the tensors in flight. Restoring runs on exit and on any exception,
including one raised half-way through applying the edit.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from tunelens.arithmetic.merges import add_update, tensor_update
from tunelens.arithmetic.spec import Term, VectorSpec
from tunelens.checkpoints.align import AlignedTensor, align
from tunelens.checkpoints.architectures import Component
from tunelens.checkpoints.index import Checkpoint, TensorInfo
from tunelens.checkpoints.stream import TensorReader
from tunelens.config import ReadOptions, Selection
from tunelens.errors import TunelensError
from tunelens.jobs import iter_jobs
from tunelens.vectors.source import TauSource, require_finite


@dataclass
class _Backup:
    tensor: torch.Tensor
    stored: TensorInfo | None  # restore by re-reading these bytes ...
    saved: torch.Tensor | None  # ... or from this CPU copy


def resolve_tensors(model: torch.nn.Module, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Checkpoint tensor name → the model's tensor (exact name, else the unique suffix match)."""
    state = model.state_dict(keep_vars=True)
    out: dict[str, torch.Tensor] = {}
    for name in names:
        hit = state.get(name)
        if hit is None:
            cands = [k for k in state if k.endswith("." + name) or name.endswith("." + k)]
            if len(cands) == 1:
                hit = state[cands[0]]
        if hit is not None:
            out[name] = hit
    return out


def _bits(t: torch.Tensor) -> torch.Tensor:
    """A bitwise view (so -0.0 ≠ 0.0 and NaN payloads compare)."""
    width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.contiguous().view(width)


EditJob = tuple[AlignedTensor, torch.Tensor, list[list[float]]]


def plan_edits(
    model: torch.nn.Module,
    base: Checkpoint,
    terms: Sequence[tuple[Checkpoint, float]],
    *,
    selection: Selection | None = None,
    component_scales: Sequence[tuple[Component, float]] = (),
    options: ReadOptions | None = None,
) -> tuple[TauSource, list[EditJob]]:
    """The tensors of ``model`` that ``θ_base + Σ λ_i τ_i`` changes, each with its per-part λ (tied tensors once)."""
    options = options or ReadOptions(quiet=True)
    selection = selection or Selection()
    sources = [ck for ck, _ in terms]
    spec_terms = [Term(VectorSpec(ck.name, ck.path, float(s)), selection, tuple(component_scales)) for ck, s in terms]
    alignment = align(base, sources, vocab=options.vocab, missing=options.missing)
    jobs: list[EditJob] = []
    tensors = resolve_tensors(model, [j.name for j in alignment.tensors])
    seen: set[int] = set()
    for job in alignment.tensors:
        per_part = [[t.scale_for(p.layer, p.component) for p in job.parts] for t in spec_terms]
        if not any(v != 0.0 for row in per_part for v in row):
            continue
        target = tensors.get(job.name)
        if target is None:
            raise TunelensError(f"{job.name} of {base.name} has no counterpart in the model; was it loaded from it?")
        if tuple(target.shape) != job.base.shape:
            raise TunelensError(f"{job.name}: model has shape {list(target.shape)}, {base.name} {list(job.base.shape)}")
        key = int(target.untyped_storage().data_ptr() + target.storage_offset() * target.element_size())
        if key in seen:
            continue  # tied to a tensor already edited
        seen.add(key)
        jobs.append((job, target, per_part))
    return TauSource(alignment, options.allow_nonfinite), jobs


def _edit(source: TauSource, item: EditJob, keep: bool) -> _Backup | None:
    """Write one tensor's edit into the model; with ``keep``, the means to restore it."""
    job, target, per_part = item
    stored = source.readers.get().read(job.base)
    current = target.detach()
    backup = None
    if keep:
        same = stored.dtype == current.dtype and torch.equal(_bits(stored), _bits(current.cpu()))
        backup = _Backup(target, job.base if same else None, None if same else current.to("cpu", copy=True))
    new = _edited_value(source, job, current, stored, per_part)
    if not require_finite(new, f"the edit of {job.name}", allow=source.allow_nonfinite):
        warnings.warn(f"the edit of {job.name} holds NaN/Inf values (--allow-nonfinite)", stacklevel=2)
    with torch.no_grad():
        target.copy_(new.to(device=target.device, dtype=target.dtype))
    return backup


@contextmanager
def edited(
    model: torch.nn.Module,
    base: Checkpoint,
    terms: Sequence[tuple[Checkpoint, float]],
    *,
    selection: Selection | None = None,
    component_scales: Sequence[tuple[Component, float]] = (),
    options: ReadOptions | None = None,
) -> Iterator[torch.nn.Module]:
    """Apply ``θ_base + Σ λ_i τ_i`` in place to ``model`` (loaded from ``base``); restore exactly on exit.

    ``selection`` masks every term (as ``apply --only/--components/--layers``) and
    ``component_scales`` multiplies λ per component (as ``apply --scale``, e.g. ``[("up", 0.5)]``).
    """
    options = options or ReadOptions(quiet=True)
    source, jobs = plan_edits(
        model, base, terms, selection=selection, component_scales=component_scales, options=options
    )
    backups: list[_Backup] = []

    def record(item: EditJob) -> None:
        backup = _edit(source, item, keep=True)
        assert backup is not None
        backups.append(backup)

    try:
        list(iter_jobs(jobs, record, workers=options.workers, desc="edit", quiet=options.quiet))
        yield model
    finally:
        try:
            _restore(backups, source.readers.get())
        finally:
            source.close()


def apply_in_place(
    model: torch.nn.Module,
    base: Checkpoint,
    terms: Sequence[tuple[Checkpoint, float]],
    *,
    options: ReadOptions | None = None,
) -> None:
    """``θ ← θ_base + Σ λ_i τ_i`` for good, on a model loaded from ``base`` (e.g. a LoRA adapter run on its
    base by ``evaluate`` / ``activations``): the same values :func:`edited` gives, without backups."""
    options = options or ReadOptions(quiet=True)
    source, jobs = plan_edits(model, base, terms, options=options)
    try:
        list(iter_jobs(jobs, lambda item: _edit(source, item, keep=False), workers=options.workers, quiet=True))
    finally:
        source.close()


def _edited_value(
    source: TauSource, job: AlignedTensor, current: torch.Tensor, stored: torch.Tensor, per_part: list[list[float]]
) -> torch.Tensor:
    """``float32(current) + Σ λ_i τ_i`` on the rows the plan keeps (τ against the base's ``stored`` bytes)."""
    out = current.to("cpu", dtype=torch.float32, copy=True)
    active = [i for i, row in enumerate(per_part) if any(v != 0.0 for v in row)]
    rows = job.rows if job.rows is not None else (stored.shape[0] if stored.dim() else 1)
    read = source.read(job, models=active, base=stored[:rows] if stored.dim() else stored)
    taus: dict[int, torch.Tensor] = {}
    for i in active:
        tau = read.tau(i)
        taus[i] = tau if tau is not None else torch.zeros(read.stop - read.start, *job.base.shape[1:])
    update = tensor_update(job, per_part, taus)
    add_update(out if job.rows is None else out[: job.rows], update, job, per_part)
    return out


def _restore(backups: list[_Backup], reader: TensorReader) -> None:
    with torch.no_grad():
        for b in reversed(backups):
            src = reader.read(b.stored) if b.stored is not None else b.saved
            assert src is not None
            b.tensor.copy_(src.to(b.tensor.device))

"""``diff``: one streaming pass over a base and N tuned models (or vectors) → weight statistics.

Per part (a tensor, or a slice of a fused one) the pass accumulates :class:`Sums`; every group
value (whole model, without embeddings, component, attention/mlp, layer) is computed from the
added sums, never as a mean of per-tensor values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tunelens.checkpoints.align import AlignedTensor, Alignment, align
from tunelens.checkpoints.architectures import COMPONENTS, GROUPS
from tunelens.checkpoints.index import Checkpoint
from tunelens.checkpoints.naming import Part
from tunelens.checkpoints.stream import select_part
from tunelens.config import ReadOptions, Selection, check_device
from tunelens.errors import TunelensError
from tunelens.jobs import run_stage
from tunelens.stats.accumulate import Sums, lowrank_sums, part_sums, part_sums_device, single_threaded
from tunelens.stats.similarity import metrics, random_std, signflip_std, vector_cosine
from tunelens.vectors.source import NONFINITE_HINT, TauSource

TENSOR_COLUMNS = (
    "model", "tensor", "layer", "component", "shape", "numel", "cosine", "one_minus_cosine",
    "relative_change", "base_norm", "tuned_norm", "delta_norm",
)  # fmt: skip


@dataclass(frozen=True)
class PartSums:
    """The sums of one part, with the shape it had (after split and vocab crop)."""

    part: Part
    shape: tuple[int, ...]
    sums: Sums


@dataclass(frozen=True)
class DiffResult:
    """Everything ``diff`` measured: per-part rows and the grouped summary."""

    names: tuple[str, ...]
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    alignment: Alignment
    parts: list[PartSums] = field(repr=False, default_factory=list)

    def to_pandas(self) -> Any:
        """Tidy pandas frames of this result, equal to ``tunelens.load`` of its output folder."""
        from tunelens.frames import csv_frame, diff_results

        return diff_results(self.summary, lambda: csv_frame(self.rows, TENSOR_COLUMNS))


@dataclass
class DiffWork:
    """The per-tensor job of ``diff``: picklable (plan and options only), so any executor can run it."""

    source: TauSource
    selection: Selection
    device: str = "cpu"

    def __call__(self, job: AlignedTensor) -> list[PartSums]:
        read = self.source.read(job)
        assert read.base is not None
        null = len(job.terms) > 1
        # per model: the stored fine-tune (τ formed chunk by chunk), a stored or multiplied-out τ, or None (τ = 0)
        factored = len(job.terms) == 1 and read.factors[0] is not None and read.raw[0] is None
        srcs: list[tuple[torch.Tensor, bool] | None] = []
        for i, term in enumerate(job.terms):
            raw = read.raw[i]
            if term.lowrank is None and raw is not None:
                srcs.append((raw, term.full is None))
            elif factored:
                srcs.append(None)
            else:
                tau = read.tau(i)
                srcs.append(None if tau is None else (tau, True))
        out = []
        for part in job.parts:
            if self.selection.keeps(part.layer, part.component):
                w = select_part(read.base, part)
                factors = read.part_factors(0, part) if factored else None
                if factors is not None:  # one adapter: its norms and ⟨W, τ⟩ from the factors, τ never formed
                    sums = lowrank_sums(read.part(read.base, part), *factors)
                elif self.device == "cpu":
                    parts = [None if s is None else (select_part(s[0], part), s[1]) for s in srcs]
                    sums = part_sums(w, parts, null=null)
                else:
                    parts = [None if s is None else (select_part(s[0], part), s[1]) for s in srcs]
                    sums = part_sums_device(w, parts, null=null, device=self.device)
                if not sums.finite() and not self.source.allow_nonfinite:
                    raise TunelensError(self.source.nonfinite(job, "the weight sums") + f"; {NONFINITE_HINT}")
                out.append(PartSums(part, tuple(w.shape), sums))
        return out

    def close(self) -> None:
        self.source.close()


def diff_alignment(alignment: Alignment, selection: Selection, options: ReadOptions, device: str = "cpu") -> DiffResult:
    """Run the pass over an existing alignment plan (the sums on ``device``: ``cpu``, or a GPU)."""
    jobs = [job for job in alignment.tensors if any(selection.keeps(p.layer, p.component) for p in job.parts)]
    n = len(alignment.others)
    work = DiffWork(TauSource(alignment, options.allow_nonfinite), selection, check_device(device))
    try:
        with single_threaded():
            results = run_stage(
                jobs,
                work,
                options,
                desc="diff",
                weight=lambda j: j.base.nbytes * (1 + n),
                ranges=AlignedTensor.byte_ranges,
            )
    finally:
        work.close()
    parts = [item for res in results for item in res]
    names = tuple(ck.name for ck in alignment.others)
    rows = _tensor_rows(parts, names)
    summary = summarize(parts, alignment.others)
    return DiffResult(names, rows, summary, alignment, parts)


def diff(
    base: Checkpoint,
    tuned: list[Checkpoint],
    *,
    selection: Selection | None = None,
    options: ReadOptions | None = None,
    device: str = "cpu",
) -> DiffResult:
    """Weight cosine, relative change and vector cosine of ``tuned`` models against ``base``."""
    options = options or ReadOptions()
    alignment = align(base, tuned, vocab=options.vocab, missing=options.missing)
    return diff_alignment(alignment, selection or Selection(), options, device)


def _tensor_rows(parts: list[PartSums], names: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = []
    for i, name in enumerate(names):
        for ps in parts:
            part, s = ps.part, ps.sums
            shape = "x".join(str(x) for x in ps.shape)
            rows.append(
                {
                    "model": name,
                    "tensor": part.tensor,
                    "layer": "" if part.layer is None else part.layer,
                    "component": part.component,
                    "shape": shape,
                    **metrics(s, i),
                }
            )
    return rows


def group_sums(parts: list[PartSums], n: int, key: Callable[[Part], Any]) -> dict[Any, Sums]:
    """Add the sums of every part by ``key(part)`` (parts whose key is None are left out)."""
    out: dict[Any, Sums] = {}
    for ps in parts:
        k, s = key(ps.part), ps.sums
        if k is None:
            continue
        out[k] = out[k] + s if k in out else s
    return out


def summarize(parts: list[PartSums], others: tuple[Checkpoint, ...]) -> dict[str, Any]:
    """Group metrics per model and the vector-cosine matrices (DESIGN.md §3 ``summary.json``)."""
    n = len(others)
    total = group_sums(parts, n, lambda p: "all").get("all", Sums.zero(n))
    no_embed = group_sums(parts, n, lambda p: None if p.component in ("embed", "lm_head") else "x").get(
        "x", Sums.zero(n)
    )
    by_comp = group_sums(parts, n, lambda p: p.component)
    by_group = group_sums(parts, n, _group_of)
    by_layer = group_sums(parts, n, lambda p: p.layer)
    comp_order = [c for c in COMPONENTS if c in by_comp]
    models = []
    for i, ck in enumerate(others):
        models.append(
            {
                "name": ck.name,
                "path": str(ck.path),
                "kind": ck.kind,
                "global": metrics(total, i),
                "without_embeddings": metrics(no_embed, i),
                "by_component": {c: metrics(by_comp[c], i) for c in comp_order},
                "by_group": {g: metrics(s, i) for g, s in by_group.items()},
                "by_layer": [{"layer": layer, **metrics(by_layer[layer], i)} for layer in sorted(by_layer)],
            }
        )
    return {
        "models": models,
        "vector_cosine": {
            "names": [ck.name for ck in others],
            **_vector_block(total),
            "without_embeddings": _vector_block(no_embed),
            "by_component": {c: _vector_block(by_comp[c]) for c in comp_order},
            "by_group": {g: _vector_block(s) for g, s in by_group.items()},
            "by_layer": [{"layer": layer, **_vector_block(by_layer[layer])} for layer in sorted(by_layer)],
        },
    }


def _group_of(part: Part) -> str | None:
    """``attention`` or ``mlp`` for their components, else None."""
    return next((g for g in ("attention", "mlp") if part.component in GROUPS[g]), None)


def _vector_block(s: Sums) -> dict[str, Any]:
    n = len(s.base_dot)
    return {
        "matrix": [[vector_cosine(s, i, j) for j in range(n)] for i in range(n)],
        "baseline": {
            "numel": s.numel,
            "random_std": random_std(s.numel),
            "signflip_std": [[signflip_std(s, i, j) for j in range(n)] for i in range(n)],
            "null_mean": 0.0,
        },
    }

"""The public Python API: one function per command, same names and options as the CLI.

Example:
    >>> import tunelens.api as tl
    >>> result = tl.diff("base/", ["med=ft-med/", "ft-math/"], out="diff-out/")
    >>> result.summary["models"][0]["global"]["cosine"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelens.checkpoints.describe import describe_checkpoint
from tunelens.checkpoints.index import Checkpoint, open_checkpoint
from tunelens.checkpoints.output import atomic_dir, check_target
from tunelens.config import ReadOptions, Selection
from tunelens.provenance import RunClock
from tunelens.report.tables import write_csv, write_json
from tunelens.stats.diff import TENSOR_COLUMNS, DiffResult
from tunelens.stats.diff import diff as _diff
from tunelens.stats.similarity import DEFINITIONS
from tunelens.vectors.write import write_vector

__all__ = ["DiffResult", "Selection", "ReadOptions", "diff", "inspect", "open_checkpoint", "vector"]


def _open(spec: str | Path | Checkpoint, options: ReadOptions) -> Checkpoint:
    return spec if isinstance(spec, Checkpoint) else open_checkpoint(spec, allow_pickle=options.allow_pickle)


def inspect(model: str | Path | Checkpoint, *, options: ReadOptions | None = None) -> dict[str, Any]:
    """Describe a checkpoint from its headers (architecture, sizes, dtypes, components)."""
    return describe_checkpoint(_open(model, options or ReadOptions()))


def diff(
    base: str | Path | Checkpoint,
    tuned: list[str | Path | Checkpoint] | tuple[str | Path | Checkpoint, ...],
    *,
    out: str | Path | None = None,
    selection: Selection | None = None,
    options: ReadOptions | None = None,
    force: bool = False,
) -> DiffResult:
    """Weight cosine / relative change per tensor, component, layer and model, and vector cosine.

    With ``out``, writes ``tensors.csv`` and ``summary.json`` there (DESIGN.md §3).
    """
    options = options or ReadOptions()
    selection = selection or Selection()
    if out is not None:
        check_target(Path(out), force)
    clock = RunClock()
    b = _open(base, options)
    ts = [_open(t, options) for t in tuned]
    if not ts:
        from tunelens.errors import TunelensError

        raise TunelensError("diff needs at least one tuned model or vector")
    names = [t.name for t in ts]
    if len(set(names)) != len(names):
        from tunelens.errors import TunelensError

        raise TunelensError(f"model names must be unique, got {names}; name them with name=path")
    result = _diff(b, ts, selection=selection, options=options)
    meta = clock.metadata(
        [b.describe(), *(t.describe() for t in ts)],
        definitions=DEFINITIONS,
        selection=selection.describe(),
        alignment=result.alignment.report(),
        compute_dtype="float32 products, float64 sums",
    )
    result.summary.update(meta)
    if out is not None:
        with atomic_dir(Path(out), force=force) as tmp:
            write_csv(tmp / "tensors.csv", result.rows, TENSOR_COLUMNS)
            write_json(tmp / "summary.json", result.summary)
    return result


def vector(
    base: str | Path | Checkpoint,
    tuned: str | Path | Checkpoint,
    out: str | Path,
    *,
    dtype: str = "float32",
    options: ReadOptions | None = None,
    force: bool = False,
) -> Path:
    """Save τ = tuned − base as a sharded safetensors vector folder."""
    options = options or ReadOptions()
    check_target(Path(out), force)
    return write_vector(
        _open(base, options), _open(tuned, options), Path(out), dtype=dtype, options=options, force=force
    )

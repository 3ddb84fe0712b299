"""``vector``: write τ = θ_ft − θ_pre as a sharded safetensors "vector folder".

The folder holds τ under the base's tensor names (float32 by default: the difference of two
bf16/fp16 values is exact in float32 in all but extreme exponent gaps), the base's ``config.json``
(so the architecture is known), and ``tunelens.json`` with the parent's and child's identity, the
dtype, definitions and any skipped or cropped tensors. Any command that takes a tuned model
accepts this folder in its place.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunelens.checkpoints.align import AlignedTensor, align
from tunelens.checkpoints.index import VECTOR_META, Checkpoint
from tunelens.checkpoints.output import atomic_dir, check_target
from tunelens.checkpoints.stream import ST_DTYPES
from tunelens.checkpoints.writer import DEFAULT_SHARD_BYTES, PlannedTensor, ShardedWriter, WriteTarget, write_at
from tunelens.config import ReadOptions
from tunelens.errors import TunelensError
from tunelens.jobs import run_stage
from tunelens.provenance import RunClock
from tunelens.vectors.source import TauSource, require_finite, tau_definition

VECTOR_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def write_vector(
    base: Checkpoint,
    tuned: Checkpoint,
    out: Path,
    *,
    dtype: str = "float32",
    options: ReadOptions | None = None,
    force: bool = False,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> Path:
    """Write τ of ``tuned`` against ``base`` into ``out``; return the folder."""
    options = options or ReadOptions()
    if dtype not in VECTOR_DTYPES:
        raise TunelensError(f"--dtype must be one of {', '.join(VECTOR_DTYPES)}, got {dtype}")
    if tuned.kind == "vector":
        raise TunelensError(f"{tuned.name} is already a tuning vector folder")
    check_target(Path(out), force, inputs=[base, tuned])
    clock = RunClock()
    alignment = align(base, [tuned], vocab=options.vocab, missing=options.missing)
    tdtype = VECTOR_DTYPES[dtype]
    plan = [PlannedTensor(j.name, _shape(j), ST_DTYPES[tdtype]) for j in alignment.tensors]
    with atomic_dir(Path(out), force=force, inputs=[base, tuned]) as tmp:
        with ShardedWriter(tmp, plan, max_shard_bytes=max_shard_bytes) as writer:
            targets = {j.name: writer.target(j.name) for j in alignment.tensors}
            work = VectorWork(TauSource(alignment, options.allow_nonfinite), dtype, targets)
            try:
                run_stage(
                    list(alignment.tensors), work, options, desc="vector", weight=lambda j: j.base.nbytes * 2,
                    ranges=AlignedTensor.byte_ranges,
                )  # fmt: skip
            finally:
                work.close()
            for name in work.targets:  # every job finished: its tensor is written
                writer.mark_written(name)
        if base.origin.get("format") == "gguf":  # the config built from the GGUF's metadata
            (tmp / "config.json").write_text(json.dumps(base.config, indent=2) + "\n")
        else:
            shutil.copy2(base.path / "config.json", tmp / "config.json")
        meta: dict[str, Any] = {
            "kind": "tuning_vector",
            "parent": base.describe(),
            "child": tuned.describe(),
            "dtype": dtype,
            "compute_dtype": "float32",
            "definitions": {"tuning_vector": tau_definition()},
            "alignment": alignment.report(),
            **clock.metadata([base.describe(), tuned.describe()]),
        }
        (tmp / VECTOR_META).write_text(json.dumps(meta, indent=2) + "\n")
    return Path(out)


@dataclass
class VectorWork:
    """Compute one τ tensor and write it at its planned place (picklable: paths and offsets only)."""

    source: TauSource
    dtype: str
    targets: dict[str, WriteTarget]

    def __call__(self, job: AlignedTensor) -> None:
        read = self.source.read(job)
        tau = read.tau(0)
        if tau is None:
            tau = torch.zeros(read.base_float().shape)
        if not require_finite(tau, f"tau of {self.source.names[0]} on {job.name}", allow=self.source.allow_nonfinite):
            warnings.warn(f"{job.name}: tau holds NaN/Inf, written as is (--allow-nonfinite)", stacklevel=2)
        write_at(self.targets[job.name], tau.to(VECTOR_DTYPES[self.dtype]))

    def close(self) -> None:
        self.source.close()


def _shape(job: AlignedTensor) -> tuple[int, ...]:
    if job.rows is None:
        return job.base.shape
    return (job.rows, *job.base.shape[1:])

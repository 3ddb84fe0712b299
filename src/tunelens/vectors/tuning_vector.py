"""Lazy per-tensor tuning vectors: τ = θ_ft − θ_pre in float32, or read from a vector folder.

A "vector folder" (written by ``tunelens vector``) stores τ itself, so a fine-tune can be shipped as
the difference from its parent; every stage accepts it wherever it accepts a fine-tuned model.
"""

from __future__ import annotations

import torch

from tunelens.checkpoints.align import AlignedTensor, Alignment
from tunelens.checkpoints.stream import TensorReader


def read_aligned(
    reader: TensorReader, alignment: Alignment, job: AlignedTensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The base tensor and each source's τ for one aligned tensor, float32, crop applied.

    For a fine-tuned model ``τ = θ_ft − θ_pre``; for a vector folder τ is read as stored.
    """
    base = reader.read_float(job.base)
    if job.rows is not None:
        base = base[: job.rows]
    deltas: list[torch.Tensor] = []
    for ck, info in zip(alignment.others, job.others, strict=True):
        t = reader.read_float(info)
        if job.rows is not None:
            t = t[: job.rows]
        if ck.kind == "vector":
            deltas.append(t)
        else:
            deltas.append(t.sub_(base))  # read_float returns a fresh tensor: safe in place
    return base, deltas

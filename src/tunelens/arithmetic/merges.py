"""Combine the τ_i of one tensor part into one update: plain weighted sum, or PEFT's TIES / DARE.

The interference-aware merges are PEFT's own functions (``peft.utils.merge_utils``), applied per
tensor part (a tensor, or one slice of a fused Phi-3 / GPT-2 tensor) to the stack of the τ_i that
the masks keep there:

- ``ties``: trim each τ_i to its top ``density`` fraction by magnitude, elect the sign per element
  from the sum of the trimmed (unweighted) τ_i, then the disjoint mean of the λ-weighted values that
  agree with it (PEFT ``ties(..., majority_sign_method="total")``).
- ``dare_linear``: drop each element with probability ``p = 1 - density``, rescale by ``1/density``,
  then ``Σ λ_i τ_i``. ``dare_ties``: the same drops, then TIES's sign election and disjoint mean.

DARE's drops come from torch's global generator, which PEFT uses; each part runs under a lock with
the generator forked and seeded from ``sha256(seed, tensor name, part index)``, so results depend
on the seed only (not on threads or order) and a test can replay them with PEFT directly.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence

import torch

from tunelens.arithmetic.spec import Method
from tunelens.checkpoints.align import AlignedTensor
from tunelens.checkpoints.stream import select_part

_RNG_LOCK = threading.Lock()


def part_seed(seed: int, tensor: str, part_index: int) -> int:
    """The DARE seed of one part: the first 63 bits of ``sha256(f"{seed}:{tensor}:{part_index}")``."""
    digest = hashlib.sha256(f"{seed}:{tensor}:{part_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def merge_update(
    method: Method,
    taus: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    density: float | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """The float32 update of one part: ``Σ λ_i τ_i`` (``sum``) or PEFT's ``ties`` / ``dare_*``."""
    if method == "sum":
        out = taus[0] * weights[0]
        for tau, w in zip(taus[1:], weights[1:], strict=True):
            out.add_(tau, alpha=w)
        return out
    from peft.utils import merge_utils

    assert density is not None
    lam = torch.tensor(list(weights), dtype=taus[0].dtype)
    if method == "ties":
        return merge_utils.ties(list(taus), lam, density, majority_sign_method="total")
    fn = merge_utils.dare_linear if method == "dare_linear" else merge_utils.dare_ties
    with _RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn(list(taus), lam, density)


def tensor_update(
    job: AlignedTensor,
    scales: list[list[float]],
    taus: dict[int, torch.Tensor],
    *,
    method: Method = "sum",
    density: float | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """The float32 update of one tensor from its terms' τ (``taus[i]``, consumed) and ``scales[i][part]``.

    ``sum``: each τ_i is scaled in place part by part and the scaled τ_i are added in term order, so
    every caller (``apply``, the in-memory editor) rounds identically. Other methods merge per part.
    """
    if method == "sum":
        update: torch.Tensor | None = None
        for i, tau in taus.items():
            row = scales[i]
            if len(set(row)) == 1:
                if row[0] != 1.0:
                    tau.mul_(row[0])
            else:
                for k, part in enumerate(job.parts):
                    select_part(tau, part).mul_(row[k])
            update = tau if update is None else update.add_(tau)
        assert update is not None
        return update
    update = torch.zeros_like(next(iter(taus.values())))
    for k, part in enumerate(job.parts):
        members = [i for i in taus if scales[i][k] != 0.0]
        if members:
            merged = merge_update(
                method,
                [select_part(taus[i], part) for i in members],
                [scales[i][k] for i in members],
                density=density,
                seed=part_seed(seed, job.name, k),
            )
            select_part(update, part).copy_(merged)
    return update


def add_update(region: torch.Tensor, update: torch.Tensor, job: AlignedTensor, scales: list[list[float]]) -> None:
    """``region += update`` on the parts some term edits; other parts keep their exact bits (even -0.0).

    When every part is edited (the parts of a tensor cover it) the update is added in one step, so
    ``region`` may then be any block of rows of the tensor.
    """
    edited = [any(row[k] != 0.0 for row in scales) for k in range(len(job.parts))]
    if all(edited):
        region.add_(update)
        return
    for part, on in zip(job.parts, edited, strict=True):
        if on:
            select_part(region, part).add_(select_part(update, part))

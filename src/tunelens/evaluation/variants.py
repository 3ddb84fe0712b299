"""Edited models without writing them: ``--apply`` / ``--sweep`` as variants of one resident model.

The loaded MODEL is the base. Each ``--apply NAME=PATH[:λ]`` is a term: a fine-tuned model (τ =
θ_PATH − θ_MODEL) or a tuning-vector folder (its stored τ), with scale λ (default 1). A variant is
``θ_MODEL + Σ λ_i s τ_i`` applied in place by :func:`tunelens.arithmetic.inmemory.edited` and
restored bit for bit on exit; ``--sweep s1,s2,...`` gives one variant per ``s`` (default: s = 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from tunelens.errors import TunelensError
from tunelens.evaluation.model import LoadedModel
from tunelens.evaluation.run import Variant


def parse_sweep(text: str | None) -> list[float] | None:
    """``"0,0.25,1"`` → ``[0.0, 0.25, 1.0]`` (unique, in the given order)."""
    if text is None or not text.strip():
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise TunelensError(f"--sweep must be a comma-separated list of numbers, got {text!r}") from exc
    if not all(math.isfinite(v) for v in values):
        raise TunelensError(f"--sweep values must be finite numbers, got {text!r}")
    if len(set(values)) != len(values):
        raise TunelensError(f"--sweep has repeated values: {text}")
    return values


def edit_variants(lm: LoadedModel, specs: Sequence[str], sweep: Sequence[float] | None) -> list[Variant]:
    """One :class:`Variant` per sweep scale (or one, scale 1), each applying all ``specs``."""
    if not specs:
        if sweep:
            raise TunelensError("--sweep needs at least one --apply term")
        return []
    from tunelens.arithmetic.inmemory import edited
    from tunelens.arithmetic.spec import parse_vector_spec
    from tunelens.checkpoints.index import open_checkpoint

    parsed = [parse_vector_spec(s) for s in specs]
    if len({p.name for p in parsed}) != len(parsed):
        raise TunelensError("--apply terms need unique names; name them with NAME=PATH")
    terms = [(open_checkpoint(p.path, name=p.name), p.scale) for p in parsed]
    variants = []
    for s in sweep or [1.0]:

        def enter(model: Any, s: float = s) -> AbstractContextManager[Any]:
            return edited(model, lm.base, [(ck, lam * s) for ck, lam in terms])

        label = "edited" if not sweep else f"sweep={s:g}"
        recipe = {
            "edit": f"θ_{lm.name} + Σ λ_i·s·τ_i (in memory, restored bit for bit)",
            "s": s,
            "terms": [{"name": ck.name, "path": str(ck.path), "kind": ck.kind, "lambda": lam * s} for ck, lam in terms],
        }
        variants.append(Variant(label, enter, recipe))
    return variants

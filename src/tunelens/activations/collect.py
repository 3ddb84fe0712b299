"""One model's pass over the corpus: exact active counts per layer, patterns stored or compared.

Inside the forward, each layer's hook hands its ``(batch, seq, d_ff)`` pattern to a sink that
drops the uncounted BOS positions, adds the active neurons to an int64 counter, packs the bits,
writes them to this model's :class:`PatternStore` (when a later model needs them) and compares them
token by token with the same block of every earlier model's store. Nothing accumulates with the
corpus: one layer's block is alive at a time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from tunelens.activations.compare import PairSums, pack, pack_torch
from tunelens.activations.corpus import TokenizedCorpus
from tunelens.activations.hooks import mlp_activation_hooks
from tunelens.activations.options import Pattern
from tunelens.activations.store import PatternStore
from tunelens.errors import TunelensError
from tunelens.jobs import show_progress


@dataclass(frozen=True)
class ModelCounts:
    """Exact per-layer counts of one model over the corpus."""

    name: str
    layers: int
    d_ff: int
    tokens: int
    active: tuple[int, ...]
    seconds: float
    nonfinite: tuple[int, ...] = ()  # NaN / Inf activation values per layer (only with allow_nonfinite)

    def summary(self) -> dict[str, Any]:
        denom = float(self.tokens) * self.d_ff
        bad = self.nonfinite or (0,) * self.layers
        fraction = [math.nan if n else a / denom for a, n in zip(self.active, bad, strict=True)]
        return {
            "name": self.name,
            "fraction_active": fraction,
            "mean": float(np.mean(fraction)),
            "nonfinite_activations": list(bad),
            "tokens": self.tokens,
            "layers": self.layers,
            "d_ff": self.d_ff,
            "active": list(self.active),
            "seconds": round(self.seconds, 3),
            "tokens_per_second": round(self.tokens / self.seconds, 1) if self.seconds > 0 else None,
        }


def collect(
    model: nn.Module,
    name: str,
    corpus: TokenizedCorpus,
    *,
    pattern: Pattern,
    own: PatternStore | None = None,
    refs: tuple[PatternStore, ...] = (),
    pairs: tuple[PairSums, ...] = (),
    quiet: bool = False,
    allow_nonfinite: bool = False,
) -> ModelCounts:
    """Run ``model`` over every batch of ``corpus``; ``pairs[i]`` compares ``refs[i]`` with this model."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    backbone = getattr(model, "base_model", model)  # the decoder without lm_head: logits are not needed
    where = {"row": 0, "skip": 0}
    active: np.ndarray[Any, np.dtype[np.int64]] | None = None

    def sink(layer: int, mask: torch.Tensor) -> None:
        block = mask[:, where["skip"] :, :].reshape(-1, mask.shape[-1])  # (tokens, d_ff)
        assert active is not None
        on_cpu = block.device.type == "cpu"
        # count (and pack) where the mask lives: from a GPU only the packed bits travel
        active[layer] += int(np.count_nonzero(block.numpy())) if on_cpu else int(block.sum(dtype=torch.int64))
        if own is None and not refs:
            return
        packed = pack(block.numpy()) if on_cpu else pack_torch(block).cpu().numpy()  # (tokens, ceil(d_ff/8))
        if own is not None:
            own.write(layer, where["row"], packed)
        for ref, acc in zip(refs, pairs, strict=True):
            acc.add(layer, ref.read(layer, where["row"], packed.shape[0]), packed)

    bar = tqdm(
        total=corpus.tokens, desc=name, unit="tok", unit_scale=True, leave=False, disable=not show_progress(quiet)
    )
    started = time.perf_counter()
    try:
        with mlp_activation_hooks(model, pattern, sink) as taps, torch.inference_mode():
            active = np.zeros(taps.layers, dtype=np.int64)
            for batch in corpus.batches():
                ids = torch.from_numpy(batch.input_ids).to(device)
                where["skip"] = batch.skip
                taps.expect(*ids.shape)
                backbone(input_ids=ids, use_cache=False)
                taps.check()
                if any(taps.nonfinite) and not allow_nonfinite:
                    raise _nonfinite_error(name, taps.nonfinite, where["row"] + batch.tokens)
                where["row"] += batch.tokens
                bar.update(batch.tokens)
            layers, d_ff, nonfinite = taps.layers, taps.d_ff, tuple(taps.nonfinite)
    finally:
        bar.close()
    if where["row"] != corpus.tokens:
        raise RuntimeError(f"{name}: counted {where['row']} tokens, the corpus has {corpus.tokens}")
    for acc in pairs:
        acc.tokens = corpus.tokens
    active_counts = tuple(int(a) for a in active)
    return ModelCounts(name, layers, d_ff, corpus.tokens, active_counts, time.perf_counter() - started, nonfinite)


def _nonfinite_error(name: str, nonfinite: list[int], tokens: int) -> TunelensError:
    layer = next(i for i, n in enumerate(nonfinite) if n)
    return TunelensError(
        f"{name}: {nonfinite[layer]} non-finite (NaN/Inf) MLP activations in layer {layer} within the first "
        f"{tokens} tokens: its weights hold NaN/Inf or the run dtype overflows; pass --allow-nonfinite to "
        "analyse it anyway (the affected layers' numbers are then null)"
    )

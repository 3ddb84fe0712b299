"""Load a local model folder and its tokenizer for evaluation (safetensors only, no remote code)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from tunelens.checkpoints.causal_lm import load_causal_lm, load_tokenizer, runs_on, tokenizer_source
from tunelens.checkpoints.index import Checkpoint, open_checkpoint
from tunelens.config import check_device
from tunelens.errors import TunelensError

EvalDtype = Literal["float32", "bfloat16", "float16", "float64"]


@dataclass
class LoadedModel:
    """A resident model: the checkpoint it came from, the module and its tokenizer."""

    checkpoint: Checkpoint
    model: Any
    tokenizer: Any
    dtype: EvalDtype
    device: str
    weights: Checkpoint | None = (
        None  # the folder the weights were loaded from, when not ``checkpoint`` (an adapter's base)
    )

    @property
    def name(self) -> str:
        return self.checkpoint.name

    @property
    def base(self) -> Checkpoint:
        """The checkpoint whose stored weights the resident model started from (edits take τ against it)."""
        return self.weights or self.checkpoint

    def describe(self) -> dict[str, Any]:
        out = {**self.checkpoint.describe(), "dtype": self.dtype, "device": self.device}
        if self.weights is not None:
            out["runs_on"] = self.weights.describe()
        return out


def load_model(
    spec: str | Path, *, dtype: EvalDtype = "float32", device: str = "cpu", quiet: bool = False
) -> LoadedModel:
    """``[name=]folder`` → :class:`LoadedModel`: its tokenizer, and the model from the shared loader
    :func:`tunelens.checkpoints.causal_lm.load_causal_lm` (safetensors only, no remote code, local
    files only, eval mode, no second copy of the weights)."""
    if dtype not in get_args(EvalDtype):
        raise TunelensError(f"--dtype must be one of {', '.join(get_args(EvalDtype))}, got {dtype}")
    ckpt = open_checkpoint(spec)
    if ckpt.kind == "vector":
        raise TunelensError(f"{ckpt.path} is a tuning-vector folder; evaluate a model (or use --apply)")
    check_device(device)
    source = tokenizer_source(ckpt)
    if source is None:
        raise TunelensError(f"{ckpt.path}: no tokenizer files (tokenizer.json, tokenizer_config.json, ...)")
    tokenizer = load_tokenizer(source, quiet=quiet)
    model = load_causal_lm(ckpt, dtype=dtype, device=device, quiet=quiet)
    weights = runs_on(ckpt) if ckpt.kind == "adapter" else None
    return LoadedModel(ckpt, model, tokenizer, dtype, device, weights)

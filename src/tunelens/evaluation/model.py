"""Load a local model folder and its tokenizer for evaluation (safetensors only, no remote code)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from tunelens.checkpoints.causal_lm import load_causal_lm, transformers_output
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

    @property
    def name(self) -> str:
        return self.checkpoint.name

    def describe(self) -> dict[str, Any]:
        return {**self.checkpoint.describe(), "dtype": self.dtype, "device": self.device}


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
    from transformers import AutoTokenizer

    try:
        with transformers_output(quiet=quiet):
            tokenizer = AutoTokenizer.from_pretrained(str(ckpt.path), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise TunelensError(f"{ckpt.path}: no usable tokenizer ({str(exc).splitlines()[0]})") from exc
    model = load_causal_lm(ckpt, dtype=dtype, device=device, quiet=quiet)
    return LoadedModel(checkpoint=ckpt, model=model, tokenizer=tokenizer, dtype=dtype, device=device)

"""Load a local model folder and its tokenizer for evaluation (safetensors only, no remote code)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from tunelens.checkpoints.index import Checkpoint, open_checkpoint
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


def load_model(spec: str | Path, *, dtype: EvalDtype = "float32", device: str = "cpu") -> LoadedModel:
    """``[name=]folder`` → :class:`LoadedModel` (transformers, local files only, eval mode)."""
    if dtype not in get_args(EvalDtype):
        raise TunelensError(f"--dtype must be one of {', '.join(get_args(EvalDtype))}, got {dtype}")
    ckpt = open_checkpoint(spec)
    if ckpt.kind == "vector":
        raise TunelensError(f"{ckpt.path} is a tuning-vector folder; evaluate a model (or use --apply)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(ckpt.path), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise TunelensError(f"{ckpt.path}: no usable tokenizer ({str(exc).splitlines()[0]})") from exc
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(ckpt.path),
            dtype=getattr(torch, dtype),
            local_files_only=True,
            use_safetensors=True,
            trust_remote_code=False,
        )
    except (OSError, ValueError) as exc:
        raise TunelensError(f"{ckpt.path}: transformers cannot load it ({str(exc).splitlines()[0]})") from exc
    model = model.to(device)  # type: ignore[arg-type]  # transformers' to() overloads
    model.eval()
    return LoadedModel(checkpoint=ckpt, model=model, tokenizer=tokenizer, dtype=dtype, device=device)

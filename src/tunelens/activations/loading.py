"""Open the models and their tokenizers from local folders; refuse tokenizers that differ.

Models are opened with :func:`~tunelens.checkpoints.index.open_checkpoint` first (headers only),
so a bad folder gets the usual one-line error before anything heavy, then loaded one at a time by
the shared loader :func:`~tunelens.checkpoints.causal_lm.load_causal_lm` (safetensors only, no
remote code, local files only, weights memory-mapped: no second copy).

Tokenizers are *equal* when these match: ``get_vocab()`` (every token and id, added tokens
included), the special-token ids (BOS, EOS, PAD, UNK and ``all_special_ids``), and, for fast
tokenizers, the normalizer, pre-tokenizer and model (vocab + merges) of ``tokenizer.json`` as the
``tokenizers`` library serialises them. Chat templates and post-processors do not take part: the
corpus is encoded without special tokens.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from tunelens.activations.options import ActivationOptions
from tunelens.checkpoints.causal_lm import load_causal_lm, load_tokenizer, runs_on, tokenizer_source
from tunelens.checkpoints.index import Checkpoint, open_checkpoint
from tunelens.errors import TunelensError

_ST_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float32"}


def open_models(specs: list[str | Path | Checkpoint]) -> list[Checkpoint]:
    """Headers of every model, names unique, no tuning-vector folders."""
    if not specs:
        raise TunelensError("activations needs at least one model")
    cks = [s if isinstance(s, Checkpoint) else open_checkpoint(s) for s in specs]
    for ck in cks:
        if ck.kind == "vector":
            raise TunelensError(
                f"{ck.path} is a tuning-vector folder; activations need full models (make one with tunelens apply)"
            )
    names = [c.name for c in cks]
    if len(set(names)) != len(names):
        raise TunelensError(f"model names must be unique, got {names}; name them with name=path")
    return cks


def tokenizer_identity(tok: Any) -> dict[str, str]:
    """sha256 of each part that decides how text becomes ids (see the module docstring)."""
    vocab = sorted(tok.get_vocab().items())
    specials = {k: getattr(tok, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")}
    specials["all_special_ids"] = sorted(tok.all_special_ids)
    parts: dict[str, Any] = {"vocab": vocab, "special tokens": specials}
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        for key in ("normalizer", "pre_tokenizer", "model"):
            parts[key] = state.get(key)
    return {k: hashlib.sha256(json.dumps(v, sort_keys=True).encode()).hexdigest() for k, v in parts.items()}


def shared_tokenizer(models: list[Checkpoint], options: ActivationOptions) -> tuple[Any, dict[str, Any]]:
    """The one tokenizer every model uses, or a one-line error naming the models and what differs."""
    sources = {ck.name: tokenizer_source(ck) for ck in models}
    if options.tokenizer is not None:
        source: tuple[Path, dict[str, Any]] | None = (Path(options.tokenizer), {})
    else:
        source = next((s for s in sources.values() if s is not None), None)
    if source is None:
        raise TunelensError("no model folder holds tokenizer files; point --tokenizer at one")
    tok = load_tokenizer(source)
    ref = tokenizer_identity(tok)
    checked: list[str] = []
    for ck in models:
        own = sources[ck.name]
        if own is None:
            continue
        other = tokenizer_identity(load_tokenizer(own)) if own != source else ref
        differ = [k for k in ref if ref[k] != other.get(k)]
        if differ:
            raise TunelensError(
                f"tokenizers differ: {ck.name} ({own[0]}) and {source[0]} differ in {', '.join(differ)}; "
                "activation patterns are only comparable on identical token ids"
            )
        checked.append(ck.name)
    info = {
        "source": str(source[0] / source[1]["gguf_file"]) if source[1] else str(source[0]),
        "class": type(tok).__name__,
        "vocab_size": len(tok),
        "sha256": ref,
        "checked_equal": checked,
        "without_tokenizer_files": [name for name, src in sources.items() if src is None],
        "equality": "get_vocab(), special-token ids, tokenizer.json normalizer / pre_tokenizer / model",
    }
    return tok, info


def check_vocab(models: list[Checkpoint], max_id: int) -> None:
    for ck in models:
        n = runs_on(ck).arch.vocab_size
        if n is not None and max_id >= n:
            raise TunelensError(f"{ck.name}: the corpus uses token id {max_id}, the model has only {n} embeddings")


def resolve_dtype(options: ActivationOptions, first: Checkpoint) -> str:
    """``auto`` → the float dtype most of the first model's parameters are stored in (an adapter's base's)."""
    if options.dtype != "auto":
        return options.dtype
    sizes: dict[str, int] = {}
    for t in runs_on(first).tensors.values():
        if t.is_float:
            sizes[t.dtype] = sizes.get(t.dtype, 0) + t.numel
    stored = max(sizes, key=lambda k: sizes[k]) if sizes else "F32"
    return _ST_DTYPES.get(stored, "float32")


def load_model(ck: Checkpoint, dtype: str, device: str, *, quiet: bool = False) -> torch.nn.Module:
    """One model in eval mode on ``device`` (:func:`tunelens.checkpoints.causal_lm.load_causal_lm`:
    safetensors only, no remote code, no second copy of the weights)."""
    return load_causal_lm(ck, dtype=dtype, device=device, quiet=quiet)

"""Load a checkpoint as a transformers causal LM for forward passes (``activations``, ``evaluate``).

The one loader of every command that runs a model: ``AutoModelForCausalLM.from_pretrained`` with
``trust_remote_code=False, use_safetensors=True, local_files_only=True`` (safetensors only, no remote
code, no network), in eval mode, on ``device``.

Memory: no second copy of the weights. transformers 5 builds the model on the meta device and, when
the requested dtype is the stored one, makes each parameter a view of a private (copy-on-write)
memory map of its shard. Loading copies nothing; a forward pass reads each page once from the page
cache, and the process then holds the weights once, as file-backed pages: peak RSS ≈ the weights'
bytes + activations + ~0.4 GB of Python and torch, or less where memory is short (the kernel may drop
clean pages under memory pressure and read them again on use: slower, not fatal). ``bench/bench_scale.py
--part forward`` measures it on an 8B-shaped bf16 checkpoint. An in-place edit of the weights
(``evaluate --apply``) copies only the pages it writes; the files themselves are never written
(``MAP_PRIVATE``). Another dtype converts each tensor once: float32 from bf16 stores twice the bytes,
and bf16 weights are never upcast when bf16 is asked for. ``tests/checkpoints/test_causal_lm.py``
checks both against ``/proc/self/maps``.

A weight the model needs but the checkpoint lacks is an error here: transformers would initialise it
at random and only log a warning, and every number computed from that model would be wrong.

transformers' own output follows tunelens': its progress bars ("Loading weights", "Writing model
shards", ...) show only on an interactive terminal and never with ``--quiet``, and ``--quiet`` also
silences its warnings (errors still show). :func:`transformers_output` is that switch; the commands
that load models wrap their whole run in it, and :func:`load_causal_lm` wraps every load.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelens.checkpoints.index import Checkpoint
from tunelens.errors import TunelensError

if TYPE_CHECKING:
    import torch

#: dtype names the model-running commands accept (``--dtype``)
DTYPE_NAMES = ("float32", "bfloat16", "float16", "float64")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


def runs_on(ck: Checkpoint) -> Checkpoint:
    """The checkpoint whose weights are loaded to run ``ck``: itself, or for a PEFT adapter the base it
    names, opened from its headers (its τ is then added in place, :func:`load_causal_lm`)."""
    if ck.kind != "adapter":
        return ck
    from tunelens.checkpoints.adapter import adapter_base

    return adapter_base(ck)


def is_gguf(ck: Checkpoint) -> bool:
    return ck.origin.get("format") == "gguf"


def tokenizer_source(ck: Checkpoint) -> tuple[Path, dict[str, Any]] | None:
    """Where ``ck``'s tokenizer comes from, as ``AutoTokenizer.from_pretrained`` arguments: its folder's
    tokenizer files, a GGUF file's own vocabulary, or (an adapter saved without one) its base's."""
    if is_gguf(ck):
        return (ck.path.parent, {"gguf_file": ck.path.name}) if ck.origin.get("tokenizer") else None
    if any((ck.path / f).exists() for f in TOKENIZER_FILES):
        return ck.path, {}
    if ck.kind == "adapter":
        return tokenizer_source(runs_on(ck))
    return None


def load_tokenizer(source: tuple[Path, dict[str, Any]], *, quiet: bool = False) -> Any:
    """The tokenizer at ``source`` (:func:`tokenizer_source`): local files only, no remote code."""
    from transformers import AutoTokenizer

    folder, kwargs = source
    try:
        with transformers_output(quiet=quiet):
            return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise TunelensError(f"{folder}: cannot load its tokenizer ({str(exc).splitlines()[0]})") from exc


@contextmanager
def transformers_output(*, quiet: bool) -> Iterator[None]:
    """Inside: transformers' progress bars only on a TTY and never when ``quiet``; with ``quiet`` its
    log level is ERROR. Both are restored on exit (they are process-wide settings)."""
    from transformers.utils import logging as hf_logging

    from tunelens.jobs import show_progress

    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    if bars and not show_progress(quiet):
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    if quiet and level < logging.ERROR:
        hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars and not hf_logging.is_progress_bar_enabled():
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def load_causal_lm(ck: Checkpoint, *, dtype: str, device: str = "cpu", quiet: bool = False) -> torch.nn.Module:
    """The model of ``ck`` in ``dtype`` (one of :data:`DTYPE_NAMES`), eval mode, on ``device``.

    A PEFT adapter runs on the base it names: the base is loaded and the adapter's τ added in place
    (:func:`tunelens.arithmetic.inmemory.apply_in_place`, the values PEFT's ``merge_and_unload`` gives).
    A GGUF file goes through transformers' own GGUF loader, which de-quantizes every tensor to float32
    before casting to ``dtype`` (memory: 4 bytes per parameter while loading; the same values as the
    folder ``tunelens apply X.gguf -v X.gguf:0`` writes).
    """
    import torch
    from transformers import AutoModelForCausalLM

    from tunelens.config import ReadOptions, check_device

    if dtype not in DTYPE_NAMES:
        raise TunelensError(f"--dtype must be one of {', '.join(DTYPE_NAMES)}, got {dtype}")
    check_device(device)
    if ck.kind == "adapter":
        from tunelens.arithmetic.inmemory import apply_in_place

        base = runs_on(ck)
        model = load_causal_lm(base, dtype=dtype, device=device, quiet=quiet)
        apply_in_place(model, base, [(ck, 1.0)], options=ReadOptions(quiet=True))
        return model
    where = {"gguf_file": ck.path.name} if is_gguf(ck) else {"use_safetensors": True}
    folder = ck.path.parent if is_gguf(ck) else ck.path
    if ck.kind == "vector":
        raise TunelensError(f"{ck.path} is a tuning-vector folder, not a model (make one with tunelens apply)")
    if ck.pickle:
        raise TunelensError(f"{ck.path}: models run from safetensors only; this folder holds pickle weights")
    try:
        with transformers_output(quiet=quiet):
            loaded: Any = AutoModelForCausalLM.from_pretrained(
                str(folder),
                dtype=getattr(torch, dtype),
                trust_remote_code=False,
                local_files_only=True,
                output_loading_info=True,
                **where,
            )
    except (OSError, ValueError, KeyError) as exc:
        raise TunelensError(f"{ck.path}: transformers cannot load it ({str(exc).splitlines()[0]})") from exc
    model, info = loaded  # output_loading_info=True: (model, {"missing_keys": ..., ...})
    missing = sorted(info["missing_keys"])
    if missing:
        raise TunelensError(
            f"{ck.path}: {len(missing)} weight(s) the model needs are not in the checkpoint ({missing[0]}"
            f"{', ...' if len(missing) > 1 else ''}); transformers would initialise them at random"
        )
    model.eval()
    if device != "cpu":
        model = model.to(device)
    module: torch.nn.Module = model
    return module

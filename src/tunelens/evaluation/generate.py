"""Batched greedy decoding with stop sequences and a token budget (transformers ``generate``).

Prompts are tokenized with the tokenizer's default special tokens (none added when the text already
starts with the BOS token, e.g. from a chat template: lm-evaluation-harness's rule), sorted by length, left-padded
into batches, and decoded greedily (``do_sample=False``) until every row has produced an end token
(the model's ``eos_token_id`` list and the tokenizer's), a stop string, or ``max_new_tokens``
tokens. The text is then cut before the first stop string, as lm-evaluation-harness's
``generate_until`` cuts it. Prompts longer than the model's context are cut from the left to leave
room for ``max_new_tokens``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from tqdm import tqdm

from tunelens.evaluation.mcqa import model_max_length, tokenize

StopReason = Literal["stop", "eos", "length"]


@dataclass(frozen=True)
class Generated:
    text: str  # the output, cut before the first stop string
    new_tokens: int  # tokens the model generated for this row (end token included)
    stop_reason: StopReason


def end_token_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    for v in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        ids.extend(v if isinstance(v, list) else [] if v is None else [v])
    return list(dict.fromkeys(int(i) for i in ids))


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` before the earliest occurrence of any stop string, and whether one occurred."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


@torch.inference_mode()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    stop: Sequence[str] = (),
    max_new_tokens: int = 256,
    batch_size: int = 8,
    quiet: bool = False,
    desc: str = "generating",
) -> list[Generated]:
    """Greedy continuations of ``prompts`` (see the module docstring)."""
    from transformers import GenerationConfig

    ends = end_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (ends[0] if ends else 0)
    room = max(1, model_max_length(model, tokenizer) - max_new_tokens)
    encoded = [tokenize(tokenizer, p)[-room:] for p in prompts]
    config = GenerationConfig(  # type: ignore[no-untyped-call]
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=ends or None,
        pad_token_id=pad,
        stop_strings=[s for s in stop if s] or None,
    )
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    out: list[Generated | None] = [None] * len(prompts)
    bar = tqdm(total=len(prompts), desc=desc, disable=quiet or not sys.stderr.isatty(), leave=False)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            n = len(encoded[i])
            ids[row, width - n :] = torch.tensor(encoded[i])
            mask[row, width - n :] = 1
        seqs = model.generate(
            input_ids=ids.to(model.device),
            attention_mask=mask.to(model.device),
            generation_config=config,
            tokenizer=tokenizer if stop else None,
        ).cpu()
        for row, i in enumerate(chunk):
            new = seqs[row, width:].tolist()
            # rows that finished early are filled with ``pad`` (often an end token itself)
            end_at = next((j for j, t in enumerate(new) if t in ends or t == pad), None)
            kept = new if end_at is None else new[: end_at + 1]
            text = tokenizer.decode(new if end_at is None else new[:end_at], skip_special_tokens=True)
            text, stopped = cut_at_stop(text, stop)
            reason: StopReason = "stop" if stopped else ("eos" if end_at is not None else "length")
            out[i] = Generated(text=text, new_tokens=len(kept), stop_reason=reason)
        bar.update(len(chunk))
    bar.close()
    return [g for g in out if g is not None]

"""Held-out loss and perplexity of a causal LM on a list of documents (``kind: perplexity`` tasks).

The documents are tokenized without special tokens and concatenated, each followed by EOS; the
stream is cut into rows of ``seq_len`` tokens that overlap by one token (each row's first token is
the previous row's last target), no BOS; the first ``max_tokens`` next-token targets are scored.
Loss = Σ cross-entropy (nats) / targets, summed in float64; perplexity = exp(loss). The zoo's
held-out losses (zoo.json) use this same function.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from tunelens.evaluation.definitions import PERPLEXITY_DEFINITION as DEFINITION


@torch.inference_mode()
def heldout_nll(
    model: Any, tokenizer: Any, texts: list[str], *, seq_len: int, max_tokens: int, device: str = "cpu"
) -> dict[str, Any]:
    """``{"loss", "perplexity", "tokens", "documents", "definition"}`` of ``model`` on ``texts``."""
    if seq_len < 2 or max_tokens < 1:
        raise ValueError("seq_len must be >= 2 and max_tokens >= 1")
    stream: list[int] = []
    docs = 0
    for text in texts:
        if len(stream) > max_tokens:
            break
        stream += tokenizer(text, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            stream.append(int(tokenizer.eos_token_id))
        docs += 1
    model.eval()
    total = 0.0
    count = 0
    pos = 0
    while count < max_tokens and pos + 1 < len(stream):
        chunk = stream[pos : pos + seq_len]
        want = min(len(chunk) - 1, max_tokens - count)
        ids = torch.tensor([chunk[: want + 1]], dtype=torch.long, device=device)
        logits = model(input_ids=ids).logits[0, :-1]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
        total += float(nll.double().sum())
        count += want
        pos += seq_len - 1
    loss = total / max(1, count)
    return {
        "loss": loss,
        "perplexity": math.exp(loss) if count else math.nan,
        "tokens": count,
        "documents": docs,
        "definition": DEFINITION,
    }

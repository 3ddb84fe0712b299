"""Held-out loss and perplexity of a causal LM on a list of documents (``kind: perplexity`` tasks).

The documents are tokenized without special tokens and concatenated, each followed by EOS; the
stream is cut into rows of ``seq_len`` tokens that overlap by one token (each row's first token is
the previous row's last target), no BOS; the first ``max_tokens`` next-token targets are scored.
Loss = Σ cross-entropy (nats) / targets, summed in float64; perplexity = exp(loss). The zoo's
held-out losses (zoo.json) use this same function.

Each target token belongs to one document (a document's EOS to that document), so the summed loss
splits into per-document terms ``(tokens, nll)``; documents with no scored target are left out.
``loss = Σ nll / Σ tokens`` over them (the paired comparisons and bootstrap intervals use these terms).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from tunelens.evaluation.definitions import PERPLEXITY_DEFINITION as DEFINITION
from tunelens.evaluation.workers import SERIAL, Workers


@torch.inference_mode()
def heldout_nll(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    *,
    seq_len: int,
    max_tokens: int,
    device: str = "cpu",
    workers: Workers = SERIAL,
) -> dict[str, Any]:
    """``{"loss", "perplexity", "tokens", "documents", "per_document", "definition"}`` of ``model`` on ``texts``;
    ``per_document`` lists ``{"index", "tokens", "nll"}`` (float64) of every document with a scored target."""
    if seq_len < 2 or max_tokens < 1:
        raise ValueError("seq_len must be >= 2 and max_tokens >= 1")
    stream: list[int] = []
    doc_of: list[int] = []  # the document each stream position belongs to
    docs = 0
    for text in texts:
        if len(stream) > max_tokens:
            break
        stream += tokenizer(text, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            stream.append(int(tokenizer.eos_token_id))
        doc_of += [docs] * (len(stream) - len(doc_of))
        docs += 1
    doc_nll = torch.zeros(max(docs, 1), dtype=torch.float64)
    doc_tokens = torch.zeros(max(docs, 1), dtype=torch.long)
    model.eval()
    rows: list[tuple[int, int]] = []  # (start position, targets) of each row
    count = pos = 0
    while count < max_tokens and pos + 1 < len(stream):
        want = min(len(stream[pos : pos + seq_len]) - 1, max_tokens - count)
        rows.append((pos, want))
        count += want
        pos += seq_len - 1

    def row_nll(row: tuple[int, int]) -> torch.Tensor:
        start, want = row
        ids = torch.tensor([stream[start : start + want + 1]], dtype=torch.long, device=device)
        logits = model(input_ids=ids).logits[0, :-1]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        return torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none").double().cpu()

    total = 0.0
    for (start, want), nll in zip(rows, workers.map(row_nll, rows), strict=True):
        total += float(nll.sum())
        owner = torch.tensor(doc_of[start + 1 : start + 1 + want])
        doc_nll.index_add_(0, owner, nll)
        doc_tokens.index_add_(0, owner, torch.ones_like(owner))
    loss = total / max(1, count)
    return {
        "loss": loss,
        "perplexity": math.exp(loss) if count else math.nan,
        "tokens": count,
        "documents": docs,
        "per_document": [
            {"index": i, "tokens": int(doc_tokens[i]), "nll": float(doc_nll[i])}
            for i in range(docs)
            if doc_tokens[i] > 0
        ],
        "definition": DEFINITION,
    }

"""Batched greedy decoding with stop sequences and a token budget.

Prompts are tokenized with the tokenizer's default special tokens (none added when the text already
starts with the BOS token, e.g. from a chat template: lm-evaluation-harness's rule) and cut from the
left to leave room for ``max_new_tokens`` in the model's context. Decoding is greedy: each new token is
the argmax of the float32 (or wider) logits at the row's last position — no sampling, no penalties
(a model's ``generation_config`` sampling settings are not applied). A row stops at an end token (the
model's ``eos_token_id`` list, the tokenizer's, and the pad token), when a stop string is completed
(transformers' ``StopStringCriteria``, which also sees stop strings spanning token boundaries), or after
``max_new_tokens`` tokens; its text is the decoded tokens before the end token, cut before the first
stop string, as lm-evaluation-harness's ``generate_until`` cuts it.

These are the outputs of transformers' ``generate(do_sample=False, stop_strings=...)`` with
left-padded batches, computed with less work (tests compare the two):

- the token prefix shared by all prompts of a call (a system prompt, few-shot examples) is run once,
  and its KV cache copied into every batch;
- prompts are sorted by length and split into batches of at most ``batch_size`` (at least one batch per
  worker); a batch is prefilled in length buckets right-padded after the shared prefix, with explicit
  positions and an attention mask that hides the padding, then decoded as one batch;
- a row that has stopped leaves the batch (its cache rows are dropped), so finished rows cost nothing.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from tqdm import tqdm

from tunelens.evaluation.mcqa import cache_kwargs, length_buckets, model_max_length, tokenize
from tunelens.evaluation.workers import SERIAL, Workers

StopReason = Literal["stop", "eos", "length", "nonfinite"]
MIN_SHARED_PREFIX = 8  # tokens: a shorter common prefix is not worth a separate pass
PREFILL_ROWS = 8  # prompts per prefill forward (length-sorted, so little padding); decoded together afterwards


@dataclass(frozen=True)
class Generated:
    text: str  # the output, cut before the first stop string
    new_tokens: int  # tokens the model generated for this row (end token included)
    stop_reason: StopReason
    nonfinite: bool = False  # a logit of this row was NaN or infinite (the row stopped there)


def end_token_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    for v in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        ids.extend(v if isinstance(v, list) else [] if v is None else [v])
    return list(dict.fromkeys(int(i) for i in ids))


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` before the earliest occurrence of any stop string, and whether one occurred."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def shared_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix common to all rows, leaving every row at least one token of its own."""
    if not rows:
        return 0
    n = min(len(r) for r in rows) - 1
    first = rows[0]
    for i in range(max(n, 0)):
        if any(r[i] != first[i] for r in rows):
            return i
    return max(n, 0)


class _Decoder:
    """Greedy decoding of token rows that share ``prefix`` (see the module docstring)."""

    def __init__(self, model: Any, tokenizer: Any, prefix: list[int], stop: Sequence[str], max_new: int) -> None:
        self.model, self.tokenizer, self.max_new = model, tokenizer, max_new
        self.dev = model.device
        ends = end_token_ids(model, tokenizer)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (ends[0] if ends else 0)
        self.stop_ids = {*ends, self.pad}
        self.stop = [s for s in stop if s]
        self.criteria = None
        if self.stop:
            from transformers import StopStringCriteria

            self.criteria = StopStringCriteria(tokenizer=tokenizer, stop_strings=self.stop)
        self.prefix = prefix
        self.prefix_cache = None
        if prefix:
            out = model(input_ids=torch.tensor([prefix], device=self.dev), use_cache=True, logits_to_keep=1)
            self.prefix_cache = out.cache if cache_kwargs(model) == "cache" else out.past_key_values

    def _cache(self, rows: int) -> dict[str, Any]:
        """The cache argument of a batch's first forward: a copy of the prefix's, one per row (or none)."""
        if self.prefix_cache is None:
            return {}
        cache = copy.deepcopy(self.prefix_cache)
        cache.batch_repeat_interleave(rows)
        return {cache_kwargs(self.model): cache}

    def _stopped_by_string(self, seqs: list[list[int]]) -> list[bool]:
        if self.criteria is None:
            return [False] * len(seqs)
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s) :] = torch.tensor(s)
        return [bool(x) for x in self.criteria(ids, None)]

    def _prefill(self, suffixes: list[list[int]]) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """One forward of right-padded ``suffixes`` after the prefix: (cache, attention mask, last logits)."""
        n, width, start = len(suffixes), max(len(s) for s in suffixes), len(self.prefix)
        ids = torch.full((n, width), self.pad, dtype=torch.long)
        mask = torch.zeros((n, start + width), dtype=torch.long)
        mask[:, :start] = 1
        for i, s in enumerate(suffixes):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, start : start + len(s)] = 1
        pos = torch.arange(start, start + width).expand(n, width)
        last = torch.tensor([[len(s) - 1] for s in suffixes])
        out = self.model(input_ids=ids.to(self.dev), attention_mask=mask.to(self.dev), position_ids=pos.to(self.dev),
                         logits_to_keep=last.to(self.dev), use_cache=True, **self._cache(n))  # fmt: skip
        cache = out.cache if cache_kwargs(self.model) == "cache" else out.past_key_values
        return cache, mask, out.logits[:, -1, :]

    def batch(self, suffixes: list[list[int]]) -> list[tuple[list[int], StopReason]]:
        """Generated tokens and stop reason of each row (``prefix + suffix``): prefilled in length buckets of at most
        ``PREFILL_ROWS`` rows (little padding), decoded together when their caches can be merged."""
        groups = length_buckets(range(len(suffixes)), lambda i: len(suffixes[i]), PREFILL_ROWS)
        parts = [self._prefill([suffixes[i] for i in g]) for g in groups]
        merged = _merge(parts) if len(parts) > 1 else parts[0]
        runs = (
            [([r for g in groups for r in g], merged)] if merged is not None else list(zip(groups, parts, strict=True))
        )
        out: list[tuple[list[int], StopReason]] = [([], "length")] * len(suffixes)
        for rows, (cache, mask, logits) in runs:
            next_pos = torch.tensor([len(self.prefix) + len(suffixes[r]) for r in rows])
            seqs = [self.prefix + suffixes[r] for r in rows]
            for r, res in zip(rows, self._decode(cache, mask, logits, next_pos, seqs), strict=True):
                out[r] = res
        return out

    def _decode(
        self, cache: Any, mask: torch.Tensor, logits: torch.Tensor, next_pos: torch.Tensor, seqs: list[list[int]]
    ) -> list[tuple[list[int], StopReason]]:
        """Greedy steps until every row has stopped; a stopped row leaves the batch."""
        n = len(seqs)
        kw = cache_kwargs(self.model)
        active = list(range(n))  # original row of each batch row
        new: list[list[int]] = [[] for _ in range(n)]
        done: list[StopReason | None] = [None] * n
        for step in range(self.max_new):
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            finite = torch.isfinite(logits).all(dim=-1).tolist()
            tokens = logits.argmax(dim=-1).tolist()
            for b, row in enumerate(active):
                new[row].append(tokens[b])
                seqs[row].append(tokens[b])
            by_string = self._stopped_by_string([seqs[r] for r in active])
            keep = []
            for b, row in enumerate(active):
                if not finite[b]:
                    done[row] = "nonfinite"
                elif tokens[b] in self.stop_ids:
                    done[row] = "eos"
                elif by_string[b]:
                    done[row] = "stop"
                elif step + 1 == self.max_new:
                    done[row] = "length"
                else:
                    keep.append(b)
            if not keep:
                break
            if len(keep) < len(active):
                sel = torch.tensor(keep)
                cache.batch_select_indices(sel.to(self.dev))
                mask, next_pos = mask[sel], next_pos[sel]
                active = [active[b] for b in keep]
                tokens = [tokens[b] for b in keep]
            mask = torch.cat([mask, torch.ones((len(active), 1), dtype=torch.long)], dim=1)
            out = self.model(input_ids=torch.tensor(tokens, device=self.dev)[:, None], attention_mask=mask.to(self.dev),
                             position_ids=next_pos[:, None].to(self.dev), use_cache=True, **{kw: cache})  # fmt: skip
            next_pos = next_pos + 1
            logits = out.logits[:, -1, :]
        return [(new[r], done[r] or "length") for r in range(n)]


def _merge(parts: list[tuple[Any, torch.Tensor, torch.Tensor]]) -> tuple[Any, torch.Tensor, torch.Tensor] | None:
    """Several prefilled groups as one batch: caches concatenated along the batch, each padded along time to
    the longest (the padding masked out). Only for plain growing caches; None otherwise (decoded apart)."""
    from transformers.cache_utils import DynamicLayer

    caches = [c for c, _, _ in parts]
    if not all(type(layer) is DynamicLayer for c in caches for layer in getattr(c, "layers", [None])):
        return None
    width = max(m.shape[1] for _, m, _ in parts)
    first = caches[0]
    for i, layer in enumerate(first.layers):
        for attr in ("keys", "values"):
            tensors = [getattr(c.layers[i], attr) for c in caches]
            pads = [torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[-2])) for t in tensors]
            setattr(layer, attr, torch.cat(pads, dim=0))
    masks = [torch.nn.functional.pad(m, (0, width - m.shape[1])) for _, m, _ in parts]
    return first, torch.cat(masks, dim=0), torch.cat([lg for _, _, lg in parts], dim=0)


def _finish(tokenizer: Any, tokens: list[int], reason: StopReason, stop: Sequence[str], ends: set[int]) -> Generated:
    body = tokens[:-1] if reason == "eos" and tokens and tokens[-1] in ends else tokens
    text, stopped = cut_at_stop(tokenizer.decode(body, skip_special_tokens=True), stop)
    if stopped and reason != "nonfinite":
        reason = "stop"
    return Generated(text=text, new_tokens=len(tokens), stop_reason=reason, nonfinite=reason == "nonfinite")


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
    workers: Workers = SERIAL,
) -> list[Generated]:
    """Greedy continuations of ``prompts`` (see the module docstring); batches of ``batch_size`` prompts
    run on ``workers``."""
    if not prompts:
        return []
    room = max(1, model_max_length(model, tokenizer) - max_new_tokens)
    encoded = [tokenize(tokenizer, p)[-room:] for p in prompts]
    common = shared_prefix(encoded)
    common = common if common >= MIN_SHARED_PREFIX else 0
    decoder = _Decoder(model, tokenizer, encoded[0][:common], stop, max_new_tokens)
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    n_chunks = max(-(-len(order) // batch_size), min(workers.count, len(order)))  # every worker gets a batch
    size = -(-len(order) // n_chunks)
    chunks = [order[i : i + size] for i in range(0, len(order), size)]
    bar = tqdm(total=len(prompts), desc=desc, disable=quiet or not sys.stderr.isatty(), leave=False)

    def run(chunk: list[int]) -> list[tuple[list[int], StopReason]]:
        res = decoder.batch([encoded[i][common:] for i in chunk])
        bar.update(len(chunk))
        return res

    out: list[Generated | None] = [None] * len(prompts)
    for chunk, results in zip(chunks, workers.map(run, chunks), strict=True):
        for i, (tokens, reason) in zip(chunk, results, strict=True):
            out[i] = _finish(tokenizer, tokens, reason, stop, decoder.stop_ids)
    bar.close()
    return [g for g in out if g is not None]

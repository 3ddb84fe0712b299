"""Multiple choice by log-likelihood, scored as lm-evaluation-harness scores it.

For one question with context ``c`` and continuations ``x_i = target_delimiter + choice_i``:

- tokens: ``enc(c + x_i)`` split after ``len(enc(c))`` tokens, trailing spaces of ``c`` moved into
  ``x_i`` first, tokenizer's default special tokens (lm-eval ``TemplateLM._encode_pair``);
- ``ll_i = Σ_t log p(x_i,t | c, x_i,<t)`` (log-softmax in float32 — float64 for a float64 model —
  summed in float64);
- ``acc`` = 1[argmax_i ll_i = gold]; ``acc_norm`` = 1[argmax_i ll_i / len(choice_i) = gold] with
  ``len`` in characters of the choice string (without the delimiter); ``acc_bytes`` the same with
  ``len(choice_i.encode("utf-8"))``. These are lm-eval 0.4.13's definitions
  (``lm_eval/api/task.py``, ``ConfigurableTask.process_results``: ``completion_len =
  [len(i) for i in choices]``, ``byte_length = [len(i.encode("utf-8")) for i in choices]``);
  argmax takes the first maximum, as ``numpy.argmax`` does.

Speed: the contexts of ``batch_size`` questions (sorted by length) run once, in one right-padded
batch with a KV cache; the log-probability of every choice's first token is read from its context's
last position (for one-token choices, e.g. MMLU letters, that is all), and only that position is
projected onto the vocabulary (``logits_to_keep``). The other tokens of longer continuations run on
copies of their question's cache rows, in length-sorted groups, projecting only real positions.
Over-long inputs are cut from the left as lm-eval cuts them (``(ctx + cont)[-(max_len + 1):][:-1]``),
one choice at a time without a cache. Batches run on the given workers.
"""

from __future__ import annotations

import copy
import inspect
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from tunelens.errors import TunelensError
from tunelens.evaluation.workers import SERIAL, Workers


@dataclass(frozen=True)
class Question:
    context: str
    choices: list[str]  # choice strings (for the length normalisations)
    continuations: list[str]  # what is scored: target_delimiter + choice
    gold: int


@dataclass(frozen=True)
class Scored:
    loglikelihoods: list[float]
    is_greedy: list[bool]
    n_tokens: list[int]


def _argmax(values: Sequence[float]) -> int:
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


MC_METRICS = ("acc", "acc_norm", "acc_bytes", "gold_loglik", "gold_prob", "gold_margin")


def gold_scores(lls: Sequence[float], gold: int) -> dict[str, float]:
    """Continuous scores of the gold choice: its log-likelihood, its probability normalised over the choices
    (``exp(ll_gold − logsumexp ll)``) and its margin over the best wrong choice (float64)."""
    top = max(lls)
    log_total = top + math.log(math.fsum(math.exp(ll - top) for ll in lls))
    wrong = max(ll for i, ll in enumerate(lls) if i != gold)
    return {
        "gold_loglik": lls[gold],
        "gold_prob": math.exp(lls[gold] - log_total),
        "gold_margin": lls[gold] - wrong,
    }


def mc_scores(q: Question, s: Scored) -> dict[str, Any]:
    """Predictions, the 0/1 scores ``acc``, ``acc_norm``, ``acc_bytes`` and the continuous :func:`gold_scores`
    of one question."""
    lls = s.loglikelihoods
    pred = _argmax(lls)
    pred_norm = _argmax([ll / len(c) for ll, c in zip(lls, q.choices, strict=True)])
    pred_bytes = _argmax([ll / len(c.encode("utf-8")) for ll, c in zip(lls, q.choices, strict=True)])
    return {
        "pred": pred,
        "pred_norm": pred_norm,
        "pred_bytes": pred_bytes,
        "scores": {
            "acc": float(pred == q.gold),
            "acc_norm": float(pred_norm == q.gold),
            "acc_bytes": float(pred_bytes == q.gold),
            **gold_scores(lls, q.gold),
        },
    }


def model_max_length(model: Any, tokenizer: Any) -> int:
    """lm-eval HFLM's rule: the config's context size, else the tokenizer's, else 2048."""
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        v = getattr(model.config, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    v = getattr(tokenizer, "model_max_length", None)
    return v if isinstance(v, int) and 0 < v < 1_000_000_000 else 2048


def tokenize(tokenizer: Any, text: str) -> list[int]:
    """Token ids with the tokenizer's default special tokens, none added when ``text`` starts with BOS."""
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos):  # lm-eval: no second BOS when the text already has one
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode(text))


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) exactly as lm-eval's ``_encode_pair`` for causal models."""
    if not context:
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return [prefix], tokenize(tokenizer, continuation)
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = tokenize(tokenizer, context + continuation)
    ctx = tokenize(tokenizer, context)
    return ctx, whole[len(ctx) :]


def cache_kwargs(model: Any) -> str:
    """The forward argument that takes a KV cache: ``cache`` in transformers 5 (``past_key_values`` before,
    still accepted with a warning)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the vocabulary in float32 (float64 for a float64 model)."""
    return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


CONTINUATION_ROWS = 8  # continuation rows per forward (length-sorted, so little padding)
MAX_PADDING = 0.25  # a batch takes another (shorter) row only while padding stays under this share of its tokens


def length_buckets(items: Sequence[int], length: Callable[[int], int], max_rows: int) -> list[list[int]]:
    """``items`` sorted by decreasing ``length``, cut into batches of at most ``max_rows`` whose padding to their
    longest row stays under ``MAX_PADDING`` of the batch's tokens."""
    out: list[list[int]] = []
    for i in sorted(items, key=lambda i: -length(i)):
        cur = out[-1] if out else None
        if cur is not None and len(cur) < max_rows:
            real = sum(length(j) for j in cur) + length(i)
            if (len(cur) + 1) * length(cur[0]) - real <= MAX_PADDING * (len(cur) + 1) * length(cur[0]):
                cur.append(i)
                continue
        out.append([i])
    return out


def _score_batch(model: Any, batch: list[tuple[list[int], list[list[int]]]], pad: int, cont_rows: int) -> list[Scored]:
    """Questions ``(context ids, continuation ids)`` that fit the context window: one right-padded forward of the
    contexts with a KV cache (the first continuation token's log-probabilities come from each context's last
    position), then the continuations' other tokens in length-sorted groups of ``cont_rows`` rows, each on a
    copy of its questions' cache rows. Only real positions are projected onto the vocabulary."""
    dev = model.device
    kw = cache_kwargs(model)
    width = max(len(ctx) for ctx, _ in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    ctx_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for q, (ctx, _) in enumerate(batch):
        ids[q, : len(ctx)] = torch.tensor(ctx)
        ctx_mask[q, : len(ctx)] = 1
    last = torch.tensor([[len(ctx) - 1] for ctx, _ in batch])
    need_cache = any(len(c) > 1 for _, conts in batch for c in conts)
    out = model(input_ids=ids.to(dev), attention_mask=ctx_mask.to(dev), logits_to_keep=last.to(dev),
                use_cache=need_cache)  # fmt: skip
    first = _log_probs(out.logits[:, 0, :]).cpu()  # (questions, V)
    top = first.argmax(-1)
    lls = [[float(first[q, c[0]]) for c in conts] for q, (_, conts) in enumerate(batch)]
    greedy = [[int(top[q]) == c[0] for c in conts] for q, (_, conts) in enumerate(batch)]
    rows = [(q, i) for q, (_, conts) in enumerate(batch) for i, c in enumerate(conts) if len(c) > 1]
    cache = out.cache if kw == "cache" else out.past_key_values
    for idx in length_buckets(range(len(rows)), lambda r: len(batch[rows[r][0]][1][rows[r][1]]), cont_rows):
        group = [rows[r] for r in idx]
        conts = [batch[q][1][i] for q, i in group]
        span = max(len(c) for c in conts) - 1  # feed c[:-1]: position j predicts token j + 1
        part = copy.deepcopy(cache)
        part.batch_select_indices(torch.tensor([q for q, _ in group], device=dev))
        inp = torch.full((len(group), span), pad, dtype=torch.long)
        mask = torch.zeros((len(group), width + span), dtype=torch.long)
        keep = torch.zeros((len(group), span), dtype=torch.bool)
        pos = torch.zeros((len(group), span), dtype=torch.long)
        for r, ((q, _), c) in enumerate(zip(group, conts, strict=True)):
            inp[r, : len(c) - 1] = torch.tensor(c[:-1])
            mask[r, :width] = ctx_mask[q]
            mask[r, width : width + len(c) - 1] = 1
            keep[r, : len(c) - 1] = True
            pos[r] = torch.arange(len(batch[q][0]), len(batch[q][0]) + span)
        logits = model(input_ids=inp.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                       logits_to_keep=keep.to(dev), **{kw: part}).logits  # fmt: skip
        lp = _log_probs(logits.reshape(-1, logits.shape[-1])).cpu()  # (real positions, V), row-major
        at = 0
        for (q, i), c in zip(group, conts, strict=True):
            tgt = torch.tensor(c[1:])
            block = lp[at : at + len(c) - 1]
            at += len(c) - 1
            lls[q][i] += float(block.gather(1, tgt[:, None]).double().sum())
            greedy[q][i] = greedy[q][i] and bool((block.argmax(-1) == tgt).all())
    return [Scored(lls[q], greedy[q], [len(c) for c in conts]) for q, (_, conts) in enumerate(batch)]


def _score_full(model: Any, ctx: list[int], conts: list[list[int]], max_len: int) -> Scored:
    """lm-eval's plain path: one left-truncated (ctx + cont)[:-1] row per choice."""
    lls, greedy = [], []
    for c in conts:
        inp = (ctx + c)[-(max_len + 1) :][:-1]
        logits = model(input_ids=torch.tensor([inp], device=model.device)).logits[0, -len(c) :]
        lp = _log_probs(logits).cpu()
        tgt = torch.tensor(c)
        lls.append(float(lp.gather(1, tgt[:, None]).double().sum()))
        greedy.append(bool((lp.argmax(-1) == tgt).all()))
    return Scored(lls, greedy, [len(c) for c in conts])


@torch.inference_mode()
def score_questions(
    model: Any,
    tokenizer: Any,
    questions: Sequence[Question],
    *,
    batch_size: int = 8,
    quiet: bool = False,
    desc: str = "scoring",
    workers: Workers = SERIAL,
) -> list[Scored]:
    """Log-likelihood of every continuation of every question (see the module docstring); batches of one-token
    questions, and single questions with longer continuations, run on ``workers``."""
    max_len = model_max_length(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded: list[tuple[list[int], list[list[int]]]] = []
    for q in questions:
        pairs = [encode_pair(tokenizer, q.context, x) for x in q.continuations]
        ctx = pairs[0][0]
        conts = [c for _, c in pairs]
        if any(p[0] != ctx for p in pairs) or any(not c for c in conts):
            raise TunelensError(f"cannot split the choices of {q.context[-40:]!r} from their context into tokens")
        if any(len(c) > max_len for c in conts):
            raise TunelensError(f"a choice is longer than the model's context ({max_len} tokens)")
        encoded.append((ctx, conts))
    fits = [len(ctx) + max(len(c) for c in conts) <= max_len + 1 for ctx, conts in encoded]
    fitting = [i for i in range(len(encoded)) if fits[i]]
    units = length_buckets(fitting, lambda i: len(encoded[i][0]), batch_size)
    units += [[i] for i in range(len(encoded)) if not fits[i]]
    bar = tqdm(total=len(questions), desc=desc, disable=quiet or not sys.stderr.isatty(), leave=False)

    def run(unit: list[int]) -> list[Scored]:
        """A batch of questions that fit the context window, or one over-long question (lm-eval's plain path)."""
        if fits[unit[0]]:
            out = _score_batch(model, [encoded[i] for i in unit], pad, CONTINUATION_ROWS)
        else:
            out = [_score_full(model, *encoded[unit[0]], max_len)]
        bar.update(len(unit))
        return out

    results: list[Scored | None] = [None] * len(questions)
    for unit, scored in zip(units, workers.map(run, units), strict=True):
        for i, sc in zip(unit, scored, strict=True):
            results[i] = sc
    bar.close()
    return [r for r in results if r is not None]

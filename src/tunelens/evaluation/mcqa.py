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

Speed: when every continuation of a question is one token (MMLU letters), the context runs once and
the log-probabilities of all choices are read from its last position; contexts of several questions
run in one right-padded batch, and only the last position is projected onto the vocabulary
(``logits_to_keep``). With longer continuations the context runs once with a KV cache that the
continuations of all choices then share (prefix reuse). Over-long inputs are cut from the left as
lm-eval cuts them (``(ctx + cont)[-(max_len + 1):][:-1]``), without prefix reuse.
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Sequence
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


def _forward_last(model: Any, rows: list[list[int]], pad: int) -> torch.Tensor:
    """Log-probs (float32) at the last position of each row: [B, V]; rows right-padded."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    last = torch.tensor([[len(r) - 1] for r in rows])  # (B, 1)
    dev = model.device
    logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), logits_to_keep=last.to(dev)).logits
    return _log_probs(logits[:, 0, :]).cpu()  # (B, V)


def _score_shared_prefix(model: Any, ctx: list[int], conts: list[list[int]], pad: int) -> Scored:
    """One context pass with a KV cache, then all continuations on copies of that cache."""
    n, width = len(conts), max(len(c) for c in conts)
    dev = model.device
    out = model(input_ids=torch.tensor([ctx], device=dev), use_cache=True, logits_to_keep=1)
    first = _log_probs(out.logits[0, -1]).cpu()  # (V,)
    kw = cache_kwargs(model)
    lls = [float(first[c[0]]) for c in conts]
    greedy = [int(first.argmax()) == c[0] for c in conts]
    if width > 1:  # feed c[:-1] after the shared context: position j predicts token j + 1
        width -= 1
        cache = out.cache if kw == "cache" else out.past_key_values
        cache.batch_repeat_interleave(n)
        ids = torch.full((n, width), pad, dtype=torch.long)
        mask = torch.ones((n, len(ctx) + width), dtype=torch.long)
        keep = torch.zeros((n, width), dtype=torch.bool)  # real positions: only they are projected onto the vocabulary
        for i, c in enumerate(conts):
            ids[i, : len(c) - 1] = torch.tensor(c[:-1])
            mask[i, len(ctx) + len(c) - 1 :] = 0
            keep[i, : len(c) - 1] = True
        pos = torch.arange(len(ctx), len(ctx) + width).expand(n, width)
        logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                       logits_to_keep=keep.to(dev), **{kw: cache}).logits  # fmt: skip
        lp = _log_probs(logits.reshape(-1, logits.shape[-1])).cpu()  # (real positions, V), row-major
        at = 0
        for i, c in enumerate(conts):
            if len(c) > 1:
                tgt = torch.tensor(c[1:])
                rows = lp[at : at + len(c) - 1]
                at += len(c) - 1
                lls[i] += float(rows.gather(1, tgt[:, None]).double().sum())
                greedy[i] = greedy[i] and bool((rows.argmax(-1) == tgt).all())
    return Scored(lls, greedy, [len(c) for c in conts])


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
    single = [i for i, (_, cs) in enumerate(encoded) if all(len(c) == 1 for c in cs)]
    single.sort(key=lambda i: -len(encoded[i][0]))
    units: list[list[int]] = [single[s : s + batch_size] for s in range(0, len(single), batch_size)]
    units += [[i] for i in range(len(encoded)) if i not in set(single)]
    bar = tqdm(total=len(questions), desc=desc, disable=quiet or not sys.stderr.isatty(), leave=False)

    def run(unit: list[int]) -> list[Scored]:
        """A batch of one-token questions, or one question with longer continuations."""
        ctx, conts = encoded[unit[0]]
        if all(len(c) == 1 for c in conts):
            lp = _forward_last(model, [encoded[i][0][-max_len:] for i in unit], pad)
            top = lp.argmax(-1)
            out = []
            for row, i in enumerate(unit):
                toks = [c[0] for c in encoded[i][1]]
                out.append(
                    Scored([float(lp[row, t]) for t in toks], [int(top[row]) == t for t in toks], [1] * len(toks))
                )
        else:
            fits = len(ctx) + max(len(c) for c in conts) <= max_len + 1
            out = [_score_shared_prefix(model, ctx, conts, pad) if fits else _score_full(model, ctx, conts, max_len)]
        bar.update(len(unit))
        return out

    results: list[Scored | None] = [None] * len(questions)
    for unit, scored in zip(units, workers.map(run, units), strict=True):
        for i, sc in zip(unit, scored, strict=True):
            results[i] = sc
    bar.close()
    return [r for r in results if r is not None]

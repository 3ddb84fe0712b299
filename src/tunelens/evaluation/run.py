"""Evaluate one resident model on several tasks, under one or more *variants* of its weights.

A :class:`Variant` is a name and a context manager factory: inside ``variant.enter(model)`` the
model holds the variant's weights (e.g. ``base + Σ λ τ`` applied in memory), and they are restored
on exit. The model is loaded once; every (variant, task) pair is scored on the same footing, and
each scored item goes to ``sink`` (``samples.jsonl``) as soon as it is done.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from tunelens.evaluation import exact_match as em
from tunelens.evaluation import rouge
from tunelens.evaluation.format_checks import check
from tunelens.evaluation.generate import generate
from tunelens.evaluation.items import LimitMode, TaskRows, fewshot_for, load_rows
from tunelens.evaluation.mcqa import Question, mc_scores, score_questions
from tunelens.evaluation.metrics import summarize
from tunelens.evaluation.model import LoadedModel
from tunelens.evaluation.prompts import build_prompt, choice_strings, render, uses_chat
from tunelens.evaluation.tasks import TaskSpec

Sink = Callable[[dict[str, Any]], None]


@contextmanager
def _unchanged(model: Any) -> Iterator[Any]:
    yield model


@dataclass(frozen=True)
class Variant:
    """A named state of the resident model's weights (``enter(model)`` applies and restores it)."""

    name: str
    enter: Callable[[Any], AbstractContextManager[Any]] = _unchanged
    recipe: dict[str, Any] = field(default_factory=dict)


AS_LOADED = Variant("as_loaded", _unchanged, {"edit": None})


@dataclass(frozen=True)
class RunOptions:
    batch_size: int = 8
    limit: int | None = None
    limit_mode: LimitMode = "first"
    seed: int = 1234
    quiet: bool = False
    threads: int | None = None  # torch CPU threads while scoring (None: torch's default)


def _mcqa(lm: LoadedModel, task: TaskSpec, rows: TaskRows, opts: RunOptions) -> tuple[list[dict[str, Any]], int]:
    questions = []
    for row in rows.rows:
        choices = choice_strings(task, row)
        questions.append(
            Question(
                context=build_prompt(task, row, fewshot_for(task, row, rows.pool), lm.tokenizer),
                choices=choices,
                continuations=[task.target_delimiter + c for c in choices],
                gold=row["answer"],
            )
        )
    scored = score_questions(
        lm.model, lm.tokenizer, questions, batch_size=opts.batch_size, quiet=opts.quiet, desc=task.name
    )
    samples = []
    for row, q, s in zip(rows.rows, questions, scored, strict=True):
        samples.append(
            {
                "id": row["id"],
                "prompt": q.context,
                "continuations": q.continuations,
                "target": q.gold,
                "loglikelihoods": s.loglikelihoods,
                "is_greedy": s.is_greedy,
                "continuation_tokens": s.n_tokens,
                **mc_scores(q, s),
            }
        )
    return samples, 0


def _gold_answer(row: dict[str, Any]) -> str | None:
    answer = row.get("answer")
    if isinstance(answer, int) and isinstance(row.get("choices"), list):
        return chr(ord("A") + answer)
    return str(answer) if answer is not None else None


def _generation(lm: LoadedModel, task: TaskSpec, rows: TaskRows, opts: RunOptions) -> tuple[list[dict[str, Any]], int]:
    prompts = [build_prompt(task, row, fewshot_for(task, row, rows.pool), lm.tokenizer) for row in rows.rows]
    outs = generate(
        lm.model,
        lm.tokenizer,
        prompts,
        stop=task.stop,
        max_new_tokens=task.max_new_tokens,
        batch_size=opts.batch_size,
        quiet=opts.quiet,
        desc=task.name,
    )
    samples = []
    for row, prompt, g in zip(rows.rows, prompts, outs, strict=True):
        sample: dict[str, Any] = {"id": row["id"], "prompt": prompt, "output": g.text}
        if task.kind == "generate":
            assert task.reference is not None
            ref = str(row[task.reference])
            value = rouge.rouge1(g.text, ref) if task.metric == "rouge1" else em.exact_match(g.text, ref)
            scores: dict[str, float] = {str(task.metric): value}
            sample["reference"] = ref
        else:
            verdict = check(g.text, task.rules)
            scores = verdict.scores()
            gold = _gold_answer(row)
            if gold is not None:
                given = verdict.answer_text
                same = given is not None and em.normalize_number(given) == em.normalize_number(gold)
                scores["answer_acc"] = float(same)
            sample.update(reference=gold, answer_given=verdict.answer_text)
        sample.update(new_tokens=g.new_tokens, stop_reason=g.stop_reason, scores=scores)
        samples.append(sample)
    return samples, sum(g.new_tokens for g in outs)


def evaluate_task(
    lm: LoadedModel, task: TaskSpec, variant: Variant, opts: RunOptions, sink: Sink
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score ``task`` on ``lm`` as it is now; returns result rows and a timing record."""
    limit = None if task.kind == "perplexity" else opts.limit  # max_tokens bounds a perplexity task
    rows = load_rows(task, limit=limit, mode=opts.limit_mode, seed=opts.seed)
    torch.manual_seed(opts.seed)
    t0 = time.perf_counter()
    if task.kind == "perplexity":
        return _perplexity(lm, task, rows, variant, sink, t0)
    if task.kind == "multiple_choice":
        samples, new_tokens = _mcqa(lm, task, rows, opts)
    else:
        samples, new_tokens = _generation(lm, task, rows, opts)
    seconds = time.perf_counter() - t0
    per_metric: dict[str, list[float]] = {}
    for s in samples:
        for metric, v in s["scores"].items():
            per_metric.setdefault(metric, []).append(float(v))
        sink({"model": lm.name, "variant": variant.name, "task": task.name, **s})
    results = [
        {"model": lm.name, "variant": variant.name, "task": task.name, "metric": m, **summarize(vals)}
        for m, vals in per_metric.items()
    ]
    timing = {
        "variant": variant.name,
        "task": task.name,
        "items": len(samples),
        "selection": rows.selection,
        "seconds": round(seconds, 3),
        "items_per_second": len(samples) / seconds if seconds > 0 else None,
        "generated_tokens": new_tokens,
        "generated_tokens_per_second": new_tokens / seconds if new_tokens and seconds > 0 else None,
        "chat_template_applied": uses_chat(task, lm.tokenizer),
    }
    return results, timing


def _perplexity(
    lm: LoadedModel, task: TaskSpec, rows: TaskRows, variant: Variant, sink: Sink, t0: float
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Held-out loss and perplexity (:mod:`.perplexity`): one value over the whole token stream, so ``n``
    is the number of scored tokens and there is no per-item standard error."""
    from tunelens.evaluation.perplexity import heldout_nll

    texts = [render(task.prompt, row) for row in rows.rows]
    res = heldout_nll(lm.model, lm.tokenizer, texts, seq_len=task.seq_len, max_tokens=task.max_tokens, device=lm.device)
    seconds = time.perf_counter() - t0
    sink({"model": lm.name, "variant": variant.name, "task": task.name, **res})
    base = {"model": lm.name, "variant": variant.name, "task": task.name, "n": res["tokens"], "stderr": None}
    results = [
        {**base, "metric": "loss", "value": res["loss"]},
        {**base, "metric": "perplexity", "value": res["perplexity"]},
    ]
    timing = {
        "variant": variant.name, "task": task.name, "items": res["documents"], "selection": rows.selection,
        "seconds": round(seconds, 3), "items_per_second": res["documents"] / seconds if seconds > 0 else None,
        "generated_tokens": 0, "generated_tokens_per_second": None, "chat_template_applied": False,
        "scored_tokens": res["tokens"],
    }  # fmt: skip
    return results, timing


Extra = Callable[[LoadedModel, Variant], list[dict[str, Any]]]


def run_all(
    lm: LoadedModel,
    tasks: Sequence[TaskSpec],
    variants: Sequence[Variant],
    opts: RunOptions,
    sink: Sink,
    extra: Extra | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every task under every variant, the model resident throughout; ``extra(lm, variant)`` (e.g. the
    lm-eval adapter) runs inside each variant too."""
    results: list[dict[str, Any]] = []
    timings: list[dict[str, Any]] = []
    for variant in variants:
        with variant.enter(lm.model):
            for task in tasks:
                r, t = evaluate_task(lm, task, variant, opts, sink)
                results += r
                timings.append(t)
            if extra is not None:
                results += extra(lm, variant)
    return results, timings

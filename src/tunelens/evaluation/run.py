"""Evaluate one resident model on several tasks, under one or more *variants* of its weights.

A :class:`Variant` is a name and a context manager factory: inside ``variant.enter(model)`` the
model holds the variant's weights (e.g. ``base + Σ λ τ`` applied in memory), and they are restored
on exit. The model is loaded once; every (variant, task) pair is scored on the same footing, and
each scored item goes to ``sink`` (``samples.jsonl``) as soon as it is done.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from tunelens.errors import TunelensError
from tunelens.evaluation import exact_match as em
from tunelens.evaluation import rouge, stats
from tunelens.evaluation.format_checks import FOLLOW_METRICS, check
from tunelens.evaluation.generate import generate
from tunelens.evaluation.items import LimitMode, TaskRows, fewshot_for, load_rows
from tunelens.evaluation.mcqa import MC_METRICS, Question, mc_scores, score_questions
from tunelens.evaluation.metrics import score_row
from tunelens.evaluation.model import LoadedModel
from tunelens.evaluation.prompts import build_prompt, choice_strings, render, uses_chat
from tunelens.evaluation.stats import StatsOptions
from tunelens.evaluation.tasks import TaskSpec
from tunelens.evaluation.workers import SERIAL, Workers, plan, torch_threads

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
    allow_nonfinite: bool = False  # score items whose logits are not finite as null instead of stopping
    stats: StatsOptions = field(default_factory=StatsOptions)  # intervals and paired tests


def _nonfinite(lm: LoadedModel, task: TaskSpec, item: Any, opts: RunOptions) -> None:
    """Stop on non-finite logits unless the run allows them (then the item's scores are null)."""
    if not opts.allow_nonfinite:
        raise TunelensError(
            f"{lm.name}: non-finite logits on task {task.name}, item {item}; "
            "pass --allow-nonfinite to score such items as null"
        )


def _finite_or_none(values: Sequence[float]) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in values]


def _mcqa(
    lm: LoadedModel, task: TaskSpec, rows: TaskRows, opts: RunOptions, workers: Workers
) -> tuple[list[dict[str, Any]], int]:
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
        lm.model, lm.tokenizer, questions, batch_size=opts.batch_size, quiet=opts.quiet, desc=task.name, workers=workers
    )
    samples = []
    for row, q, s in zip(rows.rows, questions, scored, strict=True):
        finite = all(math.isfinite(x) for x in s.loglikelihoods)
        if not finite:
            _nonfinite(lm, task, row["id"], opts)
        scores = mc_scores(q, s) if finite else {"scores": dict.fromkeys(MC_METRICS)}
        samples.append(
            {
                "id": row["id"],
                "prompt": q.context,
                "continuations": q.continuations,
                "target": q.gold,
                "loglikelihoods": _finite_or_none(s.loglikelihoods),
                "is_greedy": s.is_greedy,
                "continuation_tokens": s.n_tokens,
                **scores,
                **({} if finite else {"nonfinite": True}),
            }
        )
    return samples, 0


def _gold_answer(row: dict[str, Any]) -> str | None:
    answer = row.get("answer")
    if isinstance(answer, int) and isinstance(row.get("choices"), list):
        return chr(ord("A") + answer)
    return str(answer) if answer is not None else None


def _generation(
    lm: LoadedModel, task: TaskSpec, rows: TaskRows, opts: RunOptions, workers: Workers
) -> tuple[list[dict[str, Any]], int]:
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
        workers=workers,
    )
    samples = []
    for row, prompt, g in zip(rows.rows, prompts, outs, strict=True):
        sample: dict[str, Any] = {"id": row["id"], "prompt": prompt, "output": g.text}
        if g.nonfinite:
            _nonfinite(lm, task, row["id"], opts)
            names = [str(task.metric)] if task.kind == "generate" else [*FOLLOW_METRICS, "answer_acc"]
            sample.update(new_tokens=g.new_tokens, stop_reason=g.stop_reason, nonfinite=True)
            samples.append({**sample, "scores": dict.fromkeys(names)})
            continue
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
    lm: LoadedModel, task: TaskSpec, variant: Variant, opts: RunOptions, sink: Sink, workers: Workers = SERIAL
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score ``task`` on ``lm`` as it is now; returns result rows and a timing record."""
    limit = None if task.kind == "perplexity" else opts.limit  # max_tokens bounds a perplexity task
    rows = load_rows(task, limit=limit, mode=opts.limit_mode, seed=opts.seed)
    torch.manual_seed(opts.seed)
    t0 = time.perf_counter()
    if task.kind == "perplexity":
        return _perplexity(lm, task, rows, variant, sink, opts, t0, workers)
    if task.kind == "multiple_choice":
        samples, new_tokens = _mcqa(lm, task, rows, opts, workers)
    else:
        samples, new_tokens = _generation(lm, task, rows, opts, workers)
    seconds = time.perf_counter() - t0
    per_metric: dict[str, list[float]] = {}
    nulls: dict[str, int] = {}
    for s in samples:
        for metric, v in s["scores"].items():
            per_metric.setdefault(metric, [])
            if v is None:
                nulls[metric] = nulls.get(metric, 0) + 1
            else:
                per_metric[metric].append(float(v))
        sink({"model": lm.name, "variant": variant.name, "task": task.name, **s})
    results = [
        {"model": lm.name, "variant": variant.name, "task": task.name, "metric": m,
         **score_row(m, vals, opts.stats), **({"null_items": nulls[m]} if m in nulls else {})}
        for m, vals in per_metric.items()
    ]  # fmt: skip
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
    lm: LoadedModel,
    task: TaskSpec,
    rows: TaskRows,
    variant: Variant,
    sink: Sink,
    opts: RunOptions,
    t0: float,
    workers: Workers,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Held-out loss and perplexity (:mod:`.perplexity`): one value over the whole token stream, so ``n``
    is the number of scored tokens and there is no per-item standard error; the interval resamples
    documents (one sample per document in samples.jsonl)."""
    from tunelens.evaluation.perplexity import heldout_nll

    texts = [render(task.prompt, row) for row in rows.rows]
    res = heldout_nll(lm.model, lm.tokenizer, texts, seq_len=task.seq_len, max_tokens=task.max_tokens, device=lm.device,
                      workers=workers)  # fmt: skip
    seconds = time.perf_counter() - t0
    docs = res["per_document"]
    finite = math.isfinite(res["loss"]) and all(math.isfinite(d["nll"]) for d in docs)
    if not finite:
        bad = next((rows.rows[d["index"]]["id"] for d in docs if not math.isfinite(d["nll"])), "?")
        _nonfinite(lm, task, bad, opts)
    for d in docs:
        nll = d["nll"] if math.isfinite(d["nll"]) else None
        loss_d = None if nll is None else nll / d["tokens"]
        sink({"model": lm.name, "variant": variant.name, "task": task.name, "id": rows.rows[d["index"]]["id"],
              "tokens": d["tokens"], "nll": nll, "scores": {"loss": loss_d}})  # fmt: skip
    lo, hi = stats.bootstrap_ci([d["nll"] for d in docs], [d["tokens"] for d in docs], opts.stats)
    loss = res["loss"] if finite else None
    base = {"model": lm.name, "variant": variant.name, "task": task.name, "n": res["tokens"], "stderr": None,
            "documents": len(docs)}  # fmt: skip
    results = [
        {**base, "metric": "loss", "value": loss, "ci_low": lo if finite else None, "ci_high": hi if finite else None},
        {**base, "metric": "perplexity", "value": math.exp(loss) if loss is not None else None,
         "ci_low": math.exp(lo) if finite and lo is not None else None,
         "ci_high": math.exp(hi) if finite and hi is not None else None},
    ]  # fmt: skip
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
            with torch_threads(plan(opts.threads, lm.device)) as workers:
                for task in tasks:
                    r, t = evaluate_task(lm, task, variant, opts, sink, workers)
                    results += r
                    timings.append({**t, "workers": workers.count, "intra_op_threads": workers.intra_op})
            if extra is not None:
                results += extra(lm, variant)
    return results, timings

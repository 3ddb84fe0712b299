"""``tunelens evaluate``: load once, score every task under every variant, write traceable outputs.

Outputs (DESIGN.md §3): ``results.json`` (run metadata, definitions, task configs, one row per
model × variant × task × metric with ``value``, ``n``, ``stderr``, and timing), ``results.csv``
(the same rows) and ``samples.jsonl`` (one line per scored item: prompt, output or
log-likelihoods, per-item scores).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from tunelens.checkpoints.output import atomic_dir, check_target
from tunelens.errors import TunelensError
from tunelens.evaluation.definitions import DEFINITIONS
from tunelens.evaluation.model import EvalDtype, LoadedModel, load_model
from tunelens.evaluation.run import AS_LOADED, Extra, RunOptions, Variant, run_all
from tunelens.evaluation.tasks import ChatMode, TaskSpec, resolve_task
from tunelens.provenance import RunClock
from tunelens.report.tables import write_csv, write_json

RESULT_COLUMNS = ("model", "variant", "task", "metric", "value", "n", "stderr")


@dataclass
class EvalResult:
    """The rows of results.json and, when no output folder was given, the samples in memory."""

    results: list[dict[str, Any]]
    summary: dict[str, Any]
    samples: list[dict[str, Any]] = field(default_factory=list)

    def value(self, task: str, metric: str, variant: str | None = None) -> float:
        for r in self.results:
            if r["task"] == task and r["metric"] == metric and (variant is None or r["variant"] == variant):
                return float(r["value"])
        raise KeyError((task, metric, variant))

    def to_pandas(self) -> Any:
        """Tidy pandas frames of this result, equal to ``tunelens.load`` of its output folder (``samples``
        only when they were kept in memory, i.e. without ``out``)."""
        from tunelens.frames import evaluate_results

        return evaluate_results(self.summary, samples=(lambda: self.samples) if self.samples else None)


def resolve_tasks(
    specs: Sequence[str | TaskSpec],
    *,
    data_dir: str | Path | None = None,
    num_fewshot: int | None = None,
    max_new_tokens: int | None = None,
    chat_template: ChatMode | None = None,
) -> list[TaskSpec]:
    tasks = []
    for spec in specs:
        task = spec if isinstance(spec, TaskSpec) else resolve_task(spec, data_dir=data_dir, num_fewshot=num_fewshot)
        if max_new_tokens is not None:
            task = replace(task, max_new_tokens=max_new_tokens)
        if chat_template is not None:
            task = replace(task, chat_template=chat_template)
        tasks.append(task)
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise TunelensError(f"task names must be unique, got {names}; name them with name=path")
    return tasks


def evaluate(
    model: str | Path | LoadedModel,
    tasks: Sequence[str | TaskSpec],
    *,
    out: str | Path | None = None,
    data_dir: str | Path | None = None,
    num_fewshot: int | None = None,
    max_new_tokens: int | None = None,
    chat_template: ChatMode | None = None,
    variants: Sequence[Variant] | None = None,
    options: RunOptions | None = None,
    dtype: EvalDtype = "float32",
    device: str = "cpu",
    force: bool = False,
    extra_results: Extra | None = None,
) -> EvalResult:
    """Score ``model`` on ``tasks`` (built-in names, task YAMLs, JSONL files or :class:`TaskSpec`).

    ``variants`` evaluates several weight states of the one resident model (default: as loaded).
    ``extra_results(lm, variant)`` may add result rows under each variant (the lm-eval adapter).
    """
    opts = options or RunOptions()
    if opts.limit is not None and opts.limit < 1:
        raise TunelensError("--limit must be at least 1")
    specs = resolve_tasks(
        tasks, data_dir=data_dir, num_fewshot=num_fewshot, max_new_tokens=max_new_tokens, chat_template=chat_template
    )
    if not specs and extra_results is None:
        raise TunelensError("give at least one --task")
    variants = list(variants or [AS_LOADED])
    if len({v.name for v in variants}) != len(variants):
        raise TunelensError("variant names must be unique")
    inputs = [getattr(model, "checkpoint", model), *(s.data for s in specs), *(s.fewshot_data for s in specs)]
    if out is not None:
        check_target(Path(out), force, inputs=inputs)
    clock = RunClock()
    lm = model if isinstance(model, LoadedModel) else load_model(model, dtype=dtype, device=device)
    samples: list[dict[str, Any]] = []
    with ExitStack() as stack:
        tmp = stack.enter_context(atomic_dir(Path(out), force=force, inputs=inputs)) if out is not None else None
        fh = stack.enter_context((tmp / "samples.jsonl").open("w", encoding="utf-8")) if tmp else None

        def sink(sample: dict[str, Any]) -> None:
            if fh is None:
                samples.append(sample)
            else:
                fh.write(json.dumps(sample, ensure_ascii=False) + "\n")

        threads_before = torch.get_num_threads()
        if opts.threads is not None:
            torch.set_num_threads(opts.threads)
        try:
            results, timings = run_all(lm, specs, variants, opts, sink, extra_results)
        finally:
            torch.set_num_threads(threads_before)
        summary = clock.metadata(
            [lm.describe()],
            definitions=DEFINITIONS,
            options={
                "batch_size": opts.batch_size,
                "limit": opts.limit,
                "limit_mode": opts.limit_mode,
                "seed": opts.seed,
                "torch_threads": opts.threads if opts.threads is not None else threads_before,
                "dtype": lm.dtype,
                "device": lm.device,
            },
            tasks={t.name: t.describe() for t in specs},
            variants=[{"name": v.name, **v.recipe} for v in variants],
            results=results,
            timing=timings,
        )
        if tmp is not None:
            write_json(tmp / "results.json", summary)
            write_csv(tmp / "results.csv", results, RESULT_COLUMNS)
    return EvalResult(results=results, summary=summary, samples=samples)

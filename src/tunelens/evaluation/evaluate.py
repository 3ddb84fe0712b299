"""``tunelens evaluate``: load once, score every task under every variant, write traceable outputs.

Outputs (DESIGN.md §3): ``results.json`` (run metadata, definitions, task configs, one row per
model × variant × task × metric with ``value``, ``n``, ``stderr``, ``ci_low``, ``ci_high``, and
timing), ``results.csv`` (the same rows) and ``samples.jsonl`` (one line per scored item: prompt,
output or log-likelihoods, per-item scores). With more than one variant, each variant is compared
with the first on the same items (:mod:`.compare`): ``comparisons.csv`` and ``comparisons`` in
results.json.
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
from tunelens.evaluation.compare import COMPARISON_COLUMNS, Scores, compare_all
from tunelens.evaluation.compare import definitions as compare_definitions
from tunelens.evaluation.definitions import DEFINITIONS, interval_definitions
from tunelens.evaluation.items import load_rows
from tunelens.evaluation.model import EvalDtype, LoadedModel, load_model
from tunelens.evaluation.prompts import check_templates
from tunelens.evaluation.run import AS_LOADED, Extra, RunOptions, Variant, run_all
from tunelens.evaluation.stats import StatsOptions
from tunelens.evaluation.tasks import ChatMode, TaskSpec, resolve_task
from tunelens.provenance import RunClock
from tunelens.records import write_csv, write_json

RESULT_COLUMNS = ("model", "variant", "task", "metric", "value", "n", "stderr", "ci_low", "ci_high")


@dataclass
class EvalResult:
    """The rows of results.json and, when no output folder was given, the samples in memory."""

    results: list[dict[str, Any]]
    summary: dict[str, Any]
    samples: list[dict[str, Any]] = field(default_factory=list)
    comparisons: list[dict[str, Any]] = field(default_factory=list)

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
    preflight(specs, opts)
    clock = RunClock()
    lm = model if isinstance(model, LoadedModel) else load_model(model, dtype=dtype, device=device)
    samples: list[dict[str, Any]] = []
    scores: dict[tuple[str, str], Scores] = {}
    with ExitStack() as stack:
        tmp = stack.enter_context(atomic_dir(Path(out), force=force, inputs=inputs)) if out is not None else None
        fh = stack.enter_context((tmp / "samples.jsonl").open("w", encoding="utf-8")) if tmp else None

        def sink(sample: dict[str, Any]) -> None:
            key = (str(sample["variant"]), str(sample["task"]))
            scores.setdefault(key, Scores(key[0], key[1])).add(sample)
            if fh is None:
                samples.append(sample)
            else:
                fh.write(json.dumps(sample, ensure_ascii=False, allow_nan=False) + "\n")

        threads_before = torch.get_num_threads()
        results, timings = run_all(lm, specs, variants, opts, sink, extra_results)
        comparisons = _compare_variants(variants, specs, scores, opts.stats)
        definitions = {**DEFINITIONS, **interval_definitions(opts.stats)}
        if comparisons:
            definitions["comparisons"] = compare_definitions(opts.stats)
        summary = clock.metadata(
            [lm.describe()],
            definitions=definitions,
            options={
                "batch_size": opts.batch_size,
                "limit": opts.limit,
                "limit_mode": opts.limit_mode,
                "seed": opts.seed,
                "torch_threads": opts.threads if opts.threads is not None else threads_before,
                "workers": timings[0].get("workers") if timings else None,
                "allow_nonfinite": opts.allow_nonfinite,
                "statistics": opts.stats.describe(),
                "dtype": lm.dtype,
                "device": lm.device,
            },
            tasks={t.name: describe_task(t) for t in specs},
            variants=[{"name": v.name, **v.recipe} for v in variants],
            results=results,
            timing=timings,
            **({"comparisons": comparisons} if comparisons else {}),
        )
        if tmp is not None:
            write_json(tmp / "results.json", summary)
            write_csv(tmp / "results.csv", results, RESULT_COLUMNS)
            if comparisons:
                write_csv(tmp / "comparisons.csv", comparisons, COMPARISON_COLUMNS)
    return EvalResult(results=results, summary=summary, samples=samples, comparisons=comparisons)


def _compare_variants(
    variants: Sequence[Variant], specs: Sequence[TaskSpec], scores: dict[tuple[str, str], Scores], opts: StatsOptions
) -> list[dict[str, Any]]:
    """Each variant against the first, task by task, on the items both scored (Holm over all rows)."""
    if len(variants) < 2:
        return []
    first = variants[0].name
    pairs = [(scores[(first, t.name)], scores[(v.name, t.name)]) for v in variants[1:] for t in specs
             if (first, t.name) in scores and (v.name, t.name) in scores]  # fmt: skip
    return compare_all(pairs, opts)


def describe_task(task: TaskSpec) -> dict[str, Any]:
    """The task's definition with the sha256 of its data files (what ``tunelens compare`` checks)."""
    out = task.describe()
    out["data_sha256"] = _sha256(task.data)
    out["fewshot_sha256"] = _sha256(task.fewshot_data) if task.num_fewshot and task.fewshot_data else None
    return out


def _sha256(path: Path) -> str:
    import hashlib

    with Path(path).open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def preflight(specs: Sequence[TaskSpec], opts: RunOptions) -> None:
    """Read every task's rows and render every template on them, so that a bad row, field or template stops
    the run with one line before a model is loaded."""
    for task in specs:
        rows = load_rows(task, limit=None if task.kind == "perplexity" else opts.limit, mode=opts.limit_mode,
                         seed=opts.seed)  # fmt: skip
        check_templates(task, rows.rows, rows.pool)

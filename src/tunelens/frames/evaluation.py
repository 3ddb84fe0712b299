"""Frames of ``evaluate`` (results.json, samples.jsonl, comparisons.csv) and ``compare`` (comparisons.csv).

- ``results``: one row per model × variant × task × metric: ``value``, ``n``, ``stderr`` and, where the run
  wrote them, ``ci_low`` / ``ci_high`` (results.json's rows, the same as results.csv's);
- ``comparisons``: one row per paired comparison (DESIGN.md §6 columns: ``task, metric, a, b, n, mean_a,
  mean_b, diff, ci_low, ci_high, p_value, p_adjusted, test, a_only, b_only``), where the run has them;
- ``samples``: one row per model × variant × task × item × metric: the item's ``score`` (samples.jsonl's
  ``scores``; read on first access);
- ``tasks``: one row per task: its configuration (kind, data file, few-shot, template source...);
- ``timing``: one row per variant × task: items, seconds, items per second.

In a study, every frame gains a ``run`` column: the ``evaluate/<run>`` folder it came from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from tunelens.frames.results import Results
from tunelens.frames.tidy import frame, read_csv, read_json, read_jsonl, scalars

RESULT_KEYS = ("model", "variant", "task", "metric", "value", "n", "stderr", "ci_low", "ci_high")
COMPARISON_COLUMNS = (
    "task", "metric", "a", "b", "n", "mean_a", "mean_b", "diff", "ci_low", "ci_high", "p_value", "p_adjusted",
    "test", "a_only", "b_only",
)  # fmt: skip
SAMPLE_KEYS = ("model", "variant", "task", "id")


def _results(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    rows = list(rows)
    present = [k for k in RESULT_KEYS if any(k in r for r in rows)]
    return frame(rows, present)


def sample_scores(samples: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Long per-item scores: one row per sample × metric of its ``scores`` (samples without scores skipped)."""
    rows = []
    for s in samples:
        for metric, score in (s.get("scores") or {}).items():
            rows.append({**{k: s.get(k) for k in SAMPLE_KEYS}, "metric": metric, "score": score})
    return frame(rows, [*SAMPLE_KEYS, "metric", "score"])


def _tasks(summary: Mapping[str, Any]) -> pd.DataFrame:
    rows = [{"task": name, **{k: v for k, v in scalars(d).items() if k != "name"}}
            for name, d in (summary.get("tasks") or {}).items()]  # fmt: skip
    return frame(rows, ["task"])


def evaluate_results(
    summary: Mapping[str, Any],
    *,
    samples: Callable[[], Iterable[Mapping[str, Any]]] | None = None,
    comparisons: Callable[[], pd.DataFrame] | None = None,
    path: Path | None = None,
) -> Results:
    """The frames of one ``evaluate`` run: ``summary`` is results.json; ``samples`` yields its samples
    (no ``samples`` frame without it)."""
    builders: dict[str, Callable[[], pd.DataFrame]] = {
        "results": lambda: _results(summary.get("results", [])),
        "tasks": lambda: _tasks(summary),
        "timing": lambda: frame(summary.get("timing", [])),
    }
    if samples is not None:
        builders["samples"] = lambda: sample_scores(samples())
    if summary.get("comparisons") is not None:
        builders["comparisons"] = lambda: frame(summary["comparisons"], COMPARISON_COLUMNS)
    elif comparisons is not None:
        builders["comparisons"] = comparisons
    return Results("evaluate", summary, builders, path=path)


def load_evaluate(folder: Path) -> Results:
    comparisons = folder / "comparisons.csv"
    return evaluate_results(
        read_json(folder / "results.json"),
        samples=(lambda: read_jsonl(folder / "samples.jsonl")) if (folder / "samples.jsonl").exists() else None,
        comparisons=(lambda: read_csv(comparisons)) if comparisons.exists() else None,
        path=folder,
    )


def load_compare(folder: Path) -> Results:
    meta: dict[str, Any] = {}
    for name in ("comparisons.json", "summary.json"):
        if (folder / name).exists():
            meta = read_json(folder / name)
            break
    return Results("compare", meta, {"comparisons": lambda: read_csv(folder / "comparisons.csv")}, path=folder)


def _with_run(run: str, df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out.insert(0, "run", pd.Series([run] * len(df), dtype="str", index=df.index))
    return out


def merge_runs(runs: Mapping[str, Results], *, path: Path | None = None) -> Results:
    """Several evaluate runs (a study's ``evaluate/<run>`` folders) as one: every frame gains ``run``."""
    names = list(dict.fromkeys(n for r in runs.values() for n in r.frames))

    def build(name: str) -> Callable[[], pd.DataFrame]:
        def concat() -> pd.DataFrame:
            parts = [_with_run(run, r.frame(name)) for run, r in runs.items() if name in r.frames]
            return pd.concat(parts, ignore_index=True) if parts else frame([])

        return concat

    meta = {"runs": {run: r.meta for run, r in runs.items()}}
    return Results("evaluate", meta, {n: build(n) for n in names}, path=path, parts=dict(runs))

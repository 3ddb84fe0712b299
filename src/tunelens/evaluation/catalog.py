"""The built-in tasks as a catalogue: kind, metrics, item counts and where their data comes from.

``tunelens tasks`` prints it. Item counts are the rows ``evaluate`` would score (every non-empty JSONL
line); the dataset, repository, commit and licence are named only when the data file is byte for byte
the bundled copy (its sha256 equals the one in ``tunelens/data/benchmarks/sources.json``), so a
``--data-dir`` of other files is never credited to a source it may not come from.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from tunelens.data import benchmark_sources, benchmarks_dir
from tunelens.errors import TunelensError
from tunelens.evaluation.format_checks import check
from tunelens.evaluation.items import read_jsonl
from tunelens.evaluation.mcqa import Question, Scored, mc_scores
from tunelens.evaluation.tasks import TaskSpec, builtin_names, data_root, resolve_task


def task_metrics(task: TaskSpec) -> list[str]:
    """The metric names ``evaluate`` reports for ``task``, asked of the scoring functions themselves."""
    if task.kind == "multiple_choice":
        probe = mc_scores(Question("", ["a", "b"], [" a", " b"], 0), Scored([0.0, -1.0], [True, False], [1, 1]))
        return list(probe["scores"])
    if task.kind == "format":
        return [*check("", task.rules).scores(), "answer_acc"]  # answer_acc: rows with a gold answer (all built-ins)
    if task.kind == "perplexity":
        return ["loss", "perplexity"]
    return [str(task.metric)]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _bundled_files() -> dict[str, tuple[str, dict[str, Any]]]:
    """sha256 → (folder, dataset record) for every bundled file."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for folder, rec in benchmark_sources()["datasets"].items():
        for meta in rec["files"].values():
            out[meta["sha256"]] = (folder, rec)
    return out


def builtin_tasks(data_dir: str | Path | None = None) -> dict[str, Any]:
    """Every built-in task with its kind, metrics, items, few-shot pool and data source.

    Returns ``{"data_root", "bundled", "tasks": [...]}``; a task whose data is missing from ``data_dir``
    is listed with ``error`` set and no counts.
    """
    root = data_root(data_dir)
    known = _bundled_files()
    tasks: list[dict[str, Any]] = []
    for name in builtin_names():
        try:
            task = resolve_task(name, data_dir=root)
        except TunelensError as exc:
            tasks.append({"name": name, "error": str(exc)})
            continue
        sha = _sha256(task.data)
        folder, rec = known.get(sha, ("", {}))
        pool = task.fewshot_data
        tasks.append(
            {
                "name": name,
                "kind": task.kind,
                "metrics": task_metrics(task),
                "items": len(read_jsonl(task.data)),
                "data": str(task.data.relative_to(root)),
                "sha256": sha,
                "num_fewshot": task.num_fewshot,
                "fewshot_items": len(read_jsonl(pool)) if pool is not None and pool.is_file() else None,
                "dataset": rec.get("dataset"),
                "repository": rec.get("repository"),
                "commit": rec.get("commit"),
                "licence": rec.get("licence"),
                "provenance": f"{folder}/README.md" if folder else None,
            }
        )
    return {"data_root": str(root), "bundled": root == benchmarks_dir(), "tasks": tasks}

"""Rows of a task: read and check a JSONL file, take a ``--limit``, pick few-shot examples."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tunelens.errors import TunelensError
from tunelens.evaluation.tasks import TaskSpec

LimitMode = Literal["first", "random"]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every non-empty line of ``path`` as a JSON object (one clear error for a bad line)."""
    rows: list[dict[str, Any]] = []
    try:
        with Path(path).open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise TunelensError(f"{path}:{lineno}: not valid JSON ({exc})") from exc
                if not isinstance(row, dict):
                    raise TunelensError(f"{path}:{lineno}: each line must be a JSON object")
                if "_header" in row:  # a tunelens corpus file's metadata line, not an item
                    continue
                row.setdefault("id", f"{Path(path).name}:{lineno}")
                rows.append(row)
    except OSError as exc:
        raise TunelensError(f"cannot read {path}: {exc.strerror}") from exc
    if not rows:
        raise TunelensError(f"{path}: no rows")
    return rows


def validate(task: TaskSpec, rows: list[dict[str, Any]], path: Path) -> None:
    """Check the fields a task needs, naming the first bad row."""
    for row in rows:
        where = f"{path} row {row['id']}"
        if task.kind == "multiple_choice":
            choices = row.get("choices")
            if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
                raise TunelensError(f"{where}: `choices` must be a list of at least two strings")
            answer = row.get("answer")
            if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
                raise TunelensError(f"{where}: `answer` must be an index into `choices`")
            if task.choices == "letters" and len(choices) > 26:
                raise TunelensError(f"{where}: more than 26 choices cannot be lettered")
        if task.kind == "generate" and task.reference is not None and not isinstance(row.get(task.reference), str):
            raise TunelensError(f"{where}: the reference field `{task.reference}` must be a string")


@dataclass(frozen=True)
class TaskRows:
    """The rows evaluated (after ``limit``) and the few-shot pool, with how they were chosen."""

    rows: list[dict[str, Any]]
    pool: list[dict[str, Any]]
    total: int  # rows in the file before ``limit``
    selection: str  # how ``rows`` were chosen, for results.json


def load_rows(task: TaskSpec, *, limit: int | None = None, mode: LimitMode = "first", seed: int = 1234) -> TaskRows:
    rows = read_jsonl(task.data)
    validate(task, rows, task.data)
    total = len(rows)
    selection = f"all {total} rows in file order"
    if limit is not None and limit < total:
        if mode == "random":
            idx = sorted(random.Random(seed).sample(range(total), limit))
            rows = [rows[i] for i in idx]
            selection = f"{limit} of {total} rows drawn at random (seed {seed}), kept in file order"
        else:
            rows = rows[:limit]
            selection = f"first {limit} of {total} rows in file order"
    pool: list[dict[str, Any]] = []
    if task.num_fewshot and task.fewshot_data is not None:
        pool = read_jsonl(task.fewshot_data)
        validate(task, pool, task.fewshot_data)
    return TaskRows(rows=rows, pool=pool, total=total, selection=selection)


def fewshot_for(task: TaskSpec, row: dict[str, Any], pool: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first ``num_fewshot`` pool rows (sharing ``fewshot_match`` with ``row``), never ``row`` itself.

    This is lm-evaluation-harness's ``first_n`` sampler on a per-subject split.
    """
    if not task.num_fewshot:
        return []
    key = task.fewshot_match
    if key is not None and key not in row:
        raise TunelensError(f"task {task.name}: row {row['id']} has no field `{key}` to match few-shot examples on")
    cands = [r for r in pool if r["id"] != row["id"] and (key is None or r.get(key) == row[key])]
    if len(cands) < task.num_fewshot:
        what = f" with {key}={row[key]!r}" if key else ""
        raise TunelensError(
            f"task {task.name}: {task.num_fewshot}-shot needs {task.num_fewshot} few-shot rows{what}, "
            f"the pool has {len(cands)}"
        )
    return cands[: task.num_fewshot]

"""Prompt text of one row: description, few-shot examples, the question; chat template if asked.

Plain text is built the way lm-evaluation-harness 0.4 builds it (``Task.fewshot_context`` with no
chat template)::

    description + Σ_shots (prompt(shot) + target_delimiter + answer(shot) + fewshot_delimiter) + prompt(row)

and a multiple-choice continuation is ``target_delimiter + choice``. With a chat template the
description (format tasks: the system prompt) is the system message and the rest one user message,
followed by the template's generation prompt.
"""

from __future__ import annotations

import string
from functools import cache
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tunelens.errors import TunelensError
from tunelens.evaluation.tasks import TaskSpec


@cache
def _env() -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def render(template: str, row: dict[str, Any], **extra: Any) -> str:
    """Render a Jinja2 template against a row (sandboxed; an unknown field is an error)."""
    try:
        return str(_env().from_string(template).render(**row, **extra))
    except jinja2.TemplateError as exc:
        raise TunelensError(f"template {template[:40]!r}... on row {row.get('id')}: {exc}") from exc


def choice_strings(task: TaskSpec, row: dict[str, Any]) -> list[str]:
    """What is scored after the prompt: letters A, B, ... or the row's choice texts."""
    choices: list[str] = row["choices"]
    if task.choices == "letters":
        return list(string.ascii_uppercase[: len(choices)])
    return list(choices)


def answer_text(task: TaskSpec, row: dict[str, Any]) -> str:
    """The gold answer as written after a few-shot example."""
    if task.kind == "multiple_choice":
        return choice_strings(task, row)[int(row["answer"])]
    if task.fewshot_target is not None:
        return render(task.fewshot_target, row)
    if task.reference is None:
        raise TunelensError(f"task {task.name}: few-shot examples need `fewshot_target` or `reference`")
    return str(row[task.reference])


def uses_chat(task: TaskSpec, tokenizer: Any) -> bool:
    has = bool(getattr(tokenizer, "chat_template", None))
    if task.chat_template == "on" and not has:
        raise TunelensError(f"task {task.name}: chat_template is on but the tokenizer has no chat template")
    return task.chat_template == "on" or (task.chat_template == "auto" and has)


def build_prompt(task: TaskSpec, row: dict[str, Any], shots: list[dict[str, Any]], tokenizer: Any) -> str:
    """The full context string for ``row`` (what the model sees before its answer)."""
    system = render(task.description, row) if task.description else ""
    if task.kind == "format":
        assert task.system is not None
        rules = task.rules
        system = render(
            task.system,
            row,
            open_tag=rules.open_tag,
            close_tag=rules.close_tag,
            answer_format=rules.answer_format,
        )
    turns = [
        render(task.prompt, s) + task.target_delimiter + answer_text(task, s) + task.fewshot_delimiter for s in shots
    ]
    user = "".join(turns) + render(task.prompt, row)
    if not uses_chat(task, tokenizer):
        if task.kind == "format":
            return f"{system}\n\n{user}\n"
        return system + user
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    try:
        out = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except jinja2.TemplateError:
        # templates without a system role (e.g. Gemma): the system text opens the user turn
        merged = [{"role": "user", "content": f"{system}\n\n{user}" if system else user}]
        out = tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
    return str(out)


def check_templates(task: TaskSpec, rows: list[dict[str, Any]], pool: list[dict[str, Any]]) -> None:
    """Render every template of ``task`` on every row (and its few-shot examples) without a tokenizer: what
    :func:`build_prompt` renders before any chat template, so template and field errors surface early."""
    from tunelens.evaluation.items import fewshot_for

    for row in rows:
        if task.description:
            render(task.description, row)
        if task.kind == "format":
            assert task.system is not None
            r = task.rules
            render(task.system, row, open_tag=r.open_tag, close_tag=r.close_tag, answer_format=r.answer_format)
        for shot in fewshot_for(task, row, pool):
            render(task.prompt, shot)
            answer_text(task, shot)
        render(task.prompt, row)
        if task.kind == "multiple_choice":
            choice_strings(task, row)

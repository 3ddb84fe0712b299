"""Evaluation tasks from the held-out items, as task files of ``tunelens evaluate``, and the medical
instruction format the medical fine-tune is trained on.

Tasks (every row comes from held-out items only; distractors too):

- ``hpo_term`` (medical, multiple choice by log-likelihood): ``Definition: <definition>\\nTerm:`` →
  the HPO term name among 4 (the right one and 3 other held-out terms).
- ``format_hpo`` (medical, instruction following): the same questions as lettered choices under the
  three-rule system prompt of the built-in ``format_medical`` task (same tags and answer format); the
  chat template is used. Scores ``follow_tags``, ``follow_answer``, ``follow_stop``, ``follow_all`` and
  ``answer_acc``. The medical fine-tune is trained on exactly this prompt with training-split terms.
- ``champ_step`` (math, multiple choice): a held-out CHAMP problem and its first k solution steps →
  step k+1 among 4 (3 steps of other held-out problems).
- ``champ_answer`` (math, multiple choice): problem → its answer among 4 (answers of other held-out
  problems, same category first).
- ``code_line`` (code, multiple choice): the first k lines of a held-out standard-library
  function → line k+1 among 4 (3 lines of other held-out definitions, re-indented like the gold line).

Rows are drawn with ``random.Random(seed)``; when there are more candidate rows than ``eval_items``
the first ``eval_items`` of a seeded shuffle are kept and the task file says so.
"""

from __future__ import annotations

import json
import random
import string
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tunelens.evaluation.format_checks import FormatRules
from tunelens.evaluation.prompts import render
from tunelens.zoo.data import Item

N_CHOICES = 4
LETTERS = string.ascii_uppercase
MEDICAL_QUESTION = (
    "Which Human Phenotype Ontology term has this definition?\n{{ definition }}"
    '{% for c in choices %}\n{{ "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[loop.index0] }}. {{ c }}{% endfor %}'
)
MEDICAL_REASONING = "The definition describes {term}, which is option {letter}."


def format_medical() -> dict[str, Any]:
    """The packaged ``format_medical`` task definition (system prompt template and rules)."""
    text = resources.files("tunelens.evaluation").joinpath("tasks", "format_medical.yaml").read_text()
    raw = yaml.safe_load(text)
    assert isinstance(raw, dict)
    return raw


def system_prompt() -> tuple[str, FormatRules]:
    """The three-rule system prompt exactly as the evaluation renders it for ``format_medical``."""
    raw = format_medical()
    rules = FormatRules(**raw["rules"])
    text = render(
        raw["system"], {}, open_tag=rules.open_tag, close_tag=rules.close_tag, answer_format=rules.answer_format
    )
    return text, rules


def medical_rows(items: list[Item], rng: random.Random, prefix: str = "") -> list[dict[str, Any]]:
    """One lettered 4-way question per item; distractors are other items' term names."""
    names = sorted({it.fields["term"] for it in items})
    rows = []
    for it in items:
        term = it.fields["term"]
        others = rng.sample([n for n in names if n != term], N_CHOICES - 1)
        answer = rng.randrange(N_CHOICES)
        choices = [*others[:answer], term, *others[answer:]]
        rows.append(
            {
                "id": prefix + it.id,
                "definition": it.fields["definition"],
                "term": term,
                "choices": choices,
                "answer": answer,
            }
        )
    return rows


def medical_messages(row: dict[str, Any], system: str, rules: FormatRules) -> list[dict[str, str]]:
    """System, user and assistant turns of one training instruction (three-rule answer)."""
    letter = LETTERS[row["answer"]]
    reasoning = MEDICAL_REASONING.format(term=row["term"], letter=letter)
    answer = rules.answer_format.replace(rules.placeholder, letter)
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": render(MEDICAL_QUESTION, row)},
        {"role": "assistant", "content": f"{rules.open_tag}{reasoning}{rules.close_tag}\n{answer}"},
    ]


def math_step_rows(items: list[Item], rng: random.Random) -> list[dict[str, Any]]:
    pool = [(it.id, s) for it in items for s in it.fields["steps"]]
    rows = []
    for it in items:
        steps: list[str] = it.fields["steps"]
        for k in range(len(steps)):
            gold = steps[k]
            cands = sorted({s for pid, s in pool if pid != it.id and s != gold})
            if len(cands) < N_CHOICES - 1:
                continue
            others = rng.sample(cands, N_CHOICES - 1)
            answer = rng.randrange(N_CHOICES)
            context = "Problem: " + it.fields["problem"] + "\nSolution:\n" + "".join(s + "\n" for s in steps[:k])
            rows.append(
                {
                    "id": f"{it.id}:step{k + 1}",
                    "context": context,
                    "choices": [*others[:answer], gold, *others[answer:]],
                    "answer": answer,
                }
            )
    return rows


def math_answer_rows(items: list[Item], rng: random.Random) -> list[dict[str, Any]]:
    rows = []
    for it in items:
        gold = it.fields["answer"]
        same = sorted({o.fields["answer"] for o in items if o.fields["category"] == it.fields["category"]} - {gold})
        rest = sorted({o.fields["answer"] for o in items} - {gold} - set(same))
        others = rng.sample(same, min(len(same), N_CHOICES - 1))
        others += rng.sample(rest, N_CHOICES - 1 - len(others))
        answer = rng.randrange(N_CHOICES)
        rows.append(
            {
                "id": it.id,
                "problem": it.fields["problem"],
                "category": it.fields["category"],
                "choices": [*others[:answer], gold, *others[answer:]],
                "answer": answer,
            }
        )
    return rows


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def code_rows(items: list[Item], rng: random.Random) -> list[dict[str, Any]]:
    lines_of = {it.id: it.text.split("\n") for it in items}
    pool = sorted({ln.strip() for lines in lines_of.values() for ln in lines if len(ln.strip()) >= 8})
    rows = []
    for it in items:
        lines = lines_of[it.id]
        positions = [k for k in range(1, len(lines)) if len(lines[k].strip()) >= 8]
        if not positions:
            continue
        k = rng.choice(positions)
        gold = lines[k]
        ind = _indent(gold)
        own = {ln.strip() for ln in lines}
        others: list[str] = []
        while len(others) < N_CHOICES - 1:  # rejection sampling from the pool (deterministic given rng)
            cand = pool[rng.randrange(len(pool))]
            if cand not in own and ind + cand not in others:
                others.append(ind + cand)
        answer = rng.randrange(N_CHOICES)
        rows.append(
            {
                "id": f"{it.id}:line{k + 1}",
                "context": "\n".join(lines[:k]) + "\n",
                "choices": [*others[:answer], gold, *others[answer:]],
                "answer": answer,
            }
        )
    return rows


def _cap(rows: list[dict[str, Any]], n: int, rng: random.Random) -> tuple[list[dict[str, Any]], str]:
    if len(rows) <= n:
        return rows, f"all {len(rows)} candidate rows"
    order = list(range(len(rows)))
    rng.shuffle(order)
    keep = sorted(order[:n])
    return [rows[i] for i in keep], f"{n} of {len(rows)} candidate rows (seeded shuffle, kept in order)"


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _write_yaml(path: Path, comment: str, spec: dict[str, Any]) -> None:
    body = yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=1000)
    path.write_text("".join(f"# {ln}\n" for ln in comment.splitlines()) + body, encoding="utf-8")


def write_tasks(folder: Path, heldout: dict[str, list[Item]], *, seed: int, eval_items: int) -> dict[str, Any]:
    """Write task YAML + JSONL files for the domains in ``heldout``; returns ``{name: description}``."""
    out: dict[str, Any] = {}

    def emit(
        name: str, domain: str, rows: list[dict[str, Any]], rng: random.Random, spec: dict[str, Any], what: str
    ) -> None:
        kept, selection = _cap(rows, eval_items, rng)
        _write_jsonl(folder / f"{name}.jsonl", kept)
        comment = f"{name} ({domain}, tunelens zoo): {what}\nrows: {selection}; held-out items only"
        _write_yaml(folder / f"{name}.yaml", comment, {"name": name, "data": f"{name}.jsonl", **spec})
        out[name] = {"domain": domain, "file": f"{name}.yaml", "rows": len(kept), "selection": selection, "what": what}

    if "medical" in heldout:
        rng = random.Random(seed * 1000 + 1)
        rows = medical_rows(heldout["medical"], rng)
        fm = format_medical()
        emit(
            "hpo_term",
            "medical",
            rows,
            random.Random(seed * 1000 + 2),
            {"kind": "multiple_choice", "prompt": "Definition: {{ definition }}\nTerm:", "choices": "text"},
            "held-out HPO definition -> its term name among 4 held-out names; log-likelihood of ' <name>'",
        )
        emit(
            "format_hpo",
            "medical",
            rows,
            random.Random(seed * 1000 + 2),
            {
                "kind": "format",
                "system": fm["system"],
                "prompt": MEDICAL_QUESTION,
                "chat_template": "auto",
                "max_new_tokens": 96,
                "rules": fm["rules"],
            },
            "three-rule instruction following (format_medical's system prompt) on the hpo_term questions",
        )
    if "math" in heldout:
        emit(
            "champ_step",
            "math",
            math_step_rows(heldout["math"], random.Random(seed * 1000 + 3)),
            random.Random(seed * 1000 + 4),
            {"kind": "multiple_choice", "prompt": "{{ context }}", "choices": "text", "target_delimiter": ""},
            "held-out CHAMP problem + first k solution steps -> step k+1 among 4; log-likelihood of the step",
        )
        emit(
            "champ_answer",
            "math",
            math_answer_rows(heldout["math"], random.Random(seed * 1000 + 5)),
            random.Random(seed * 1000 + 6),
            {"kind": "multiple_choice", "prompt": "Problem: {{ problem }}\nAnswer:", "choices": "text"},
            "held-out CHAMP problem -> its answer among 4 held-out answers (same category first)",
        )
    if "code" in heldout:
        emit(
            "code_line",
            "code",
            code_rows(heldout["code"], random.Random(seed * 1000 + 7)),
            random.Random(seed * 1000 + 8),
            {"kind": "multiple_choice", "prompt": "{{ context }}", "choices": "text", "target_delimiter": ""},
            "first k lines of a held-out stdlib definition -> line k+1 among 4 (re-indented distractors)",
        )
    return out

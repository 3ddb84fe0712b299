"""Task resolution (built-in names, YAML, JSONL schemas), rows, few-shot choice and prompt text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tunelens.data import benchmarks_dir
from tunelens.errors import TunelensError
from tunelens.evaluation.items import fewshot_for, load_rows
from tunelens.evaluation.prompts import build_prompt
from tunelens.evaluation.tasks import DATA_ENV, builtin_names, detect_schema, resolve_task


class NoChat:
    chat_template = None


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_builtin_reads_bundled_data_unless_overridden(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    monkeypatch.delenv(DATA_ENV, raising=False)
    assert resolve_task("mmlu_medical").data == benchmarks_dir() / "mmlu" / "medical.test.jsonl"
    task = resolve_task("mmlu_medical", data_dir=data_dir)
    assert task.data == data_dir / "mmlu" / "medical.test.jsonl" and task.kind == "multiple_choice"
    monkeypatch.setenv(DATA_ENV, str(data_dir))
    assert resolve_task("gsm8k").fewshot_data == data_dir / "gsm8k" / "train200.jsonl"


def test_every_builtin_yaml_parses(tmp_path: Path) -> None:
    for name in builtin_names():
        with pytest.raises(TunelensError, match="does not exist"):
            resolve_task(name, data_dir=tmp_path)  # parsed fine; only the data is missing


def test_unknown_task_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(TunelensError, match="unknown task"):
        resolve_task("nope")
    bad = write(tmp_path / "t.yaml", "name: t\nkind: multiple_choice\ndata: x.jsonl\nprompt: q\ncolour: red\n")
    with pytest.raises(TunelensError, match="unknown task key"):
        resolve_task(str(bad))
    bad2 = write(tmp_path / "u.yaml", "name: u\nkind: essay\ndata: x.jsonl\nprompt: q\n")
    with pytest.raises(TunelensError, match="kind must be one of"):
        resolve_task(str(bad2))


def test_jsonl_schema_detection_and_fewshot_sibling(data_dir: Path) -> None:
    path = data_dir / "mmlu" / "medical.test.jsonl"
    assert detect_schema(path) == "mmlu"
    assert detect_schema(data_dir / "gsm8k" / "test.jsonl") == "gsm8k"
    task = resolve_task(f"med={path}", num_fewshot=1)
    assert task.name == "med" and task.fewshot_data == data_dir / "mmlu" / "medical.dev.jsonl"
    with pytest.raises(TunelensError, match="few-shot pool"):
        resolve_task(str(data_dir / "gsm8k" / "test.jsonl"), num_fewshot=2)  # no test.* sibling naming


def test_bad_rows_are_named(tmp_path: Path) -> None:
    f = write(tmp_path / "x.jsonl", '{"question": "q", "choices": ["a", "b"], "answer": 5}\n')
    task = resolve_task(str(f))
    with pytest.raises(TunelensError, match="answer"):
        load_rows(task)
    g = write(tmp_path / "y.jsonl", '{"question": "q", "choices": ["a", "b"], "answer": 1}\nnot json\n')
    with pytest.raises(TunelensError, match="y.jsonl:2"):
        load_rows(resolve_task(str(g)))


def test_limit_first_and_random(data_dir: Path) -> None:
    task = resolve_task("mmlu_medical", data_dir=data_dir)
    first = load_rows(task, limit=2)
    assert [r["id"] for r in first.rows] == ["anatomy-test-0", "anatomy-test-1"] and first.total == 4
    a = load_rows(task, limit=2, mode="random", seed=7)
    b = load_rows(task, limit=2, mode="random", seed=7)
    assert [r["id"] for r in a.rows] == [r["id"] for r in b.rows] and "seed 7" in a.selection


def test_fewshot_same_subject_first_n(data_dir: Path) -> None:
    task = resolve_task("mmlu_medical", data_dir=data_dir, num_fewshot=2)
    rows = load_rows(task)
    shots = fewshot_for(task, rows.rows[0], rows.pool)
    assert [s["id"] for s in shots] == ["anatomy-dev-0", "anatomy-dev-1"]
    with pytest.raises(TunelensError, match="pool has 1"):
        fewshot_for(task, rows.rows[2], rows.pool)  # virology has one dev row


def test_mmlu_prompt_is_lm_eval_text(data_dir: Path) -> None:
    task = resolve_task("mmlu_medical", data_dir=data_dir, num_fewshot=1)
    rows = load_rows(task)
    row: dict[str, Any] = rows.rows[0]
    prompt = build_prompt(task, row, fewshot_for(task, row, rows.pool), NoChat())
    expected = (
        "The following are multiple choice questions (with answers) about anatomy.\n\n"
        "Where is the heart?\nA. chest\nB. head\nC. leg\nD. arm\nAnswer: A\n\n"
        "Which organ filters blood?\nA. the heart\nB. the kidney\nC. the lung\nD. the skin\nAnswer:"
    )
    assert prompt == expected


def test_gsm8k_prompt_uses_solutions_as_shots(data_dir: Path) -> None:
    task = resolve_task("gsm8k", data_dir=data_dir, num_fewshot=1)
    rows = load_rows(task)
    prompt = build_prompt(task, rows.rows[0], fewshot_for(task, rows.rows[0], rows.pool), NoChat())
    assert prompt == (
        "Question: What is 4 times 3?\nAnswer: 4*3=12\n#### 12\n\n"
        "Question: Tom has 2 apples and buys 3 more. How many?\nAnswer:"
    )


def test_format_prompt_plain_and_chat(data_dir: Path) -> None:
    task = resolve_task("format_medical", data_dir=data_dir)
    row = load_rows(task).rows[0]
    plain = build_prompt(task, row, [], NoChat())
    assert plain.startswith("Follow these three rules exactly.") and "<think> and </think>" in plain
    assert "Answer: X" in plain and plain.endswith("D. the skin\n")

    class Chat:
        chat_template = "x"

        def apply_chat_template(self, messages: list[dict[str, str]], **kw: Any) -> str:
            assert kw == {"tokenize": False, "add_generation_prompt": True}
            return "|".join(f"{m['role']}:{m['content']}" for m in messages)

    chat = build_prompt(task, row, [], Chat())
    assert chat.startswith("system:Follow these three rules") and "|user:Which organ filters blood?" in chat


def test_template_errors_are_one_line(tmp_path: Path) -> None:
    f = write(tmp_path / "x.jsonl", '{"question": "q", "choices": ["a", "b"], "answer": 1}\n')
    y = write(tmp_path / "t.yaml", f"name: t\nkind: multiple_choice\ndata: {f}\nprompt: '{{{{ nope }}}}'\n")
    task = resolve_task(str(y))
    with pytest.raises(TunelensError, match="nope"):
        build_prompt(task, load_rows(task).rows[0], [], NoChat())

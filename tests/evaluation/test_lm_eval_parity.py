"""tunelens against lm-evaluation-harness on the same real model (SmolLM2-135M) and the same items.

Two local tasks over one JSONL file, defined once for lm-eval (``dataset_path: json``) and once for
tunelens (task YAML): MMLU-style lettered choices with a 1-shot example from a dev split (the
one-token batched path), and the same questions with the choice *texts* as continuations (multi-token
continuations: the shared-prefix KV path, where ``acc_norm`` differs from ``acc``). The reference is
lm-eval loading the model folder itself (``HFLM(pretrained=path)``); the optional adapter
(``run_lm_eval`` on the tunelens-loaded model) must give lm-eval's numbers too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tunelens.evaluation.evaluate import evaluate
from tunelens.evaluation.model import load_model
from tunelens.evaluation.run import RunOptions

pytestmark = [pytest.mark.slow, pytest.mark.reference]
lm_eval = pytest.importorskip("lm_eval")

ITEMS = [
    ("Which organ filters blood to make urine?", ["the heart", "the kidneys", "the lungs", "the skin"], 1),
    ("What is high blood pressure called?", ["hypertension", "fever", "a cough", "a seizure"], 0),
    ("Which bone is the longest in the human body?", ["the femur", "the skull", "a rib", "the stapes"], 0),
    ("Where is insulin produced?", ["in the liver", "in the brain", "in the pancreas", "in the spleen"], 2),
    ("What do red blood cells carry?", ["oxygen", "light", "sound", "electricity"], 0),
    ("Which vitamin does skin make in sunlight?", ["vitamin C", "vitamin D", "vitamin K", "vitamin B12"], 1),
    ("How many chambers does the human heart have?", ["two", "three", "four", "six"], 2),
    ("Which organ is the main site of gas exchange?", ["the stomach", "the colon", "the bladder", "the lungs"], 3),
]  # fmt: skip
DEV = [{"id": "anatomy-dev-0", "subject": "anatomy", "question": "Where is the heart?",
        "choices": ["in the chest", "in the head", "in the leg", "in the arm"], "answer": 0}]  # fmt: skip

LETTERS_TEXT = (
    "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:"
)
DESCRIPTION = "The following are multiple choice questions (with answers) about {{subject.replace('_', ' ')}}.\n\n"
TEXT_PROMPT = "Question: {{question}}\nAnswer:"


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _lm_eval_yaml(name: str, test: Path, dev: Path, *, letters: bool) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(test), "dev": str(dev)}},
        "test_split": "test",
        "fewshot_split": "dev",
        "fewshot_config": {"sampler": "first_n"},
        "output_type": "multiple_choice",
        "doc_to_target": "answer",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")],
    }
    if letters:
        cfg |= {"description": DESCRIPTION, "doc_to_text": LETTERS_TEXT, "doc_to_choice": ["A", "B", "C", "D"]}
        cfg |= {"num_fewshot": 1}
    else:
        cfg |= {"doc_to_text": TEXT_PROMPT, "doc_to_choice": "{{choices}}", "num_fewshot": 0}
    return cfg


def _tunelens_yaml(name: str, test: Path, dev: Path, *, letters: bool) -> dict[str, Any]:
    cfg: dict[str, Any] = {"name": name, "kind": "multiple_choice", "data": str(test), "fewshot_data": str(dev)}
    if letters:
        cfg |= {"description": DESCRIPTION, "prompt": LETTERS_TEXT, "choices": "letters", "num_fewshot": 1}
    else:
        cfg |= {"prompt": TEXT_PROMPT, "choices": "text", "num_fewshot": 0}
    return cfg


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("parity")
    rows = [{"id": f"anatomy-test-{i}", "subject": "anatomy", "question": q, "choices": c, "answer": a}
            for i, (q, c, a) in enumerate(ITEMS)]  # fmt: skip
    test, dev = write_jsonl(root / "items.test.jsonl", rows), write_jsonl(root / "items.dev.jsonl", DEV)
    (root / "lm_eval").mkdir()
    for name, letters in (("tl_letters", True), ("tl_text", False)):
        (root / "lm_eval" / f"{name}.yaml").write_text(json.dumps(_lm_eval_yaml(name, test, dev, letters=letters)))
        (root / f"{name}.yaml").write_text(json.dumps(_tunelens_yaml(name, test, dev, letters=letters)))
    return root


def _lm_eval_samples(out: dict[str, Any], task: str) -> list[dict[str, Any]]:
    return sorted(out["samples"][task], key=lambda s: s["doc_id"])


def test_acc_and_acc_norm_equal_lm_eval(
    smollm2: Path, tasks: Path, offline_hf: Callable[[], None], tmp_path: Path
) -> None:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    names = ["tl_letters", "tl_text"]
    manager = TaskManager(include_path=str(tasks / "lm_eval"), include_defaults=False)
    reference_lm = HFLM(pretrained=str(smollm2), device="cpu", dtype="float32", batch_size=4)
    ref = simple_evaluate(model=reference_lm, tasks=names, task_manager=manager, log_samples=True)
    assert ref is not None
    ours = evaluate(
        smollm2, [str(tasks / f"{n}.yaml") for n in names], out=tmp_path / "eval", options=RunOptions(quiet=True)
    )
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    for name, fewshot in (("tl_letters", 1), ("tl_text", 0)):
        theirs = _lm_eval_samples(ref, name)
        mine = [s for s in samples if s["task"] == name]
        assert len(mine) == len(theirs) == len(ITEMS)
        for s, t in zip(mine, theirs, strict=True):
            assert s["prompt"] == t["arguments"][0][0]  # the same context text (description, 1-shot, question)
            assert s["continuations"] == [a[1] for a in t["arguments"]]
            lls = [r[0] for r in t["filtered_resps"]]
            assert s["loglikelihoods"] == pytest.approx(lls, abs=2e-4)
            assert s["is_greedy"] == [bool(r[1]) for r in t["filtered_resps"]]
            assert (s["scores"]["acc"], s["scores"]["acc_norm"]) == (t["acc"], t["acc_norm"])
        for metric in ("acc", "acc_norm"):
            assert ours.value(name, metric) == ref["results"][name][f"{metric},none"]  # identical, not approximately
            row = next(r for r in ours.results if r["task"] == name and r["metric"] == metric)
            assert row["n"] == len(ITEMS)
            assert row["stderr"] == pytest.approx(ref["results"][name][f"{metric}_stderr,none"], rel=1e-12)
        assert fewshot == (1 if "\n\nWhere is the heart?" in mine[0]["prompt"] else 0)
    text = [s for s in samples if s["task"] == "tl_text"]
    assert max(max(s["continuation_tokens"]) for s in text) > 1  # the multi-token (shared-prefix) path ran

    # the optional adapter: lm-eval on the tunelens-loaded model gives lm-eval's own numbers
    from tunelens.evaluation.lm_eval_adapter import run_lm_eval

    rows = run_lm_eval(load_model(smollm2), ["tl_text"], include=tasks / "lm_eval", batch_size=4)
    got = {r["metric"]: r["value"] for r in rows}
    assert got["acc"] == ref["results"]["tl_text"]["acc,none"]
    assert got["acc_norm"] == ref["results"]["tl_text"]["acc_norm,none"]
    assert {r["n"] for r in rows} == {len(ITEMS)} and all(r["task"] == "lm-eval:tl_text" for r in rows)


def test_chat_template_of_a_real_tokenizer(smollm2: Path, tmp_path: Path) -> None:
    """Format tasks go through SmolLM2's chat template: system rules, user question, generation prompt."""
    from transformers import AutoTokenizer

    from tunelens.evaluation.items import load_rows
    from tunelens.evaluation.mcqa import tokenize
    from tunelens.evaluation.prompts import build_prompt
    from tunelens.evaluation.tasks import resolve_task

    tok = AutoTokenizer.from_pretrained(str(smollm2))
    (tmp_path / "mmlu").mkdir()
    row = {"id": "a-0", "subject": "anatomy", "question": ITEMS[0][0], "choices": ITEMS[0][1], "answer": 1}
    write_jsonl(tmp_path / "mmlu" / "medical.test.jsonl", [row])
    task = resolve_task("format_medical", data_dir=tmp_path)
    prompt = build_prompt(task, load_rows(task).rows[0], [], tok)
    expected = tok.apply_chat_template(
        [{"role": "system", "content": build_prompt(task, load_rows(task).rows[0], [], None).split("\n\n")[0]},
         {"role": "user", "content": "Which organ filters blood to make urine?\nA. the heart\nB. the kidneys\n"
                                     "C. the lungs\nD. the skin"}],
        tokenize=False, add_generation_prompt=True,
    )  # fmt: skip
    assert prompt == expected and prompt.startswith("<|im_start|>system\nFollow these three rules exactly.")
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tokenize(tok, prompt)
    assert ids == tok.encode(prompt, add_special_tokens=False)  # no second BOS in front of the template's text

"""Issue 14 for evaluate: every malformed task file, template, YAML key, --limit and --sweep is one `Error:` line
and exit 2 before the model loads; non-finite logits stop the run unless --allow-nonfinite (then null scores)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tunelens.cli import cli

ROWS = [{"id": f"r{i}", "question": f"Q{i}?", "choices": ["a", "b", "c"], "answer": i % 3} for i in range(4)]
GOOD = {"name": "t", "kind": "multiple_choice", "data": "items.jsonl", "prompt": "{{ question }}\nAnswer:"}


def _task(folder: Path, spec: dict[str, Any] | str, rows: list[Any] | str = ROWS) -> Path:
    lines = rows if isinstance(rows, str) else "".join(json.dumps(r) + "\n" for r in rows)
    (folder / "items.jsonl").write_text(lines)
    path = folder / "task.yaml"
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec))
    return path


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture()
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any model load is a failure of the test: these errors must come first."""
    import tunelens.evaluation.model as model

    def refuse(*a: Any, **k: Any) -> Any:
        raise AssertionError("the model was loaded before the bad input was found")

    monkeypatch.setattr(model, "load_model", refuse)


CASES: list[tuple[str, dict[str, Any] | str, list[Any] | str, list[str], str]] = [
    ("unknown key", {**GOOD, "promt": "x"}, ROWS, [], "unknown task key(s) promt"),
    ("missing key", {k: v for k, v in GOOD.items() if k != "prompt"}, ROWS, [], "missing task key(s) prompt"),
    ("not a mapping", "- a\n- b\n", ROWS, [], "a task YAML must be a mapping"),
    ("invalid yaml", "name: [unclosed\n", ROWS, [], "not a readable YAML file"),
    ("bad kind", {**GOOD, "kind": "essay"}, ROWS, [], "kind must be one of"),
    ("bad choices style", {**GOOD, "choices": "emoji"}, ROWS, [], "choices must be one of"),
    ("non-integer shots", {**GOOD, "num_fewshot": "two"}, ROWS, [], "num_fewshot must be an integer"),
    ("bad stop", {**GOOD, "stop": {"a": 1}}, ROWS, [], "`stop` must be a string or a list"),
    ("bad rules key", {**GOOD, "rules": {"open": "<a>"}}, ROWS, [], "`rules` takes the keys"),
    ("missing data", {**GOOD, "data": "nope.jsonl"}, ROWS, [], "does not exist"),
    ("row not json", GOOD, '{"id": 1, "question": "x"\n', [], "not valid JSON"),
    ("row not object", GOOD, "[1, 2]\n", [], "must be a JSON object"),
    ("no choices", GOOD, [{"question": "q", "answer": 0}], [], "`choices` must be a list"),
    (
        "answer out of range",
        GOOD,
        [{"question": "q", "choices": ["a", "b"], "answer": 5}],
        [],
        "`answer` must be an index",
    ),
    ("unknown field", {**GOOD, "prompt": "{{ questoin }}"}, ROWS, [], "questoin"),
    ("template syntax", {**GOOD, "prompt": "{{ question "}, ROWS, [], "template"),
    ("few-shot pool too small", {**GOOD, "num_fewshot": 9, "fewshot_data": "items.jsonl"}, ROWS, [], "9-shot needs"),
    ("limit zero", GOOD, ROWS, ["--limit", "0"], "--limit must be at least 1, got 0"),
    ("sweep not numbers", GOOD, ROWS, ["--apply", "x=PATH", "--sweep", "a,b"], "--sweep must be a comma-separated"),
    ("sweep repeated", GOOD, ROWS, ["--apply", "x=PATH", "--sweep", "1,1"], "--sweep has repeated values"),
    ("sweep infinite", GOOD, ROWS, ["--apply", "x=PATH", "--sweep", "0,inf"], "--sweep values must be finite"),
    ("sweep without apply", GOOD, ROWS, ["--sweep", "0,1"], "--sweep needs at least one --apply"),
]


@pytest.mark.parametrize(("spec", "rows", "extra", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_before_loading(
    no_loading: None, tmp_path: Path, spec: Any, rows: Any, extra: list[str], message: str
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    task = _task(inputs, spec, rows)
    (tmp_path / "model").mkdir()
    before = _digest(inputs)
    extra = [str(tmp_path / "model") if a == "x=PATH" else a for a in extra]
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "model"), "-t", str(task), *extra, "-o", str(out)])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], r.output
    assert not out.exists() and _digest(inputs) == before


def _overflowing(src: Path, dst: Path) -> Path:
    """A copy of a tiny model with a final norm of 1e30: finite weights whose logits overflow float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(src))
    with torch.no_grad():
        model.model.norm.weight.fill_(1e30)
        model.lm_head.weight.mul_(1e30)  # (tied or not) |logit| ~ 1e58: inf in float32
    model.save_pretrained(str(dst))
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(dst))
    return dst


@pytest.mark.parametrize("kind", ["multiple_choice", "generate", "perplexity"])
def test_nonfinite_logits_stop_unless_allowed(tiny: Callable[..., Path], tmp_path: Path, kind: str) -> None:
    model = _overflowing(tiny("llama"), tmp_path / "inf-model")
    spec: dict[str, Any] = {**GOOD, "kind": kind}
    rows: list[Any] = ROWS
    if kind == "generate":
        spec |= {"metric": "exact_match", "reference": "ref", "max_new_tokens": 3}
        rows = [{"id": f"g{i}", "question": f"Q{i}", "ref": "1"} for i in range(3)]
    if kind == "perplexity":
        spec |= {"prompt": "{{ question }}", "seq_len": 8, "max_tokens": 12}
    task = _task(tmp_path, spec, rows)
    r = CliRunner().invoke(cli, ["evaluate", str(model), "-t", str(task), "-q", "-o", str(tmp_path / "o1")])
    assert r.exit_code == 2 and "non-finite logits" in r.output and "--allow-nonfinite" in r.output, r.output
    # one Error: line, the last (transformers' own loading bar before it is the model loader's to silence)
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and r.output.strip().splitlines()[-1] == errors[0] and not (tmp_path / "o1").exists()
    r = CliRunner().invoke(cli, ["evaluate", str(model), "-t", str(task), "-q", "--allow-nonfinite", "-o",
                                 str(tmp_path / "o2")])  # fmt: skip
    assert r.exit_code == 0, r.output
    results = json.loads((tmp_path / "o2" / "results.json").read_text())
    assert results["options"]["allow_nonfinite"] is True
    assert results["results"] and all(row["value"] is None for row in results["results"])
    samples = [json.loads(x) for x in (tmp_path / "o2" / "samples.jsonl").read_text().splitlines()]
    assert samples and all(all(v is None for v in s["scores"].values()) for s in samples)
    for s in samples:  # valid JSON: no NaN written anywhere
        assert all(x is None or math.isfinite(x) for x in s.get("loglikelihoods", []))
    csv_lines = (tmp_path / "o2" / "results.csv").read_text().splitlines()[1:]
    assert all(",," in line for line in csv_lines)  # empty value cells, not "nan"

"""``kind: perplexity`` tasks: held-out loss against transformers' own loss, and through ``evaluate``."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from tunelens.cli import cli
from tunelens.evaluation.perplexity import heldout_nll

TEXTS = ["Fever is a raised body temperature.", "Anemia is a low red cell count.", "Ataxia is poor coordination."]


def test_one_row_equals_transformers_loss(tiny: Callable[..., Path]) -> None:
    """With one row holding the whole stream, the loss is transformers' mean shifted cross-entropy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny("llama", seed=3)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float64).eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    stream: list[int] = []
    for t in TEXTS:
        stream += [*tok(t, add_special_tokens=False)["input_ids"], tok.eos_token_id]
    ids = torch.tensor([stream])
    ref = float(model(input_ids=ids, labels=ids).loss)
    got = heldout_nll(model, tok, TEXTS, seq_len=len(stream), max_tokens=10_000)
    assert got["tokens"] == len(stream) - 1 and got["documents"] == 3
    # transformers' loss casts the float64 logits to float32; ours keeps float64: agree to float32 precision
    assert got["loss"] == pytest.approx(ref, rel=1e-6)
    assert got["perplexity"] == pytest.approx(math.exp(ref), rel=1e-6)
    # short overlapping rows score the same number of targets; max_tokens caps them
    short = heldout_nll(model, tok, TEXTS, seq_len=5, max_tokens=10_000)
    assert short["tokens"] == len(stream) - 1
    assert heldout_nll(model, tok, TEXTS, seq_len=5, max_tokens=7)["tokens"] == 7


def test_evaluate_reports_loss_and_perplexity(tiny: Callable[..., Path], tmp_path: Path) -> None:
    data = tmp_path / "heldout.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    task = tmp_path / "heldout.yaml"
    task.write_text(yaml.safe_dump({"name": "heldout", "kind": "perplexity", "data": str(data),
                                    "prompt": "{{ text }}", "seq_len": 8, "max_tokens": 20}))  # fmt: skip
    out = tmp_path / "eval"
    r = CliRunner().invoke(cli, ["evaluate", str(tiny("llama")), "-t", str(task), "-q", "-o", str(out)])
    assert r.exit_code == 0, r.output
    rows = {row["metric"]: row for row in json.loads((out / "results.json").read_text())["results"]}
    assert set(rows) == {"loss", "perplexity"}
    assert rows["loss"]["n"] == 20 and rows["loss"]["stderr"] is None
    assert rows["perplexity"]["value"] == pytest.approx(math.exp(rows["loss"]["value"]))
    assert 0 < rows["loss"]["value"] < 20


def test_perplexity_task_rejects_few_shot(tmp_path: Path) -> None:
    task = tmp_path / "bad.yaml"
    task.write_text(yaml.safe_dump({"name": "bad", "kind": "perplexity", "data": "x.jsonl", "prompt": "{{ text }}",
                                    "seq_len": 1}))  # fmt: skip
    r = CliRunner().invoke(cli, ["evaluate", str(tmp_path), "-t", str(task), "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "seq_len >= 2" in r.output

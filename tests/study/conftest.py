"""A tiny study shared by the study and report tests: tiny models, a task file and a corpus."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tunelens.cli import cli

MCQA = [
    {
        "question": f"Which organ does item {i} concern?",
        "choices": ["heart", "lung", "liver", "kidney"],
        "answer": i % 4,
    }
    for i in range(6)
]
TEXT = "The patient presented with fever and a persistent cough. Blood pressure was normal. " * 40


@pytest.fixture(scope="session")
def inputs(tiny: Callable[..., Path], tuned: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("study-inputs")
    base = tiny("llama")
    (root / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MCQA))
    (root / "corpus.txt").write_text(TEXT)
    cfg = {
        "title": "tiny study",
        "base": "base",
        "models": [
            {"name": "base", "path": str(base)},
            {"name": "med", "path": str(tuned(base, scale=2e-2, seed=1)), "parent": "base"},
            {"name": "math", "path": str(tuned(base, scale=2e-2, seed=2)), "parent": "base"},
        ],
        "corpus": ["corpus.txt"],
        "tasks": ["task.jsonl"],
        "edits": [
            {"name": "med-negated", "terms": {"med": -1}},
            {"name": "med-from-ft", "target": "med", "terms": {"med": -0.5}},
            {"name": "med+math", "terms": {"med": 1, "math": 1}},
        ],
        "sweep": {"vector": "med", "scales": [-1, 0, 1]},
        "subspace": {"energy": [0.5, 0.9]},
        "activations": {"seq_len": 32, "max_tokens": 256, "batch_size": 4},
        "evaluate": {"batch_size": 4},
    }
    (root / "study.yaml").write_text(yaml.safe_dump(cfg))
    return root


@pytest.fixture(scope="session")
def study(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("study") / "run"
    res = CliRunner().invoke(cli, ["study", str(inputs / "study.yaml"), "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert "report.html" in res.output
    return out

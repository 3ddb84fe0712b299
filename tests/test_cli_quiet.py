"""``-q`` silences transformers' own output in every command that loads a model, and its progress bars
("Loading weights", ...) never show without a terminal. The model carries one tensor it does not use,
so transformers has a warning (its LOAD REPORT) to print: ``-q`` must silence that too, and without
``-q`` it must still reach the user."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tunelens.cli import cli

BAR = re.compile(r"\d+%\|")  # a tqdm progress bar
ITEMS = [{"question": f"Which organ is item {i} about?", "choices": ["heart", "lung"], "answer": i % 2} for i in (0, 1)]


@pytest.fixture(scope="module")
def inputs(tiny: Callable[..., Path], tuned: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model with an unused extra tensor, a fine-tune, a 2-item task, a corpus and a 2-stage study."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("quiet")
    base = tiny("llama")
    model = Path(shutil.copytree(base, root / "model"))
    state = load_file(model / "model.safetensors")
    state["unused.weight"] = torch.zeros(2)
    save_file(state, model / "model.safetensors", metadata={"format": "pt"})
    (root / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ITEMS))
    (root / "corpus.txt").write_text("The patient presented with fever and a persistent cough. " * 20)
    study = {
        "base": "base",
        "models": [{"name": "base", "path": str(base)}, {"name": "ft", "path": str(tuned(base)), "parent": "base"}],
        "corpus": [str(root / "corpus.txt")],
        "tasks": [str(root / "task.jsonl")],
        "stages": ["activations", "evaluate"],
        "activations": {"seq_len": 32, "max_tokens": 64},
    }
    (root / "study.yaml").write_text(yaml.safe_dump(study))
    return root


@pytest.fixture()
def hf_log() -> Iterator[list[str]]:
    """Every record transformers' loggers emit (at its current level) while the test runs: its own
    handler writes to whatever stderr existed when it was made, which no capture here can follow."""
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Keep()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    yield seen
    logger.removeHandler(handler)


def _commands(root: Path, out: Path) -> dict[str, tuple[list[str], list[str]]]:
    """command -> (arguments, the lines -q leaves on stdout, as regular expressions)."""
    m = str(root / "model")
    return {
        "activations": (
            ["activations", m, "--corpus", str(root / "corpus.txt"), "--seq-len", "32", "-o", str(out), "--force"],
            [re.escape(f"wrote {out}/activations.json and {out}/activations.csv")],
        ),
        "evaluate": (
            ["evaluate", m, "-t", str(root / "task.jsonl"), "-o", str(out), "--force"],
            [re.escape(f"wrote results.json, results.csv, samples.jsonl to {out}")],
        ),
        "study": (
            ["study", str(root / "study.yaml"), "-o", str(out), "--force", "--no-report"],
            [r"\d+ stage\(s\), 0 reused; wrote " + re.escape(str(out))],
        ),
    }


@pytest.mark.parametrize("command", ["activations", "evaluate", "study"])
def test_quiet_leaves_only_the_result_line(command: str, inputs: Path, tmp_path: Path, hf_log: list[str]) -> None:
    args, lines = _commands(inputs, tmp_path / "out")[command]
    res = CliRunner().invoke(cli, [*args, "-q"])
    assert res.exit_code == 0, res.output
    assert res.stderr == "" and hf_log == [], (res.stderr, hf_log)
    _match(res.stdout, lines)


def _match(stdout: str, patterns: list[str]) -> None:
    got = stdout.splitlines()
    assert len(got) == len(patterns) and all(re.fullmatch(p, g) for p, g in zip(patterns, got, strict=True)), got


@pytest.mark.parametrize("command", ["activations", "evaluate"])
def test_without_a_terminal_no_bars_but_warnings_stay(
    command: str, inputs: Path, tmp_path: Path, hf_log: list[str]
) -> None:
    args, _ = _commands(inputs, tmp_path / "out")[command]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert not BAR.search(res.stderr) and "Loading weights" not in res.stderr, res.stderr
    assert any("LOAD REPORT" in m for m in hf_log), hf_log  # transformers' warning still reaches the user


def test_quiet_in_a_fresh_process(inputs: Path, tmp_path: Path) -> None:
    """The real command line: a new interpreter, stderr a pipe."""
    args, lines = _commands(inputs, tmp_path / "out")["evaluate"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    res = subprocess.run(
        [sys.executable, "-m", "tunelens", *args, "-q"], capture_output=True, text=True, env=env, timeout=300
    )
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    _match(res.stdout, lines)


@pytest.mark.slow  # builds the tiny zoo (trains for seconds) and runs the whole demo study: minutes on 2 cores
def test_demo_quiet_in_a_fresh_process(tmp_path: Path) -> None:
    """``demo`` loads, trains and saves models (save_pretrained's 'Writing model shards' bars too)."""
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TUNELENS_CACHE": str(tmp_path / "cache")}
    cmd = ["demo", "--tiny", "-o", str(out), "--cache-dir", str(tmp_path / "zoo"), "-q"]
    res = subprocess.run(
        [sys.executable, "-m", "tunelens", *cmd], capture_output=True, text=True, env=env, timeout=1800
    )
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    _match(
        res.stdout, [r"\d+ stage\(s\), 0 reused; wrote " + re.escape(str(out)), re.escape(f"report: {out}/report.html")]
    )

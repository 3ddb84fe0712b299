"""``tunelens tasks`` (the built-in tasks' items, metrics and sources), ``evaluate`` of a built-in task with
no --data-dir, ``tunelens --version`` without importing torch, and ``tunelens.load`` imported lazily."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from click.testing import CliRunner

from tunelens.cli import cli
from tunelens.data import benchmarks_dir
from tunelens.evaluation.tasks import DATA_ENV, builtin_names


def _lines(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def test_tasks_json_counts_items_and_names_sources() -> None:
    res = CliRunner().invoke(cli, ["tasks", "--json"], env={DATA_ENV: ""})
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["bundled"] is True and Path(info["data_root"]) == benchmarks_dir()
    assert [t["name"] for t in info["tasks"]] == list(builtin_names())
    by = {t["name"]: t for t in info["tasks"]}
    root = benchmarks_dir()
    for t in info["tasks"]:
        assert t["items"] == _lines(root / t["data"]) and t["licence"] == "MIT"
    assert by["mmlu_medical"]["items"] == 1099 and by["gsm8k"]["fewshot_items"] == 200
    assert by["gsm8k"]["num_fewshot"] == 5 and by["pubmedqa"]["repository"] == "pubmedqa/pubmedqa"
    assert by["format_gsm8k"]["kind"] == "format" and by["pubmedqa_rouge"]["metrics"] == ["rouge1"]


def test_tasks_table_and_a_foreign_data_dir(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["tasks"], env={DATA_ENV: ""})
    assert res.exit_code == 0 and "hendrycks/test@785eba5 (MIT)" in res.output and "bundled" in res.output
    (tmp_path / "mmlu").mkdir()
    (tmp_path / "mmlu" / "medical.test.jsonl").write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n')
    res = CliRunner().invoke(cli, ["tasks", "--json", "--data-dir", str(tmp_path)])
    by = {t["name"]: t for t in json.loads(res.output)["tasks"]}
    assert by["mmlu_medical"]["items"] == 1 and by["mmlu_medical"]["repository"] is None  # not the bundled file
    assert "does not exist" in by["gsm8k"]["error"]
    res = CliRunner().invoke(cli, ["tasks", "--data-dir", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_builtin_tasks_run_without_data_dir_and_report_the_listed_metrics(
    tiny: Callable[..., Path], tmp_path: Path
) -> None:
    tasks = ["mmlu_medical", "gsm8k", "pubmedqa_rouge", "format_medical"]
    args = ["evaluate", str(tiny("llama")), *[a for t in tasks for a in ("-t", t)], "--limit", "1", "--num-fewshot",
            "0", "--max-new-tokens", "2", "-q", "-o", str(tmp_path / "ev")]  # fmt: skip
    res = CliRunner().invoke(cli, args, env={DATA_ENV: ""})
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    listed = {
        t["name"]: t
        for t in json.loads(CliRunner().invoke(cli, ["tasks", "--json"], env={DATA_ENV: ""}).output)["tasks"]
    }
    for task in tasks:
        assert [r["metric"] for r in results["results"] if r["task"] == task] == listed[task]["metrics"]
        assert Path(results["tasks"][task]["data"]).is_relative_to(benchmarks_dir())


def test_version_names_torch_and_transformers_without_importing_them() -> None:
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom tunelens.cli import cli\n"
        "r = CliRunner().invoke(cli, ['--version'])\nprint(r.exit_code)\nprint(r.output)\n"
        "print([m for m in ('torch', 'transformers', 'pandas') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("0\n")
    assert f"torch {version('torch')}" in out and f"transformers {version('transformers')}" in out
    assert out.rstrip().endswith("[]")


def test_load_is_imported_on_first_use() -> None:
    code = (
        "import sys, tunelens, tunelens.cli\nprint('pandas' in sys.modules)\n"
        "from tunelens import load\nprint('pandas' in sys.modules, load.__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:2] == ["False", "True tunelens.frames.load"]

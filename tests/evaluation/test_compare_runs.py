"""`tunelens compare` and evaluate's own comparisons on tiny models: the rows against a reference computed
from samples.jsonl with scipy, items paired by id, and one-line refusals."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from scipy.stats import binomtest

from tunelens.cli import cli
from tunelens.evaluation.compare import COMPARISON_COLUMNS
from tunelens.evaluation.stats import holm

ROWS = [
    {"id": f"q{i}", "question": f"Which organ does item {i} concern?", "choices": ["heart", "lung", "liver", "kidney"],
     "answer": i % 4}
    for i in range(10)
]  # fmt: skip
TEXT_TASK = {"name": "organs", "kind": "multiple_choice", "prompt": "Question: {{ question }}\nAnswer:",
             "choices": "text"}  # fmt: skip


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _samples(folder: Path) -> dict[tuple[str, str, str], dict[str, Any]]:
    out = {}
    for line in (folder / "samples.jsonl").read_text().splitlines():
        s = json.loads(line)
        out[(s["variant"], s["task"], s["id"])] = s
    return out


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cmp-task")
    (root / "organs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (root / "organs.yaml").write_text(yaml.safe_dump({**TEXT_TASK, "data": "organs.jsonl"}))
    return root / "organs.yaml"


@pytest.fixture(scope="module")
def runs(tiny: Callable[..., Path], tuned: Callable[..., Path], task: Path, tmp_path_factory: pytest.TempPathFactory
         ) -> tuple[Path, Path]:  # fmt: skip
    base = tiny("llama")
    ft = tuned(base, scale=0.3, seed=4)
    root = tmp_path_factory.mktemp("cmp-runs")
    for name, model in (("base", base), ("ft", ft)):
        r = CliRunner().invoke(cli, ["evaluate", f"{name}={model}", "-t", str(task), "-q", "-o", str(root / name)])
        assert r.exit_code == 0, r.output
    return root / "base", root / "ft"


def test_compare_rows_equal_a_reference_from_the_samples(runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = runs
    out = tmp_path / "cmp"
    r = CliRunner().invoke(cli, ["compare", str(a), str(b), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "differences are changes" in r.output
    rows = _csv(out / "comparisons.csv")
    assert list(rows[0]) == list(COMPARISON_COLUMNS)
    summary = json.loads((out / "comparisons.json").read_text())
    assert summary["statistics"]["resamples"] == 10_000 and summary["statistics"]["seed"] == 0
    assert "mcnemar_exact" in summary["definitions"]["p_value"]
    sa, sb = _samples(a), _samples(b)
    ids = [k[2] for k in sa]
    metrics = {row["metric"] for row in rows}
    assert {"acc", "acc_norm", "gold_loglik", "gold_prob", "gold_margin"} <= metrics
    for row in rows:
        assert (row["task"], row["a"], row["b"], row["n"]) == ("organs", "base", "ft", "10")
        xa = np.array([sa[("as_loaded", "organs", i)]["scores"][row["metric"]] for i in ids])
        xb = np.array([sb[("as_loaded", "organs", i)]["scores"][row["metric"]] for i in ids])
        assert float(row["mean_a"]) == pytest.approx(xa.mean(), abs=1e-12)
        assert float(row["diff"]) == pytest.approx(xb.mean() - xa.mean(), abs=1e-12)
        idx = np.random.default_rng(0).integers(0, 10, size=(10_000, 10))
        lo, hi = np.quantile(xb[idx].mean(1) - xa[idx].mean(1), [0.025, 0.975])
        assert (float(row["ci_low"]), float(row["ci_high"])) == pytest.approx((lo, hi), abs=1e-12)
        if row["test"] == "mcnemar_exact":
            a_only, b_only = int(((xa == 1) & (xb == 0)).sum()), int(((xa == 0) & (xb == 1)).sum())
            assert (int(row["a_only"]), int(row["b_only"])) == (a_only, b_only)
            want = binomtest(b_only, a_only + b_only).pvalue if a_only + b_only else 1.0
            assert float(row["p_value"]) == pytest.approx(want, rel=1e-12)
        else:
            assert row["test"] == "signflip_exact" and row["a_only"] == row["b_only"] == ""  # 2^10 <= 10,000
    adjusted = holm([float(row["p_value"]) for row in rows])
    assert [float(row["p_adjusted"]) for row in rows] == pytest.approx(adjusted, abs=1e-15)


def test_evaluate_with_a_sweep_compares_each_variant_with_the_first(
    tiny: Callable[..., Path], tuned: Callable[..., Path], task: Path, tmp_path: Path
) -> None:
    base = tiny("llama")
    ft = tuned(base, scale=0.3, seed=4)
    out = tmp_path / "sweep"
    args = ["evaluate", str(base), "-t", str(task), "--apply", f"ft={ft}", "--sweep", "0,1,2", "-q", "-o", str(out)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    rows = _csv(out / "comparisons.csv")
    assert {(x["a"], x["b"]) for x in rows} == {("sweep=0", "sweep=1"), ("sweep=0", "sweep=2")}
    summary = json.loads((out / "results.json").read_text())
    assert len(summary["comparisons"]) == len(rows) and "comparisons" in summary["definitions"]
    # the same numbers as `tunelens compare` on the one folder
    again = CliRunner().invoke(cli, ["compare", str(out), "-o", str(tmp_path / "cmp"), "-q"])
    assert again.exit_code == 0, again.output
    other = _csv(tmp_path / "cmp" / "comparisons.csv")
    strip = [{k: v for k, v in x.items() if k not in ("a", "b")} for x in rows]
    assert strip == [{k: v for k, v in x.items() if k not in ("a", "b")} for x in other]


def test_compare_refuses_a_task_defined_differently(
    tiny: Callable[..., Path], runs: tuple[Path, Path], task: Path, tmp_path: Path
) -> None:
    changed = tmp_path / "organs.yaml"
    spec = yaml.safe_load(task.read_text())
    changed.write_text(
        yaml.safe_dump({**spec, "data": str(task.parent / "organs.jsonl"), "prompt": "Q: {{ question }}"})
    )
    other = tmp_path / "other"
    r = CliRunner().invoke(cli, ["evaluate", str(tiny("llama")), "-t", str(changed), "-q", "-o", str(other)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["compare", str(runs[0]), str(other), "-o", str(tmp_path / "cmp")])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [
        "Error: task organs is defined differently in base and other (prompt); their items cannot be paired"
    ]
    assert not (tmp_path / "cmp").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ONE"], "at least two models"),
        (["ONE", "ONE"], "given twice"),
        (["MISSING", "ONE"], "does not exist"),
        (["EMPTY", "ONE"], "neither an evaluate output"),
    ],
)
def test_compare_bad_input_is_one_line(runs: tuple[Path, Path], tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "empty").mkdir()
    paths = {"ONE": str(runs[0]), "MISSING": str(tmp_path / "nope"), "EMPTY": str(tmp_path / "empty")}
    r = CliRunner().invoke(cli, ["compare", *[paths[a] for a in args], "-o", str(tmp_path / "cmp")])
    assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1

"""Output folders of every kind, written by the real commands on tiny models, and a cell-by-cell checker
of a frame against the CSV it was read from (the reference parses cells with the csv module and float())."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

from tunelens import api
from tunelens.cli import cli

MCQA = [
    {
        "question": f"Which organ does item {i} concern?",
        "choices": ["heart", "lung", "liver", "kidney"],
        "answer": i % 4,
    }
    for i in range(5)
]
TEXT = "The patient presented with fever and a persistent cough. Blood pressure was normal. " * 30


@dataclass(frozen=True)
class Outputs:
    """Folders written by diff, subspace, activations, evaluate, vector, apply, lora on one tiny base."""

    root: Path
    base: Path
    tuned: tuple[Path, Path]
    task: Path
    diff: Path
    subspace: Path
    activations: Path
    evaluate: Path
    vector: Path
    apply: Path
    lora: Path
    results: dict[str, Any]  # the api results returned with the written folders


def _cli(*args: str) -> None:
    res = CliRunner().invoke(cli, [*args, "-q"])
    assert res.exit_code == 0, res.output


@pytest.fixture(scope="session")
def outputs(tiny: Callable[..., Path], tuned: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Outputs:
    import torch

    from tunelens.activations.options import ActivationOptions
    from tunelens.evaluation.run import RunOptions

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("outputs")
    base = tiny("llama")
    med, math_ = tuned(base, scale=2e-2, seed=11), tuned(base, scale=2e-2, seed=12)
    task = root / "task.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in MCQA))
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT)
    tuned_specs = [f"med={med}", f"math={math_}"]
    results: dict[str, Any] = {}
    results["diff"] = api.diff(base, tuned_specs, out=root / "diff")
    results["subspace"] = api.subspace(base, tuned_specs, out=root / "subspace", energy=[0.5, 0.9], use_cache=False)
    aopts = ActivationOptions(seq_len=32, max_tokens=128, batch_size=4, quiet=True)
    results["activations"] = api.activations([f"base={base}", *tuned_specs], corpus=corpus, out=root / "acts",
                                             options=aopts)  # fmt: skip
    ropts = RunOptions(batch_size=4, quiet=True)
    results["evaluate"] = api.evaluate(base, [f"organs={task}"], out=root / "eval", options=ropts,
                                       apply=[f"med={med}"], sweep="0,1")  # fmt: skip
    results["evaluate_memory"] = api.evaluate(
        base, [f"organs={task}"], options=ropts, apply=[f"med={med}"], sweep="0,1"
    )
    _cli("vector", str(base), f"med={med}", "-o", str(root / "vec"))
    _cli("apply", str(base), "-v", f"med={med}:-1", "-v", f"math={math_}:0.5", "-o", str(root / "applied"))
    _cli("vector", str(base), f"med={med}", "--lora", "--rank", "2", "-o", str(root / "lora"))
    return Outputs(root, base, (med, math_), task, root / "diff", root / "subspace", root / "acts", root / "eval",
                   root / "vec", root / "applied", root / "lora", results)  # fmt: skip


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def same(value: Any, expected: Any) -> bool:
    """Equal, NaN / NA / None counting as one undefined value; floats compared exactly."""
    if _missing(value) or _missing(expected):
        return _missing(value) and _missing(expected)
    return bool(value == expected)


def _reference(cell: str, dtype: Any) -> Any:
    """A CSV cell parsed by the test itself: empty = undefined, else by the column's kind."""
    if cell == "":
        return None
    kind = getattr(dtype, "kind", "O")
    if str(dtype) == "Int64":
        return int(cell)
    if kind == "f":
        return float(cell)
    return cell


@pytest.fixture(scope="session")
def check_csv() -> Callable[[pd.DataFrame, Path], None]:
    """``check_csv(frame, path)``: same header, same rows in order, every cell equal to the file's."""

    def check(df: pd.DataFrame, path: Path) -> None:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = list(reader.fieldnames or [])
        assert list(df.columns) == header
        assert len(df) == len(rows) > 0
        for i, row in enumerate(rows):
            for col in header:
                got, want = df[col].iloc[i], _reference(row[col], df[col].dtype)
                assert same(got, want), f"{path.name} row {i} {col}: frame {got!r}, file {row[col]!r}"

    return check


@pytest.fixture(scope="session")
def frames_equal() -> Callable[[Any, Any], None]:
    """Two Results have the same frame names and equal frames (dtypes included)."""

    def check(a: Any, b: Any, skip: tuple[str, ...] = ()) -> None:
        assert a.kind == b.kind
        names = [n for n in a.frames if n not in skip]
        assert names == [n for n in b.frames if n not in skip]
        for name in names:
            pd.testing.assert_frame_equal(a.frame(name), b.frame(name), check_exact=True, obj=name)

    return check

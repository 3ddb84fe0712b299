"""NaN/Inf in weights or edits: one ``Error:`` line naming the model, tensor and count, exit 2, every input
byte unchanged, nothing written — or, with ``--allow-nonfinite``, null numbers and a warning."""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tunelens.cli import cli
from tunelens.testing import perturb

BAD = "model.layers.1.mlp.up_proj.weight"


def _poison(value: float) -> Callable[[str, torch.Tensor], torch.Tensor]:
    def fn(name: str, t: torch.Tensor) -> torch.Tensor:
        if name != BAD:
            return t
        t = t.clone()
        t.view(-1)[:3] = value
        return t

    return fn


@pytest.fixture(scope="module")
def models(tiny: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nonfinite")
    base = tiny("llama")
    return {
        "base": base,
        "ft": perturb(base, root / "ft", seed=3),
        "ft_nan": perturb(base, root / "ft_nan", fn=_poison(float("nan"))),
        "ft_inf": perturb(base, root / "ft_inf", fn=_poison(float("inf"))),
        "base_nan": perturb(base, root / "base_nan", fn=_poison(float("nan"))),
    }


def _hashes(*folders: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() for f in folders for p in sorted(f.rglob("*")) if p.is_file()
    }


def _run(args: list[str], inputs: list[Path]) -> tuple[int, str]:
    before = _hashes(*inputs)
    res = CliRunner().invoke(cli, args)
    assert _hashes(*inputs) == before, "an input changed"
    assert "Traceback" not in res.output
    return res.exit_code, res.output


def _one_error(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, output
    return lines[0]


def test_diff_stops_on_nan_in_a_fine_tune(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "d"
    code, output = _run(["diff", str(models["base"]), f"med={models['ft']}", f"nan={models['ft_nan']}", "-o", str(out)],
                        [models["base"], models["ft"], models["ft_nan"]])  # fmt: skip
    assert code == 2
    line = _one_error(output)
    assert "nan: 3 in " + BAD in line and "--allow-nonfinite" in line
    assert not out.exists()


def test_diff_allow_nonfinite_writes_null(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "d"
    args = ["diff", str(models["base"]), f"med={models['ft']}", f"nan={models['ft_nan']}", "-o", str(out)]
    code, output = _run([*args, "--allow-nonfinite", "-q"], [models["base"], models["ft_nan"]])
    assert code == 0, output
    summary = json.loads((out / "summary.json").read_text())
    nan_model = summary["models"][1]
    assert nan_model["global"]["cosine"] is None and nan_model["by_layer"][1]["cosine"] is None
    assert nan_model["by_layer"][0]["cosine"] is not None  # only the affected groups are null
    assert summary["models"][0]["global"]["cosine"] is not None
    matrix = summary["vector_cosine"]["matrix"]
    assert matrix[0][1] is None and matrix[1][0] is None and matrix[0][0] is not None
    rows = (out / "tensors.csv").read_text().splitlines()
    bad = next(r for r in rows if r.startswith(f"nan,{BAD},"))
    assert ",nan," not in bad.lower() and ",," in bad  # empty cells, never a number


def test_apply_refuses_an_inf_tau(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "neg"
    code, output = _run(["apply", str(models["base"]), "-v", f"{models['ft_inf']}:-1", "-o", str(out)],
                        [models["base"], models["ft_inf"]])  # fmt: skip
    assert code == 2
    line = _one_error(output)
    assert BAD in line and "ft_inf: 3 in" in line and "nothing was written" in line
    assert not out.exists() and not list(tmp_path.glob(".neg*"))


@pytest.mark.parametrize(
    ("lam", "message"),
    [
        ("1e39", "is not finite"),  # a float64 λ whose float32 product overflows: caught before writing
        ("-1e39", "is not finite"),
        ("1e400", "λ 1e400 is not a finite number"),  # infinite as written: refused when the spec is read
    ],
)
def test_apply_refuses_an_overflowing_lambda(models: dict[str, Path], tmp_path: Path, lam: str, message: str) -> None:
    out = tmp_path / "big"
    code, output = _run(["apply", str(models["base"]), "-v", f"{models['ft']}:{lam}", "-o", str(out)],
                        [models["base"], models["ft"]])  # fmt: skip
    assert code == 2
    assert message in _one_error(output)
    assert not out.exists()


def test_apply_allow_nonfinite_warns_and_writes(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "w"
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # the CLI prints each warning as one "warning:" line
        code, output = _run(
            ["apply", str(models["base"]), "-v", f"{models['ft_inf']}:-1", "-o", str(out), "--allow-nonfinite", "-q"],
            [models["base"], models["ft_inf"]],
        )
    assert code == 0, output
    assert f"warning: the edited tensor of {BAD} is not finite" in output
    assert (out / "model.safetensors").exists()


def test_subspace_stops_on_nan_in_the_base(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "s"
    code, output = _run(["subspace", str(models["base_nan"]), str(models["ft"]), "-o", str(out), "--no-cache"],
                        [models["base_nan"], models["ft"]])  # fmt: skip
    assert code == 2
    line = _one_error(output)
    assert BAD in line and "3 non-finite" in line
    code, output = _run(
        ["subspace", str(models["base_nan"]), str(models["ft"]), "-o", str(out), "--no-cache", "--allow-nonfinite"],
        [models["base_nan"], models["ft"]],
    )
    assert code == 0, output
    rows = [r for r in (out / "subspace.csv").read_text().splitlines() if f",{BAD}," in r]
    assert rows and all(",nan" not in r.lower() for r in rows)


def test_vector_stops_on_nan(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "v"
    code, output = _run(["vector", str(models["base"]), str(models["ft_nan"]), "-o", str(out)],
                        [models["base"], models["ft_nan"]])  # fmt: skip
    assert code == 2
    assert BAD in _one_error(output)
    assert not out.exists()


@pytest.mark.parametrize("poisoned", ["base_nan", "ft_inf"])
def test_spectrum_stops_on_nonfinite_and_allows_null_rows(
    models: dict[str, Path], tmp_path: Path, poisoned: str
) -> None:
    base, ft = (models["base_nan"], models["ft"]) if poisoned == "base_nan" else (models["base"], models["ft_inf"])
    out = tmp_path / "sp"
    code, output = _run(["spectrum", str(base), str(ft), "-o", str(out), "--no-cache"], [base, ft])
    assert code == 2 and not out.exists()
    line = _one_error(output)
    assert BAD in line
    assert ("has 3 non-finite value(s)" if poisoned == "base_nan" else f"3 in {BAD}") in line
    code, output = _run(["spectrum", str(base), str(ft), "-o", str(out), "--no-cache", "--allow-nonfinite"], [base, ft])
    assert code == 0, output
    import csv

    rows = list(csv.DictReader((out / "spectrum.csv").open()))
    bad = [r for r in rows if r["tensor"] == BAD]
    assert len(bad) == 1 and bad[0]["tau_norm"] == bad[0]["effective_rank"] == bad[0]["intruders"] == ""
    assert all(r["tau_norm"] != "" for r in rows if r["tensor"] != BAD)
    summary = json.loads((out / "summary.json").read_text())
    up = summary["models"][0]["by_component"]["up"]
    assert up["tensors"] == sum(1 for r in rows if r["component"] == "up")
    assert up["undefined"] == sum(1 for r in rows if r["component"] == "up" and r["effective_rank"] == "") >= 1

"""Undefined and non-finite numbers are never written as finite ones (issue 14 items 2-3, activations).

A cosine with an undefined value is null in JSON and an empty cell in CSV; +-inf is null in JSON with a
note (``nonfinite_values``) and ``inf`` in CSV; non-finite activations stop ``activations`` unless
``--allow-nonfinite``, and then exactly the affected numbers are null.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from tunelens.cli import cli
from tunelens.records import NONFINITE_KEY, write_csv, write_json
from tunelens.stats.accumulate import Sums, part_sums
from tunelens.stats.similarity import metrics, random_std, signflip_std, vector_cosine
from tunelens.testing import perturb


def _sums(*taus: np.ndarray, base: np.ndarray | None = None) -> Sums:
    w = torch.from_numpy(base if base is not None else np.ones_like(taus[0]))
    return part_sums(w, [(torch.from_numpy(t), True) for t in taus])


def test_vector_cosine_against_numpy_and_undefined_cases() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(1000).astype(np.float32), rng.standard_normal(1000).astype(np.float32)
    s = _sums(a, b)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    assert vector_cosine(s, 0, 1) == pytest.approx(a64 @ b64 / np.sqrt((a64 @ a64) * (b64 @ b64)), abs=6e-8)
    want_sf = np.sqrt(np.sum(a64**2 * b64**2)) / np.sqrt((a64 @ a64) * (b64 @ b64))
    assert signflip_std(s, 0, 1) == pytest.approx(want_sf, rel=1e-6)
    assert signflip_std(s, 0, 0) == 0.0 and vector_cosine(s, 0, 0) == pytest.approx(1.0)
    zero = _sums(a, np.zeros_like(a))  # a zero tau: the cosine is 0/0, undefined
    assert math.isnan(vector_cosine(zero, 0, 1)) and math.isnan(vector_cosine(zero, 1, 1))
    assert math.isnan(signflip_std(zero, 0, 1)) and math.isnan(signflip_std(zero, 1, 1))
    assert vector_cosine(zero, 0, 0) == pytest.approx(1.0)
    nan = a.copy()
    nan[3] = np.nan  # a NaN weight (read with --allow-nonfinite): every number it reaches is NaN
    s = _sums(nan, b)
    assert math.isnan(vector_cosine(s, 0, 1)) and math.isnan(signflip_std(s, 0, 1))
    m = metrics(s, 0)
    assert all(math.isnan(m[k]) for k in ("cosine", "one_minus_cosine", "relative_change"))
    inf = a.copy()
    inf[0] = np.inf
    s = _sums(inf, b)
    assert math.isnan(vector_cosine(s, 0, 1)) and math.isnan(metrics(s, 0)["cosine"])
    assert math.isnan(random_std(0)) and random_std(4) == 0.5


def test_diff_of_a_model_with_itself_has_null_vector_cosine(pair: tuple[Path, Path], tmp_path: Path) -> None:
    """The issue's ``diff base base``: tau = 0, so its vector cosine is undefined: null, not 0."""
    base, _ = pair
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["diff", str(base), str(base), "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())
    vc = s["vector_cosine"]
    assert vc["matrix"] == [[None]] and vc["baseline"]["signflip_std"] == [[None]]
    assert all(b["matrix"] == [[None]] for b in vc["by_component"].values())
    g = s["models"][0]["global"]
    assert g["cosine"] == 1.0 and g["relative_change"] == 0.0 and g["delta_norm"] == 0.0


def test_an_undefined_cosine_is_an_empty_csv_cell_and_null_json(pair: tuple[Path, Path], tmp_path: Path) -> None:
    """A tensor that is zero in base and fine-tune (e.g. Gemma norms initialised to 0): cosine 0/0."""
    base, _ = pair
    name = "model.layers.1.input_layernorm.weight"
    zero_base = perturb(base, tmp_path / "b0", fn=lambda n, t: torch.zeros_like(t) if n == name else t)
    ft = perturb(zero_base, tmp_path / "f0", only=lambda n: n != name)
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["diff", str(zero_base), str(ft), "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((out / "tensors.csv").open()))
    row = next(x for x in rows if x["tensor"] == name)
    assert row["cosine"] == "" and row["one_minus_cosine"] == "" and row["base_norm"] == "0.0"
    other = next(x for x in rows if x["tensor"] != name)
    assert 0.99 < float(other["cosine"]) <= 1.0
    frame = pd.read_csv(out / "tensors.csv")  # pandas reads the empty cell as NaN, not as a number
    assert frame.loc[frame["tensor"] == name, "cosine"].isna().all()
    s = json.loads((out / "summary.json").read_text())
    layer1 = next(x for x in s["models"][0]["by_layer"] if x["layer"] == 1)
    assert layer1["cosine"] is not None  # the layer as a whole is defined
    assert s["models"][0]["by_component"]["attn_norm"]["cosine"] is not None


def test_nan_and_inf_in_json_and_csv(tmp_path: Path) -> None:
    data = {"a": math.nan, "b": [1.0, math.inf, -math.inf], "c": {"x/y": math.inf}, "d": 0.5}
    text = write_json(tmp_path / "x.json", data).read_text()
    got = json.loads(text)  # strict JSON: no NaN / Infinity tokens
    assert "NaN" not in text and "Infinity" not in text
    assert got["a"] is None and got["b"] == [1.0, None, None] and got["c"] == {"x/y": None} and got["d"] == 0.5
    assert got[NONFINITE_KEY] == {"/b/1": "inf", "/b/2": "-inf", "/c/x~1y": "inf"}
    plain = json.loads(write_json(tmp_path / "y.json", {"a": 1.0, "b": math.nan}).read_text())
    assert NONFINITE_KEY not in plain
    rows = [{"v": math.nan, "w": math.inf}, {"v": 0.1, "w": -math.inf}, {"v": np.float64(0.25), "w": 3}]
    text = write_csv(tmp_path / "x.csv", rows, ["v", "w"]).read_text()
    assert text.splitlines() == ["v,w", ",inf", "0.1,-inf", "0.25,3"]
    frame = pd.read_csv(io.StringIO(text))
    assert frame["v"].isna().tolist() == [True, False, False] and frame["w"].tolist()[:2] == [math.inf, -math.inf]


@pytest.fixture(scope="module")
def nan_model(pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base with one NaN in layer 1's q_proj: layers 1 and 2 see NaN hidden states."""
    base, _ = pair
    name = "model.layers.1.self_attn.q_proj.weight"

    def poison(n: str, t: torch.Tensor) -> torch.Tensor:
        if n != name:
            return t
        t = t.clone()
        t[0, 0] = math.nan
        return t

    return perturb(base, tmp_path_factory.mktemp("nan") / "base_nan", fn=poison)


def _acts(models: list[str], out: Path, corpus: Path, *extra: str) -> Any:
    args = ["activations", *models, "--corpus", str(corpus), "--seq-len", "16", "--max-tokens", "64", "-o", str(out)]
    return CliRunner().invoke(cli, [*args, "-q", *extra])


def test_nonfinite_activations_stop_the_run(
    nan_model: Path, pair: tuple[Path, Path], corpus_file: Path, tmp_path: Path, fault: Any
) -> None:
    """The issue's ``activations base_nan``: exit 2 naming the model and layer (was: exit 0, fractions 0.0)."""
    base, _ = pair
    out = tmp_path / "out"
    args = ["activations", f"clean={base}", f"broken={nan_model}", "--corpus", corpus_file, "--seq-len", "16",
            "--max-tokens", "64", "-o", out, "-q"]  # fmt: skip
    fault(args, inputs=[base, nan_model, corpus_file], match="broken: .* non-finite .* in layer 1 .*--allow-nonfinite")


def test_allow_nonfinite_nulls_exactly_the_affected_numbers(
    nan_model: Path, pair: tuple[Path, Path], corpus_file: Path, tmp_path: Path
) -> None:
    base, _ = pair
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # the CLI prints each warning as one "warning:" line
        r = _acts([f"clean={base}", f"broken={nan_model}"], out, corpus_file, "--allow-nonfinite")
    assert r.exit_code == 0, r.output
    assert re.search(r"warning: broken: \d+ non-finite .* layer\(s\) 1, 2; .* null", r.output), r.output
    s = json.loads((out / "activations.json").read_text())
    clean, broken = s["models"]
    ref = _acts([f"clean={base}"], tmp_path / "ref", corpus_file)  # an independent run of the clean model
    assert ref.exit_code == 0, ref.output
    want = json.loads((tmp_path / "ref" / "activations.json").read_text())["models"][0]["fraction_active"]
    assert clean["fraction_active"] == want and clean["nonfinite_activations"] == [0, 0, 0]
    assert broken["fraction_active"][0] == want[0]  # layer 0 runs before the NaN: unaffected, equal
    assert broken["fraction_active"][1:] == [None, None] and broken["mean"] is None
    assert broken["nonfinite_activations"][0] == 0 and all(n > 0 for n in broken["nonfinite_activations"][1:])
    (p,) = s["pairs"]
    assert p["distance"][0] is not None and p["distance"][1:] == [None, None]
    assert p["mean"] is None and p["hamming_mean"] is None and p["sums"]["hamming_bits"][1:] == [None, None]
    rows = list(csv.DictReader((out / "activations.csv").open()))
    cells = {(r["name"], r["layer"], r["metric"]): r["value"] for r in rows}
    assert cells[("broken", "1", "fraction_active")] == "" and cells[("broken", "", "fraction_active")] == ""
    assert float(cells[("broken", "0", "fraction_active")]) == want[0]
    assert cells[("clean vs broken", "2", "distance")] == "" and cells[("clean vs broken", "0", "distance")] != ""


def test_the_activation_screen_counts_exactly() -> None:
    """The cheap float32-sum screen never misses a NaN/Inf and never counts an overflowing finite block."""
    from tunelens.activations.hooks import MlpSite, Taps

    taps = Taps([MlpSite(0, "x", torch.nn.Identity(), "output")], 4, lambda layer, mask: None)
    taps.expect(1, 2)
    taps._receive(0, torch.full((1, 2, 4), 3e38))  # finite, though its float32 sum overflows to inf
    assert taps.nonfinite == [0]
    v = torch.zeros(1, 2, 4)
    v[0, 0, 1], v[0, 1, 2], v[0, 1, 3] = math.nan, math.inf, -math.inf
    taps.expect(1, 2)
    taps._receive(0, v)
    assert taps.nonfinite == [3]
    taps.expect(1, 2)
    taps._receive(0, v.to(torch.bfloat16))
    assert taps.nonfinite == [6]

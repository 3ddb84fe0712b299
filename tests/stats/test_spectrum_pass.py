"""``spectrum`` end to end on tiny models against numpy's float64 SVDs; cache shared with subspace; CLI."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tunelens import api
from tunelens.cli import cli
from tunelens.config import Selection
from tunelens.stats.spectrum import DEFINITIONS, SPECTRUM_COLUMNS
from tunelens.testing import make_tiny, perturb, read_state

pytestmark = pytest.mark.usefixtures("single_blas")
MEASURES = ("tau_norm", "sigma_1", "effective_rank", "stable_rank", "energy_rank_90", "energy_rank_99",
            "amplification", "intruders")  # fmt: skip
INTRUDER = "model.layers.0.self_attn.o_proj.weight"


def _planted(base: Path, dst: Path) -> Path:
    """q: rank-2 τ; layer 0's o: an intruder (3σ₁ on a direction spread over W's 16 weakest left singular
    vectors); everything else: small full-rank noise."""
    gen = torch.Generator().manual_seed(5)

    def edit(name: str, t: torch.Tensor) -> torch.Tensor:
        if t.dim() != 2 or "layers." not in name:
            return t
        w = t.double()
        if name == INTRUDER:
            u, s, vh = torch.linalg.svd(w)
            x, y = u[:, -16:].sum(1) / 4, vh[-16:].sum(0) / 4
            return (w + 3 * s[0] * torch.outer(x, y)).float()
        if "q_proj" in name:
            a = torch.randn(t.shape[0], 2, generator=gen, dtype=torch.float64)
            b = torch.randn(2, t.shape[1], generator=gen, dtype=torch.float64)
            return (w + 0.05 * a @ b * w.square().mean().sqrt()).float()
        return (w + 0.03 * w.square().mean().sqrt() * torch.randn(t.shape, generator=gen, dtype=torch.float64)).float()

    return perturb(base, dst, fn=edit)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("spectrum")
    base = make_tiny("llama", root / "base", seed=3, tokenizer=False)
    return base, _planted(base, root / "ft")


def _check(row: dict[str, Any], ref: dict[str, float]) -> None:
    for col in MEASURES:
        if col in ("energy_rank_90", "energy_rank_99", "intruders"):
            assert row[col] == ref[col], col
        else:
            assert row[col] == pytest.approx(ref[col], rel=2e-5), col


@pytest.mark.parametrize("method", ["gram", "svd"])
def test_rows_match_numpy(planted: tuple[Path, Path], method: str, spectrum_ref: Any) -> None:
    base, ft = planted
    res = api.spectrum(base, [f"med={ft}"], method=method, use_cache=False, amp_rank=4)
    sb, sf = read_state(base), read_state(ft)
    assert len(res.rows) == 3 * 7 and [r["model"] for r in res.rows] == ["med"] * 21
    for r in res.rows:
        w = sb[r["tensor"]].double().numpy()
        tau = sf[r["tensor"]].double().numpy() - w
        assert r["shape"] == f"{w.shape[0]}x{w.shape[1]}" and r["head"] == ""
        _check(r, spectrum_ref(w, tau, 10, 0.5, 4))
        if r["component"] == "q":
            assert r["effective_rank"] <= 2 and r["energy_rank_99"] <= 2 and r["stable_rank"] <= 2
    by_tensor = {r["tensor"]: r for r in res.rows}
    assert by_tensor[INTRUDER]["intruders"] == 1
    assert sum(r["intruders"] for r in res.rows) == 1  # small full-rank noise makes none
    assert set(res.summary["decomposition"]["tau_methods"]) == {method}


def test_cache_is_shared_with_subspace(planted: tuple[Path, Path], tmp_path: Path) -> None:
    base, ft = planted
    cache = tmp_path / "cache"
    api.subspace(base, [ft], cache_dir=cache, method="gram")
    first = api.spectrum(base, [ft], cache_dir=cache, method="gram")
    # subspace forms a tall W's U only as far as its k needs (U = W V / s); intruders need all of U: those
    # entries are decomposed again (and replaced), the others are hits
    shapes = [tuple(int(x) for x in r["shape"].split("x")) for r in first.rows]
    wide = sum(1 for out, inn in shapes if out <= inn)
    assert 0 < wide < 21
    assert (first.summary["cache"]["hits"], first.summary["cache"]["misses"]) == (wide, 21 - wide)
    second = api.spectrum(base, [ft], cache_dir=cache, method="gram")
    assert (second.summary["cache"]["hits"], second.summary["cache"]["misses"]) == (21, 0)
    assert second.summary["decomposition"]["decompose_seconds"] == 0
    assert second.rows == first.rows
    nocache = api.spectrum(base, [ft], use_cache=False, method="gram")
    assert nocache.rows == first.rows
    other = tmp_path / "cache2"
    api.spectrum(base, [ft], cache_dir=other, method="gram")
    again = api.subspace(base, [ft], cache_dir=other, method="gram")
    assert (again.summary["cache"]["hits"], again.summary["cache"]["misses"]) == (21, 0)


def test_per_head_matches_slicing_by_hand(planted: tuple[Path, Path], spectrum_ref: Any) -> None:
    base, ft = planted  # 4 heads, 2 kv heads, head_dim 8, hidden 32
    res = api.spectrum(base, [ft], per_head=True, use_cache=False, intruder_k=3)
    sb, sf = read_state(base), read_state(ft)
    for comp, n in {"q": 4, "k": 2, "v": 2, "o": 4}.items():
        name = f"model.layers.1.self_attn.{comp}_proj.weight"
        heads = [r for r in res.rows if r["tensor"] == name and r["head"] != ""]
        assert [r["head"] for r in heads] == list(range(n))
        w_full = sb[name].double().numpy()
        t_full = sf[name].double().numpy() - w_full
        for r in heads:
            h = r["head"]
            cut = (slice(None), slice(8 * h, 8 * h + 8)) if comp == "o" else (slice(8 * h, 8 * h + 8), slice(None))
            assert r["shape"] == ("32x8" if comp == "o" else "8x32")
            _check(r, spectrum_ref(w_full[cut], t_full[cut], 3, 0.5, 16))
    assert set(res.summary["models"][0]["heads_by_component"]) == {"q", "k", "v", "o"}


def test_phi3_fused_gpt2_layout_and_vector_folder(
    tiny: Callable[..., Path], tuned: Callable[..., Path], tmp_path: Path, spectrum_ref: Any
) -> None:
    phi = tiny("phi3")
    res = api.spectrum(phi, [tuned(phi, scale=0.05)], use_cache=False)
    shapes = {r["component"]: r["shape"] for r in res.rows if r["layer"] == 0}
    assert shapes == {"q": "32x32", "k": "16x32", "v": "16x32", "o": "32x32", "gate": "64x32", "up": "64x32",
                      "down": "32x64"}  # fmt: skip
    gpt = tiny("gpt2")
    ft = tuned(gpt, scale=0.05)
    res = api.spectrum(gpt, [ft], use_cache=False)
    sb, sf = read_state(gpt), read_state(ft)
    name = "transformer.h.0.mlp.c_fc.weight"  # Conv1D [in=32, out=128]
    (row,) = [r for r in res.rows if r["tensor"] == name]
    w = sb[name].double().numpy().T
    assert (row["component"], row["shape"]) == ("up", "128x32")
    _check(row, spectrum_ref(w, sf[name].double().numpy().T - w))
    vec = api.vector(gpt, ft, tmp_path / "vec")
    again = api.spectrum(gpt, [f"{ft.name}={vec}"], use_cache=False)
    assert again.rows == res.rows


def test_aggregates_by_hand(planted: tuple[Path, Path], tmp_path: Path) -> None:
    base, ft = planted
    res = api.spectrum(base, [ft], use_cache=False, selection=Selection(layers=(0, 1)))
    m = res.summary["models"][0]
    q = [r for r in res.rows if r["component"] == "q"]
    agg = m["by_component"]["q"]
    assert agg["tensors"] == 2 and agg["undefined"] == 0
    assert agg["mean"]["effective_rank"] == pytest.approx(sum(r["effective_rank"] for r in q) / 2)
    assert m["by_group"]["attention"]["intruders_total"] == 1 and m["by_group"]["mlp"]["intruders_total"] == 0
    assert m["by_group"]["all"]["tensors_with_intruders"] == 1
    assert [x["layer"] for x in m["by_layer"]] == [0, 1]
    # an untouched tensor has no spectrum: undefined, left out of the means
    zero = perturb(base, tmp_path / "zero", fn=lambda n, t: t if "layers.0.mlp" in n else t + 0.01)
    res0 = api.spectrum(base, [zero], use_cache=False, selection=Selection(layers=(0,), components=("up", "down")))
    up = [r for r in res0.rows if r["component"] == "up"][0]
    assert math.isnan(up["effective_rank"]) and up["tau_norm"] == 0 and up["intruders"] == 0
    assert res0.summary["models"][0]["by_component"]["up"]["undefined"] == 1


def test_cli_writes_outputs_and_rejects_bad_input(planted: tuple[Path, Path], tmp_path: Path) -> None:
    base, ft = planted
    out = tmp_path / "spec"
    runner = CliRunner()
    args = ["spectrum", str(base), f"med={ft}", "-o", str(out), "--cache-dir", str(tmp_path / "c")]
    r = runner.invoke(cli, [*args, "--intruder-k", "4", "--intruder-eps", "0.3", "--amp-rank", "2", "--per-head"])
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and "intruders" in r.output
    with (out / "spectrum.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == SPECTRUM_COLUMNS == (
        "model", "tensor", "layer", "component", "head", "shape", "tau_norm", "sigma_1", "effective_rank",
        "stable_rank", "energy_rank_90", "energy_rank_99", "amplification", "intruders",
    )  # fmt: skip
    assert len([x for x in rows if x["head"] == ""]) == 21 and len([x for x in rows if x["head"] != ""]) == 3 * 12
    summary = json.loads((out / "summary.json").read_text())
    assert summary["options"] == {"intruder_k": 4, "intruder_eps": 0.3, "amp_rank": 2, "per_head": True,
                                  "method": "auto"}  # fmt: skip
    for col in SPECTRUM_COLUMNS[6:]:
        assert col in summary["definitions"], col
    assert summary["definitions"] == json.loads(json.dumps(DEFINITIONS))
    for key in ("tunelens_version", "inputs", "cache", "wall_seconds", "peak_rss_bytes", "command"):
        assert key in summary
    assert np.isfinite([float(x["effective_rank"]) for x in rows]).all()
    assert runner.invoke(cli, args).exit_code == 2  # exists without --force
    for bad in (["--intruder-eps", "1.5"], ["--intruder-k", "0"], ["--amp-rank", "0"], ["--components", "embed"]):
        res = runner.invoke(cli, [*args, "--force", *bad])
        assert res.exit_code == 2 and res.output.startswith("Error:") and len(res.output.strip().splitlines()) == 1, (
            bad,
            res.output,
        )


def test_an_adapter_is_read_as_its_factors(tiny: Any, tmp_path: Path) -> None:
    """A PEFT adapter's τ = s·B A, kept factored, gives the spectrum of PEFT's own merge (dense τ)."""
    from tunelens.testing import make_lora, merge_lora

    base = tiny("llama")
    adapter = make_lora(base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj", "up_proj", "o_proj"])
    merged = merge_lora(base, adapter, tmp_path / "merged")
    a = api.spectrum(base, [adapter], use_cache=False, method="svd")
    m = api.spectrum(base, [merged], use_cache=False, method="svd")
    assert a.summary["decomposition"]["tau_methods"].get("factors", 0) > 0
    assert [(r["tensor"], r["shape"]) for r in a.rows] == [(r["tensor"], r["shape"]) for r in m.rows]
    for ra, rm in zip(a.rows, m.rows, strict=True):
        if rm["tau_norm"] == 0:  # an untouched weight: tau = 0 both ways
            assert ra["tau_norm"] == 0 and math.isnan(ra["effective_rank"])
            continue
        assert ra["energy_rank_99"] <= 4 and ra["energy_rank_99"] == rm["energy_rank_99"]
        for key in ("tau_norm", "sigma_1", "effective_rank", "stable_rank", "amplification"):
            assert ra[key] == pytest.approx(rm[key], rel=2e-3), (ra["tensor"], key)
        assert ra["intruders"] == rm["intruders"]

"""``subspace`` end to end on tiny models against a numpy/scipy reference; heads, fused, vectors, cache."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.linalg
import torch
from click.testing import CliRunner

from tunelens import api
from tunelens.cli import cli
from tunelens.config import Selection
from tunelens.testing import make_tiny, perturb, read_state

COMPS = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate", "up_proj": "up"}

pytestmark = pytest.mark.usefixtures("single_blas")


def _component(name: str) -> str | None:
    return next((c for key, c in {**COMPS, "down_proj": "down"}.items() if f".{key}." in name), None)


def _rows(result: Any, **match: Any) -> list[dict[str, Any]]:
    return [r for r in result.rows if all(r[k] == v for k, v in match.items())]


@pytest.mark.parametrize("method", ["gram", "svd"])
def test_llama_rows_match_reference(
    tiny: Callable[..., Path], tuned: Callable[..., Path], tmp_path: Path, method: str, ssa_ref: Any, tau_ref: Any
) -> None:
    base = tiny("llama")
    ft = tuned(base, scale=0.05)
    res = api.subspace(
        base,
        [f"med={ft}"],
        energy=[0.5, 0.9],
        rank=[4],
        method=method,
        cache_dir=tmp_path / "c",
        tau_rank=3,
        tau_spectrum=True,
    )
    sb, sf = read_state(base), read_state(ft)
    names = [n for n in sb if _component(n) and sb[n].dim() == 2]
    assert len(names) == 3 * 7
    assert {r["tensor"] for r in res.rows} == set(names)
    assert len(res.rows) == len(names) * 3
    assert res.summary["cache"]["misses"] == len(names)  # three criteria, one decomposition per tensor
    for r in res.rows:
        w = sb[r["tensor"]].double().numpy()
        tau = (sf[r["tensor"]].double() - sb[r["tensor"]].double()).numpy()
        kind, value = r["criterion"].split("=")
        ref = ssa_ref(w, tau, kind, float(value))
        assert r["component"] == _component(r["tensor"]) and r["method"] == method
        assert (r["rows"], r["cols"]) == w.shape and r["k"] == ref["k"]
        assert r["energy"] == pytest.approx(ref["energy"], rel=1e-9)
        for col in ("share_left", "share_right", "share_both"):
            assert r[col] == pytest.approx(ref[col], rel=1e-4, abs=1e-7), col
        assert r["baseline_both"] == pytest.approx(ref["k"] ** 2 / w.size)
        assert r["ratio_left"] == pytest.approx(r["share_left"] / (ref["k"] / w.shape[0]))
        assert r["tau_norm"] == pytest.approx(np.linalg.norm(tau), rel=1e-5)
        erank, top = tau_ref(tau, 3)
        assert r["tau_effective_rank"] == pytest.approx(erank, rel=1e-5)
        assert r["tau_top_r_share"] == pytest.approx(top, rel=1e-5)


def test_tau_spectrum_is_opt_in(tiny: Callable[..., Path], tuned: Callable[..., Path], tmp_path: Path) -> None:
    """Off by default (it costs a float64 Gram of τ per tensor and model): empty columns, never zeros."""
    base = tiny("llama")
    res = api.subspace(base, [f"med={tuned(base, scale=0.05)}"], cache_dir=tmp_path / "c")
    assert res.rows and all(math.isnan(r["tau_effective_rank"]) and r["tau_top_r"] == "" for r in res.rows)
    assert res.summary["options"]["tau_spectrum"] is False


def _plant(base: Path, dst: Path, k: int, inside: set[str]) -> Path:
    """A fine-tune whose τ lies in W's top-k subspace for components in ``inside``, in the complement else."""

    def edit(name: str, t: torch.Tensor) -> torch.Tensor:
        comp = _component(name)
        if comp is None or t.dim() != 2:
            return t
        w = t.double().numpy()
        u, _, vt = scipy.linalg.svd(w, full_matrices=False)
        rng = np.random.default_rng(abs(hash(name)) % 2**32)
        if comp in inside:
            tau = u[:, :k] @ rng.standard_normal((k, k)) @ vt[:k]
        else:
            uf, _, vtf = scipy.linalg.svd(w, full_matrices=True)
            tau = uf[:, k:] @ rng.standard_normal((w.shape[0] - k, w.shape[1] - k)) @ vtf[k:]
        tau *= 0.01 * np.linalg.norm(w) / np.linalg.norm(tau)
        return torch.from_numpy(w + tau)

    return perturb(base, dst, fn=edit)


def test_planted_model_reads_one_and_zero(tiny: Callable[..., Path], tmp_path: Path) -> None:
    base = tiny("llama", seed=3)
    ft = _plant(base, tmp_path / "ft", k=6, inside={"v", "o", "q"})
    res = api.subspace(base, [ft], rank=[6], use_cache=False, method="gram")
    for r in res.rows:
        expect = 1.0 if r["component"] in ("v", "o", "q") else 0.0
        for col in ("share_left", "share_right", "share_both"):
            assert r[col] == pytest.approx(expect, abs=2e-4), (r["tensor"], col)
    t4 = {row["share"]: row for row in res.summary["table4"]["rank=6"]["rows"]}
    assert t4["both"]["W_V"] == pytest.approx(1.0, abs=2e-4) and t4["both"]["W_up"] == pytest.approx(0, abs=2e-4)


def test_per_head_matches_slicing_by_hand(tiny: Callable[..., Path], tuned: Callable[..., Path], ssa_ref: Any) -> None:
    base = tiny("llama")  # 4 heads, 2 kv heads (GQA), head_dim 8, hidden 32
    ft = tuned(base, scale=0.05)
    res = api.subspace(base, [ft], energy=0.9, per_head=True, use_cache=False)
    sb, sf = read_state(base), read_state(ft)
    counts = {"q": 4, "k": 2, "v": 2, "o": 4}
    for comp, n in counts.items():
        name = f"model.layers.1.self_attn.{comp}_proj.weight"
        head_rows = [r for r in _rows(res, tensor=name) if r["head"] != ""]
        assert [r["head"] for r in head_rows] == list(range(n))
        w_full = sb[name].double().numpy()
        t_full = sf[name].double().numpy() - w_full
        for r in head_rows:
            h = r["head"]
            cut = (slice(None), slice(8 * h, 8 * h + 8)) if comp == "o" else (slice(8 * h, 8 * h + 8), slice(None))
            ref = ssa_ref(w_full[cut], t_full[cut], "energy", 0.9)
            assert (r["rows"], r["cols"]) == ((32, 8) if comp == "o" else (8, 32))
            assert r["k"] == ref["k"]
            for col in ("share_left", "share_right", "share_both"):
                assert r[col] == pytest.approx(ref[col], rel=1e-4, abs=1e-7)
    assert set(res.summary["models"][0]["by_criterion"]["energy=0.9"]["heads_by_component"]) == set(counts)
    assert not [r for r in res.rows if r["component"] in ("gate", "up", "down") and r["head"] != ""]


def test_phi3_fused_parts_and_gpt2_layout(tiny: Callable[..., Path], tuned: Callable[..., Path], ssa_ref: Any) -> None:
    phi = tiny("phi3")
    res = api.subspace(phi, [tuned(phi, scale=0.05)], rank=3, use_cache=False, per_head=True)
    layer0 = [r for r in res.rows if r["layer"] == 0 and r["head"] == ""]
    shapes = {r["component"]: (r["rows"], r["cols"]) for r in layer0}
    assert shapes == {"q": (32, 32), "k": (16, 32), "v": (16, 32), "o": (32, 32), "gate": (64, 32), "up": (64, 32),
                      "down": (32, 64)}  # fmt: skip
    gpt = tiny("gpt2")
    ft = tuned(gpt, scale=0.05)
    res = api.subspace(gpt, [ft], rank=3, use_cache=False)
    sb, sf = read_state(gpt), read_state(ft)
    name = "transformer.h.0.mlp.c_fc.weight"  # Conv1D [in=32, out=128]
    (row,) = _rows(res, tensor=name)
    w = sb[name].double().numpy().T
    ref = ssa_ref(w, sf[name].double().numpy().T - w, "rank", 3)
    assert (row["component"], row["rows"], row["cols"]) == ("up", 128, 32)
    assert row["share_left"] == pytest.approx(ref["share_left"], rel=1e-4)
    assert row["share_right"] == pytest.approx(ref["share_right"], rel=1e-4)
    assert {r["component"] for r in res.rows} == {"q", "k", "v", "o", "up", "down"}
    assert res.summary["excluded"]  # 1-D biases of q/k/v/o/up/down are listed, never analysed


def test_vector_folder_gives_same_rows(tiny: Callable[..., Path], tuned: Callable[..., Path], tmp_path: Path) -> None:
    base = tiny("qwen2")  # q/k/v biases: 1-D, excluded
    ft = tuned(base, scale=0.05)
    vec = api.vector(base, ft, tmp_path / "vec")
    a = api.subspace(base, [f"m={ft}"], use_cache=False)
    b = api.subspace(base, [f"m={vec}"], use_cache=False)
    assert len(a.rows) == len(b.rows) == 3 * 7
    for ra, rb in zip(a.rows, b.rows, strict=True):
        assert ra == rb


def test_cache_hits_identical_and_invalidated(tmp_path: Path, tuned: Callable[..., Path]) -> None:
    base = make_tiny("mistral", tmp_path / "base", tokenizer=False)
    ft = tuned(base, scale=0.05)
    cache = tmp_path / "cache"
    first = api.subspace(base, [ft], cache_dir=cache, method="gram", energy=[0.5, 0.9])
    assert (first.summary["cache"]["hits"], first.summary["cache"]["misses"]) == (0, 21)
    assert len(list(cache.rglob("*.safetensors"))) == 21
    second = api.subspace(base, [ft], cache_dir=cache, method="gram", energy=[0.5, 0.9])
    assert (second.summary["cache"]["hits"], second.summary["cache"]["misses"]) == (21, 0)
    assert second.rows == first.rows
    # same shapes and headers, new values in one tensor: only that tensor misses
    changed = "model.layers.2.mlp.up_proj.weight"
    base2 = perturb(base, tmp_path / "base2", scale=0.1, only=lambda n: n == changed)
    ft2 = perturb(base2, tmp_path / "ft2", scale=0.05)
    third = api.subspace(base2, [ft2], cache_dir=cache, method="gram", energy=[0.5, 0.9])
    assert (third.summary["cache"]["hits"], third.summary["cache"]["misses"]) == (20, 1)
    nocache = api.subspace(base2, [ft2], use_cache=False, method="gram", energy=[0.5, 0.9])
    assert nocache.rows == third.rows and nocache.summary["cache"]["folder"] is None
    # a per-head run keys its head bases separately
    heads = api.subspace(base, [ft], cache_dir=cache, method="gram", per_head=True)
    assert heads.summary["cache"]["misses"] == 3 * 4


def _same_rows(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    """Row lists equal field by field (floats to 1e-9 relative: a cached basis is re-used in BLAS calls of other
    shapes than the fresh one, which reorders float64 sums), NaN equal to NaN; a failure names the row and field."""
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x.keys() == y.keys(), i
        for key in x:
            u, v = x[key], y[key]
            both_nan = isinstance(u, float) and isinstance(v, float) and math.isnan(u) and math.isnan(v)
            close = isinstance(u, float) and isinstance(v, float) and u == pytest.approx(v, rel=1e-9, abs=1e-12)
            assert both_nan or close or u == v, (i, x.get("tensor"), key, u, v)


def test_cache_keeps_the_method_of_a_fallback(tmp_path: Path, tiny: Callable[..., Path], ssa_ref: Any) -> None:
    """k beyond a rank-deficient tensor's resolved gram columns: svd instead, cached (as svd) too."""
    low = "model.layers.0.mlp.up_proj.weight"

    def rank3(name: str, t: torch.Tensor) -> torch.Tensor:
        return t[:, :3] @ t[:3] if name == low else t

    base = perturb(tiny("llama"), tmp_path / "base", fn=rank3)
    ft = perturb(base, tmp_path / "ft", scale=0.05)
    runs = [api.subspace(base, [ft], cache_dir=tmp_path / "c", method="gram", rank=[2, 5]) for _ in range(2)]
    assert [r.summary["cache"]["hits"] for r in runs] == [0, 22]  # the rank-3 tensor: a gram and an svd entry
    _same_rows(runs[0].rows, runs[1].rows)
    assert runs[1].summary["decomposition"]["decompose_seconds"] == 0
    low_rows = _rows(runs[1], tensor=low)
    assert {r["method"] for r in low_rows} == {"svd"}
    assert {r["method"] for r in runs[1].rows if r["tensor"] != low} == {"gram"}
    sb, sf = read_state(base), read_state(ft)
    w = sb[low].double().numpy()
    for row in low_rows:
        ref = ssa_ref(w, sf[low].double().numpy() - w, "rank", row["k"])
        assert row["share_both"] == pytest.approx(ref["share_both"], rel=1e-4)


def test_aggregates_plain_and_energy_weighted(tiny: Callable[..., Path], tuned: Callable[..., Path]) -> None:
    base = tiny("llama")
    ft = tuned(base, scale=0.05, only=lambda n: "layers.0." in n or "layers.1.mlp" in n)
    res = api.subspace(base, [ft], use_cache=False, selection=Selection(layers=(0, 1)))
    block = res.summary["models"][0]["by_criterion"]["energy=0.9"]
    up = [r for r in res.rows if r["component"] == "up"]
    plain = sum(r["share_left"] for r in up) / 2
    weighted = sum(r["share_left"] * r["tau_norm"] ** 2 for r in up) / sum(r["tau_norm"] ** 2 for r in up)
    assert block["by_component"]["up"]["plain_mean"]["share_left"] == pytest.approx(plain)
    assert block["by_component"]["up"]["energy_weighted"]["share_left"] == pytest.approx(weighted)
    q = [r for r in res.rows if r["component"] == "q"]  # layer 1 attention untouched: τ = 0 → undefined
    assert math.isnan([r for r in q if r["layer"] == 1][0]["share_left"])
    assert block["by_component"]["q"]["undefined"] == 1
    assert block["by_component"]["q"]["plain_mean"]["share_left"] == pytest.approx(q[0]["share_left"])
    assert [x["layer"] for x in block["by_layer"]] == [0, 1]


def test_cli_writes_outputs_and_rejects_bad_input(
    tiny: Callable[..., Path], tuned: Callable[..., Path], tmp_path: Path
) -> None:
    base = tiny("llama")
    ft = tuned(base, scale=0.05)
    out = tmp_path / "ssa"
    runner = CliRunner()
    args = ["subspace", str(base), f"med={ft}", "-o", str(out), "--cache-dir", str(tmp_path / "c")]
    r = runner.invoke(cli, [*args, "--energy", "0.5,0.9", "--rank", "4", "--rank-fraction", "0.25", "--per-head"])
    assert r.exit_code == 0, r.output
    assert "W_up" in r.output and "wrote" in r.output
    with (out / "subspace.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:15] == [
        "model", "tensor", "layer", "component", "head", "rows", "cols", "k", "energy", "share_left",
        "share_right", "share_both", "baseline_left", "baseline_right", "baseline_both",
    ]  # fmt: skip
    assert {row["criterion"] for row in rows} == {"energy=0.5", "energy=0.9", "rank_fraction=0.25", "rank=4"}
    summary = json.loads((out / "summary.json").read_text())
    for key in ("definitions", "tunelens_version", "inputs", "table4", "cache", "wall_seconds", "peak_rss_bytes"):
        assert key in summary
    assert summary["models"][0]["name"] == "med"
    assert runner.invoke(cli, args).exit_code == 2  # exists without --force
    for bad in (["--energy", "1.5"], ["--rank", "x"], ["--components", "embed"], ["--energy", "0.9,0.9"]):
        r = runner.invoke(cli, [*args, "--force", *bad])
        assert r.exit_code == 2 and r.output.startswith("Error:") and len(r.output.strip().splitlines()) == 1, bad

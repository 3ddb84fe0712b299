"""``tunelens.load`` on subspace, spectrum and activations folders: frames equal the CSV / JSON they came
from; ``to_pandas()`` of the api results equals the loaded folders."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import tunelens

SPECTRUM_COLUMNS = (
    "model", "tensor", "layer", "component", "head", "shape", "tau_norm", "sigma_1", "effective_rank",
    "stable_rank", "energy_rank_90", "energy_rank_99", "amplification", "intruders",
)  # fmt: skip


def _rows(df: pd.DataFrame, **where: Any) -> pd.DataFrame:
    mask = pd.Series(True, index=df.index)
    for k, v in where.items():
        mask &= df[k] == v
    return df[mask]


def test_subspace_frames_equal_the_files(outputs: Any, check_csv: Callable[..., None]) -> None:
    r = tunelens.load(outputs.subspace)
    assert r.kind == "subspace"
    check_csv(r.tensors, outputs.subspace / "subspace.csv")
    assert str(r.tensors["head"].dtype) == "Int64" and r.tensors["head"].isna().all()
    s = json.loads((outputs.subspace / "summary.json").read_text())
    seen = {"components": 0, "groups": 0, "layers": 0}
    for m in s["models"]:
        for crit, block in m["by_criterion"].items():
            for key, frame, label in (("by_component", r.components, "component"), ("by_group", r.groups, "group")):
                for name, rec in block[key].items():
                    for agg in ("plain_mean", "energy_weighted"):
                        hit = _rows(frame, model=m["name"], criterion=crit, aggregate=agg, **{label: name})
                        assert len(hit) == 1
                        row = hit.iloc[0]
                        assert all(row[k] == v for k, v in rec[agg].items())
                        assert row["tensors"] == rec["tensors"] and row["mean_k"] == rec["mean_k"]
                        seen["components" if label == "component" else "groups"] += 1
            for rec in block["by_layer"]:
                for group, cell in rec.items():
                    if group == "layer":
                        continue
                    for agg in ("plain_mean", "energy_weighted"):
                        hit = _rows(r.layers, model=m["name"], criterion=crit, layer=rec["layer"], group=group,
                                    aggregate=agg)  # fmt: skip
                        assert len(hit) == 1 and all(hit.iloc[0][k] == v for k, v in cell[agg].items())
                        seen["layers"] += 1
    assert (len(r.components), len(r.groups), len(r.layers)) == (seen["components"], seen["groups"], seen["layers"])


def test_subspace_to_pandas(outputs: Any, frames_equal: Callable[..., None]) -> None:
    frames_equal(outputs.results["subspace"].to_pandas(), tunelens.load(outputs.subspace))


def test_spectrum_to_pandas(
    tiny: Callable[..., Path], tuned: Callable[..., Path], tmp_path: Path, frames_equal: Callable[..., None]
) -> None:
    from tunelens import api

    base = tiny("llama")
    result = api.spectrum(base, [tuned(base, scale=0.05)], out=tmp_path / "sp", use_cache=False)
    loaded = tunelens.load(tmp_path / "sp")
    frames_equal(result.to_pandas(), loaded)
    assert len(loaded.tensors) == len(result.rows) > 0


def test_spectrum_folder_from_its_documented_columns(tmp_path: Path, check_csv: Callable[..., None]) -> None:
    """spectrum.csv as DESIGN.md §6 fixes it, written by hand (the command is built elsewhere)."""
    rows = [
        ["med", "model.layers.0.mlp.up_proj.weight", "0", "up", "", "64x32", "0.018", "0.0061", "27.31",
         "8.7", "24", "30", "3.25", "0"],
        ["med", "model.layers.0.self_attn.q_proj.weight", "0", "q", "1", "8x32", "0.0071", "0.0030", "7.2",
         "5.6", "7", "8", "", "1"],
        ["math", "model.layers.1.mlp.up_proj.weight", "1", "up", "", "64x32", "1e-05", "nan", "", "", "", "", "inf",
         ""],
    ]  # fmt: skip
    folder = tmp_path / "spec"
    folder.mkdir()
    with (folder / "spectrum.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([SPECTRUM_COLUMNS, *rows])
    (folder / "summary.json").write_text(json.dumps({"definitions": {"effective_rank": "exp(entropy)"}}))
    r = tunelens.load(folder)
    assert r.kind == "spectrum" and r.frames == ("tensors",) and r.definitions == {"effective_rank": "exp(entropy)"}
    check_csv(r.tensors, folder / "spectrum.csv")
    dtypes = {c: str(t) for c, t in r.tensors.dtypes.items()}
    assert dtypes["head"] == dtypes["energy_rank_90"] == dtypes["intruders"] == "Int64"
    assert dtypes["sigma_1"] == dtypes["amplification"] == "float64" and dtypes["shape"] == "str"
    assert math.isinf(r.tensors["amplification"].iloc[2]) and math.isnan(r.tensors["sigma_1"].iloc[2])


def test_activations_frames_equal_json_and_csv(outputs: Any) -> None:
    r = tunelens.load(outputs.activations)
    s = json.loads((outputs.activations / "activations.json").read_text())
    assert r.kind == "activations" and r.meta == s
    n_layers = len(s["models"][0]["fraction_active"])
    assert len(r.layers) == len(s["models"]) * n_layers and len(r.pairs) == len(s["pairs"]) * n_layers == 3 * n_layers
    for m in s["models"]:
        part = _rows(r.layers, model=m["name"]).sort_values("layer")
        assert list(part["fraction_active"]) == m["fraction_active"] and list(part["active"]) == m["active"]
        assert _rows(r.models, model=m["name"]).iloc[0]["mean"] == m["mean"]
    for p in s["pairs"]:
        part = _rows(r.pairs, a=p["a"], b=p["b"]).sort_values("layer")
        assert set(part["pair"]) == {f"{p['a']}↔{p['b']}"}
        for key in ("distance", "hamming", "distance_p50", "distance_p90", "distance_p99", "distance_max"):
            assert list(part[key]) == p[key]
        assert list(part["hamming_bits"]) == p["sums"]["hamming_bits"]
        assert _rows(r.pair_summary, a=p["a"], b=p["b"]).iloc[0]["mean"] == p["mean"]
    # activations.csv: the same numbers in long form (layer empty = the mean over layers)
    mean_of = {"fraction_active": "mean", "distance": "mean", "hamming": "hamming_mean"}
    with (outputs.activations / "activations.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            model, layer, metric = row["kind"] == "model", row["layer"], row["metric"]
            if model:
                hit = (
                    _rows(r.layers, model=row["name"], layer=int(layer))
                    if layer
                    else _rows(r.models, model=row["name"])
                )
            else:
                where = {"a": row["a"], "b": row["b"]}
                hit = _rows(r.pairs, layer=int(layer), **where) if layer else _rows(r.pair_summary, **where)
            column = metric if layer else mean_of[metric]
            assert len(hit) == 1 and hit.iloc[0][column] == float(row["value"]), row


def test_activations_to_pandas(outputs: Any, frames_equal: Callable[..., None]) -> None:
    frames_equal(outputs.results["activations"].to_pandas(), tunelens.load(outputs.activations))


def test_the_csv_checker_catches_a_changed_cell(outputs: Any, check_csv: Callable[..., None]) -> None:
    df = tunelens.load(outputs.subspace).tensors.copy()
    df.loc[3, "share_left"] = df.loc[3, "share_left"] + 1e-15
    with pytest.raises(AssertionError, match="share_left"):
        check_csv(df, outputs.subspace / "subspace.csv")

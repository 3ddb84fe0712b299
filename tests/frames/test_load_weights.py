"""``tunelens.load`` on diff, vector, apply and lora folders: every frame equals the file it came from, and
``DiffResult.to_pandas()`` equals the loaded folder."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file

import tunelens
from tunelens import api


def _row(df: pd.DataFrame, **where: Any) -> pd.Series:
    mask = pd.Series(True, index=df.index)
    for k, v in where.items():
        mask &= df[k] == v
    hit = df[mask]
    assert len(hit) == 1, (where, len(hit))
    return hit.iloc[0]


def test_diff_frames_equal_the_files(outputs: Any, check_csv: Callable[..., None], tmp_path: Path) -> None:
    r = tunelens.load(outputs.diff)
    assert r.kind == "diff" and r.path == outputs.diff
    check_csv(r.tensors, outputs.diff / "tensors.csv")
    s = json.loads((outputs.diff / "summary.json").read_text())
    assert r.meta == s and r.definitions == s["definitions"]
    metrics = list(s["models"][0]["global"])
    n_comp = n_group = n_layer = 0
    for m in s["models"]:
        for scope in ("global", "without_embeddings"):
            row = _row(r.models, model=m["name"], scope=scope)
            assert all(row[k] == m[scope][k] for k in metrics)
        for c, vals in m["by_component"].items():
            row = _row(r.components, model=m["name"], component=c)
            assert all((row[k] == v) or (v is None and math.isnan(row[k])) for k, v in vals.items())
            n_comp += 1
        for g, vals in m["by_group"].items():
            assert all(_row(r.groups, model=m["name"], group=g)[k] == v for k, v in vals.items())
            n_group += 1
        for rec in m["by_layer"]:
            assert all(_row(r.layers, model=m["name"], layer=rec["layer"])[k] == v for k, v in rec.items())
            n_layer += 1
    assert (len(r.components), len(r.groups), len(r.layers), len(r.models)) == (n_comp, n_group, n_layer, 4)
    assert str(r.layers["layer"].dtype) == "Int64" and str(r.tensors["layer"].dtype) == "Int64"
    assert r.tensors["layer"].isna().sum() == sum(1 for line in (outputs.diff / "tensors.csv").open() if ",," in line)


def test_vector_cosine_pairs_carry_their_baselines(outputs: Any) -> None:
    r = tunelens.load(outputs.diff)
    vc = json.loads((outputs.diff / "summary.json").read_text())["vector_cosine"]
    assert vc["names"] == ["med", "math"]
    blocks = [({"scope": "global"}, vc), ({"scope": "without_embeddings"}, vc["without_embeddings"])]
    blocks += [({"scope": "component", "component": c}, b) for c, b in vc["by_component"].items()]
    blocks += [({"scope": "group", "group": g}, b) for g, b in vc["by_group"].items()]
    blocks += [({"scope": "layer", "layer": b["layer"]}, b) for b in vc["by_layer"]]
    assert len(r.vector_cosine) == len(blocks)  # one pair (med, math) per block
    for where, block in blocks:
        row = _row(r.vector_cosine, **where)
        assert (row["a"], row["b"]) == ("med", "math")
        assert row["cosine"] == block["matrix"][0][1] == block["matrix"][1][0]
        assert row["signflip_std"] == block["baseline"]["signflip_std"][0][1]
        assert row["random_std"] == block["baseline"]["random_std"] and row["numel"] == block["baseline"]["numel"]


def test_to_pandas_equals_the_loaded_folder(outputs: Any, frames_equal: Callable[..., None]) -> None:
    frames_equal(outputs.results["diff"].to_pandas(), tunelens.load(outputs.diff))


def test_layer_components_against_the_weights(
    tiny: Callable[..., Path], tuned: Callable[..., Path], tmp_path: Path
) -> None:
    """Qwen2 (q/k/v biases count with their component): ‖τ‖/‖W‖ per layer × component from the
    safetensors in float64 numpy, grouped by the layer / component tensors.csv names for each tensor."""
    base = tiny("qwen2")
    ft = tuned(base, scale=3e-2, seed=5)
    api.diff(base, [f"ft={ft}"], out=tmp_path / "d")
    r = tunelens.load(tmp_path / "d")
    w = {k: v.astype(np.float64) for k, v in load_file(str(next(base.glob("*.safetensors")))).items()}
    t = {k: v.astype(np.float64) for k, v in load_file(str(next(ft.glob("*.safetensors")))).items()}
    cells: dict[tuple[int, str], list[str]] = {}
    for _, row in r.tensors[r.tensors["layer"].notna()].iterrows():
        cells.setdefault((int(row["layer"]), row["component"]), []).append(row["tensor"])
    assert any(len(names) == 2 for names in cells.values())  # weight + bias in one cell
    lc = r.layer_components
    assert len(lc) == len(cells) and "definition" in lc.attrs
    for (layer, comp), names in cells.items():
        tau2 = sum(float(np.sum((t[n] - w[n]) ** 2)) for n in names)
        w2 = sum(float(np.sum(w[n] ** 2)) for n in names)
        row = _row(lc, model="ft", layer=layer, component=comp)
        assert row["tensors"] == len(names)
        assert row["relative_change"] == pytest.approx(math.sqrt(tau2 / w2), rel=1e-6)


def test_vector_apply_and_lora_folders(outputs: Any, check_csv: Callable[..., None]) -> None:
    vec = tunelens.load(outputs.vector)
    meta = json.loads((outputs.vector / "tunelens.json").read_text())
    assert vec.kind == "vector" and vec.meta == meta
    assert list(vec.inputs["role"]) == ["parent", "child"]
    for _, row in vec.inputs.iterrows():
        assert all(row[k] == v for k, v in meta[row["role"]].items())

    app = tunelens.load(outputs.apply / "tunelens.json")  # a file opens its folder
    meta = json.loads((outputs.apply / "tunelens.json").read_text())
    assert app.kind == "apply" and list(app.inputs["role"]) == ["base", "target"]
    assert list(app.terms["name"]) == [v["name"] for v in meta["vectors"]] == ["med", "math"]
    assert list(app.terms["scale"]) == [v["scale"] for v in meta["vectors"]] == [-1.0, 0.5]
    assert list(app.terms["sha256"]) == [v["sha256"] for v in meta["vectors"]]
    assert list(app.terms["mask_components"]) == [v["mask"]["components"] for v in meta["vectors"]]

    lora = tunelens.load(outputs.lora)
    assert lora.kind == "lora" and lora.frames == ("inputs", "tensors")
    check_csv(lora.tensors, outputs.lora / "lora.csv")

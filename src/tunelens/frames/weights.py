"""Frames of the weight-space outputs: ``diff`` (tensors.csv + summary.json) and the ``vector``, ``apply``
and ``lora`` folders (tunelens.json, lora.csv).

diff frames (every value is the file's own, none recomputed, except ``layer_components``):

- ``tensors``: tensors.csv, one row per model × tensor (or part of a fused tensor);
- ``models``: one row per model × ``scope`` (``global``, ``without_embeddings``);
- ``components`` / ``groups`` / ``layers``: one row per model × component / group / layer;
- ``vector_cosine``: one row per pair of tuning vectors (a before b in the order given, a ≠ b) × scope
  (``global``, ``without_embeddings``, ``component``, ``group``, ``layer``; the ``component`` / ``group``
  / ``layer`` column names the cell), with the null baselines ``random_std``, ``signflip_std``,
  ``null_mean`` beside each cosine;
- ``layer_components``: one row per model × layer × component, ``relative_change`` = √Σ‖τ‖² / √Σ‖W‖²
  over the tensors of the cell (from tensors.csv's norms; float64 ``math.fsum``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from tunelens.frames.results import Results
from tunelens.frames.tidy import frame, read_csv, read_json, scalars

LAYER_COMPONENTS_DEFINITION = (
    "per model x layer x component: relative_change = sqrt(sum delta_norm^2) / sqrt(sum base_norm^2) over the "
    "cell's tensors of tensors.csv (biases with their component, fused parts separately listed there), float64 "
    "math.fsum; tensors = how many rows of tensors.csv the cell holds"
)
SCOPES = ("global", "without_embeddings")


def _models(summary: Mapping[str, Any]) -> pd.DataFrame:
    rows = []
    for m in summary["models"]:
        for scope in SCOPES:
            if scope in m:
                rows.append({"model": m["name"], "scope": scope, **scalars(m[scope])})
    return frame(rows)


def _grouped(summary: Mapping[str, Any], key: str, label: str) -> pd.DataFrame:
    rows = []
    for m in summary["models"]:
        for name, values in m.get(key, {}).items():
            rows.append({"model": m["name"], label: name, **scalars(values)})
    return frame(rows, ["model", label])


def _layers(summary: Mapping[str, Any]) -> pd.DataFrame:
    return frame([{"model": m["name"], **scalars(rec)} for m in summary["models"] for rec in m.get("by_layer", [])])


def _pairs(names: Sequence[str], block: Mapping[str, Any], where: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows i < j of one block ``{"matrix", "baseline": {scalar or matrix...}}``."""
    base = block.get("baseline", {})
    rows = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            null = {k: (v[i][j] if isinstance(v, list) else v) for k, v in base.items()}
            rows.append({**where, "a": names[i], "b": names[j], "cosine": block["matrix"][i][j], **null})
    return rows


def _vector_cosine(summary: Mapping[str, Any]) -> pd.DataFrame:
    vc = summary.get("vector_cosine") or {}
    names = vc.get("names", [])
    rows: list[dict[str, Any]] = []
    if len(names) >= 2:
        rows += _pairs(names, vc, {"scope": "global"})
        if "without_embeddings" in vc:
            rows += _pairs(names, vc["without_embeddings"], {"scope": "without_embeddings"})
        for c, block in vc.get("by_component", {}).items():
            rows += _pairs(names, block, {"scope": "component", "component": c})
        for g, block in vc.get("by_group", {}).items():
            rows += _pairs(names, block, {"scope": "group", "group": g})
        for block in vc.get("by_layer", []):
            rows += _pairs(names, block, {"scope": "layer", "layer": block["layer"]})
    return frame(rows, ["scope", "component", "group", "layer", "a", "b", "cosine"])


def layer_components(tensors: pd.DataFrame) -> pd.DataFrame:
    """Relative change per model × layer × component from a diff ``tensors`` frame (see the module docstring)."""
    inside = tensors[tensors["layer"].notna()]
    rows = []
    for _, cell in inside.groupby(["model", "layer", "component"], sort=False):
        first = cell.iloc[0]
        base = math.sqrt(math.fsum(x * x for x in cell["base_norm"]))
        delta = math.sqrt(math.fsum(x * x for x in cell["delta_norm"]))
        rows.append({"model": first["model"], "layer": int(first["layer"]), "component": first["component"],
                     "tensors": len(cell), "numel": int(cell["numel"].sum()), "base_norm": base, "delta_norm": delta,
                     "relative_change": delta / base if base > 0 else math.nan})  # fmt: skip
    out = frame(rows, ["model", "layer", "component"])
    out.attrs["definition"] = LAYER_COMPONENTS_DEFINITION
    return out


def diff_results(
    summary: Mapping[str, Any], tensors: Callable[[], pd.DataFrame], *, path: Path | None = None
) -> Results:
    """The frames of one ``diff`` output: ``summary`` is summary.json, ``tensors`` builds tensors.csv's frame."""

    def cells() -> pd.DataFrame:
        return layer_components(res.frame("tensors"))

    res = Results(
        "diff",
        summary,
        {
            "tensors": tensors,
            "models": lambda: _models(summary),
            "components": lambda: _grouped(summary, "by_component", "component"),
            "groups": lambda: _grouped(summary, "by_group", "group"),
            "layers": lambda: _layers(summary),
            "vector_cosine": lambda: _vector_cosine(summary),
            "layer_components": cells,
        },
        path=path,
    )
    return res


def load_diff(folder: Path) -> Results:
    return diff_results(read_json(folder / "summary.json"), lambda: read_csv(folder / "tensors.csv"), path=folder)


def _inputs(meta: Mapping[str, Any], roles: Sequence[str]) -> pd.DataFrame:
    return frame([{"role": r, **scalars(meta[r])} for r in roles if isinstance(meta.get(r), dict)], ["role"])


def _terms(meta: Mapping[str, Any]) -> pd.DataFrame:
    rows = []
    for t in meta.get("vectors", []):
        mask = {f"mask_{k}": v for k, v in (t.get("mask") or {}).items()}
        scales = {f"scale_{k}": v for k, v in (t.get("component_scales") or {}).items()}
        rows.append({**scalars(t), **mask, **scales})
    return frame(rows, ["name", "path", "scale"])


def folder_results(kind: str, meta: Mapping[str, Any], folder: Path | None = None) -> Results:
    """A ``vector`` / ``apply`` / ``lora`` folder from its tunelens.json (and lora.csv)."""
    builders: dict[str, Callable[[], pd.DataFrame]] = {}
    if kind == "apply":
        builders["inputs"] = lambda: _inputs(meta, ("base", "target"))
        builders["terms"] = lambda: _terms(meta)
    else:
        builders["inputs"] = lambda: _inputs(meta, ("parent", "child"))
    if kind == "lora" and folder is not None and (folder / "lora.csv").exists():
        builders["tensors"] = lambda: read_csv(folder / "lora.csv")
    return Results(kind, meta, builders, path=folder)

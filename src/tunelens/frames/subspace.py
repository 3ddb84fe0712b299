"""Frames of ``subspace`` (subspace.csv + summary.json) and ``spectrum`` (spectrum.csv + summary.json).

subspace frames:

- ``tensors``: subspace.csv, one row per model × tensor (× head) × criterion;
- ``components`` / ``groups``: one row per model × criterion × component / group × ``aggregate``
  (``plain_mean``, ``energy_weighted``: how summary.json averages the tensors' shares), with the
  aggregate's shares, baselines and ratios and the cell's ``tensors``, ``undefined``, ``mean_k``, ``mean_energy``;
- ``layers``: the same per model × criterion × layer × group (``all``, ``attention``, ``mlp``).

spectrum frames: ``tensors`` (spectrum.csv: one row per model × 2-D tensor (× head), DESIGN.md §6
columns); its summary.json is ``meta``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from tunelens.frames.results import Results
from tunelens.frames.tidy import frame, read_csv, read_json, scalars


def _aggregates(where: dict[str, Any], record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per aggregate (a dict-valued key) of a cell record, with the cell's scalars on each row."""
    common = {**where, **scalars(record)}
    rows = [{**common, "aggregate": k, **scalars(v)} for k, v in record.items() if isinstance(v, dict)]
    return rows or [common]


def _by(summary: Mapping[str, Any], key: str, label: str) -> pd.DataFrame:
    rows = []
    for m in summary["models"]:
        for crit, block in m["by_criterion"].items():
            for name, rec in block.get(key, {}).items():
                rows += _aggregates({"model": m["name"], "criterion": crit, label: name}, rec)
    return frame(rows, ["model", "criterion", label, "aggregate"])


def _layers(summary: Mapping[str, Any]) -> pd.DataFrame:
    rows = []
    for m in summary["models"]:
        for crit, block in m["by_criterion"].items():
            for rec in block.get("by_layer", []):
                for group, cell in rec.items():
                    if isinstance(cell, dict):
                        where = {"model": m["name"], "criterion": crit, "layer": rec["layer"], "group": group}
                        rows += _aggregates(where, cell)
    return frame(rows, ["model", "criterion", "layer", "group", "aggregate"])


def subspace_results(
    summary: Mapping[str, Any], tensors: Callable[[], pd.DataFrame], *, path: Path | None = None
) -> Results:
    """The frames of one ``subspace`` output: ``summary`` is summary.json, ``tensors`` builds subspace.csv's."""
    return Results(
        "subspace",
        summary,
        {
            "tensors": tensors,
            "components": lambda: _by(summary, "by_component", "component"),
            "groups": lambda: _by(summary, "by_group", "group"),
            "layers": lambda: _layers(summary),
        },
        path=path,
    )


def load_subspace(folder: Path) -> Results:
    return subspace_results(read_json(folder / "summary.json"), lambda: read_csv(folder / "subspace.csv"), path=folder)


def spectrum_results(
    summary: Mapping[str, Any], tensors: Callable[[], pd.DataFrame], *, path: Path | None = None
) -> Results:
    """The frames of a spectrum run: ``tensors`` (spectrum.csv) and the summary as metadata."""
    return Results("spectrum", summary, {"tensors": tensors}, path=path)


def load_spectrum(folder: Path) -> Results:
    summary = folder / "summary.json"
    meta = read_json(summary) if summary.exists() else {}
    return spectrum_results(meta, lambda: read_csv(folder / "spectrum.csv"), path=folder)

"""Frames of ``activations`` (activations.json; activations.csv holds the same numbers in long form).

- ``layers``: one row per model × layer: ``fraction_active`` and every other per-layer list of the
  model's record (``active``: the exact count of active (token, neuron) positions);
- ``models``: one row per model: ``mean`` (unweighted mean over layers of fraction_active), ``tokens``,
  ``d_ff``, ``layers``, timing;
- ``pairs``: one row per pair of models × layer (``pair`` = ``"a↔b"``): ``distance`` (the chosen metric),
  ``hamming``, the per-token quantiles ``distance_p50`` / ``p90`` / ``p99`` / ``max`` and the exact integer
  sums (``hamming_bits``, ``distance_units``);
- ``pair_summary``: one row per pair: ``mean`` (of distance over layers), ``hamming_mean``, ``tokens``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from tunelens.frames.results import Results
from tunelens.frames.tidy import frame, read_json, scalars


def pair_label(a: str, b: str) -> str:
    return f"{a}↔{b}"


def _renamed(record: Mapping[str, Any], key: str, to: str) -> dict[str, Any]:
    """The scalars of ``record`` with ``key`` renamed ``to`` (a model record's ``name`` → ``model``)."""
    return {(to if k == key else k): v for k, v in scalars(record).items()}


def _per_layer(record: Mapping[str, Any], n: int) -> dict[str, list[Any]]:
    """Every list of length ``n`` in ``record``, nested dicts (``sums``) flattened one level."""
    flat: dict[str, Any] = {}
    for k, v in record.items():
        if isinstance(v, dict):
            flat.update({sub: x for sub, x in v.items() if isinstance(x, list)})
        else:
            flat[k] = v
    return {k: v for k, v in flat.items() if isinstance(v, list) and len(v) == n}


def _layers(summary: Mapping[str, Any]) -> pd.DataFrame:
    rows = []
    for m in summary["models"]:
        lists = _per_layer(m, len(m["fraction_active"]))
        for i in range(len(m["fraction_active"])):
            rows.append({"model": m["name"], "layer": i, **{k: v[i] for k, v in lists.items()}})
    return frame(rows, ["model", "layer", "fraction_active"])


def _pairs(summary: Mapping[str, Any]) -> pd.DataFrame:
    rows = []
    for p in summary.get("pairs", []):
        lists = _per_layer(p, len(p["distance"]))
        for i in range(len(p["distance"])):
            where = {
                "a": p["a"],
                "b": p["b"],
                "pair": pair_label(p["a"], p["b"]),
                "layer": i,
                "metric": p.get("metric"),
            }
            rows.append({**where, **{k: v[i] for k, v in lists.items()}})
    return frame(rows, ["a", "b", "pair", "layer", "metric", "distance"])


def activations_results(summary: Mapping[str, Any], *, path: Path | None = None) -> Results:
    """The frames of one ``activations`` output (``summary`` is activations.json)."""
    return Results(
        "activations",
        summary,
        {
            "layers": lambda: _layers(summary),
            "models": lambda: frame([_renamed(m, "name", "model") for m in summary["models"]], ["model"]),
            "pairs": lambda: _pairs(summary),
            "pair_summary": lambda: frame(
                [{"pair": pair_label(p["a"], p["b"]), **scalars(p)} for p in summary.get("pairs", [])],
                ["a", "b", "pair"],
            ),
        },
        path=path,
    )


def load_activations(folder: Path) -> Results:
    return activations_results(read_json(folder / "activations.json"), path=folder)

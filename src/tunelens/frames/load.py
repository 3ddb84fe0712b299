"""``tunelens.load(PATH)``: recognise a tunelens output folder by its files and open its frames.

==================  =======================================  ==========================================
kind                recognised by                            frames
==================  =======================================  ==========================================
``study``           ``study.json``                           ``stages``, ``models``; parts: its stages
``diff``            ``tensors.csv`` + ``summary.json``       see :mod:`tunelens.frames.weights`
``subspace``        ``subspace.csv`` + ``summary.json``      see :mod:`tunelens.frames.subspace`
``spectrum``        ``spectrum.csv``                         ``tensors``
``activations``     ``activations.json``                     see :mod:`tunelens.frames.activations`
``evaluate``        ``results.json``                         see :mod:`tunelens.frames.evaluation`
``compare``         ``comparisons.csv`` (no results.json)    ``comparisons``
``vector``          ``tunelens.json`` kind tuning_vector     ``inputs``
``apply``           ``tunelens.json`` kind edited_model      ``inputs``, ``terms``
``lora``            ``tunelens.json`` kind lora_extraction   ``inputs``, ``tensors`` (lora.csv)
==================  =======================================  ==========================================

A path to one of those files opens its folder. A study's parts are its stage folders that exist
(``diff``, ``subspace``, ``spectrum``, ``activations``; ``evaluate``: every ``evaluate/<run>`` merged,
each frame with a ``run`` column; ``comparisons``: a ``comparisons.csv`` at the study's top level).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from tunelens.errors import TunelensError
from tunelens.frames.activations import load_activations
from tunelens.frames.evaluation import load_compare, load_evaluate, merge_runs
from tunelens.frames.results import Results
from tunelens.frames.subspace import load_spectrum, load_subspace
from tunelens.frames.tidy import frame, read_csv, read_json
from tunelens.frames.weights import folder_results, load_diff

FOLDER_KINDS = {"tuning_vector": "vector", "edited_model": "apply", "lora_extraction": "lora"}
STAGES = ("diff", "subspace", "spectrum", "activations")


def _kind(folder: Path) -> str | None:
    has = {p.name for p in folder.iterdir()}
    if "study.json" in has:
        return "study"
    if {"tensors.csv", "summary.json"} <= has:
        return "diff"
    if {"subspace.csv", "summary.json"} <= has:
        return "subspace"
    if "spectrum.csv" in has:
        return "spectrum"
    if "activations.json" in has:
        return "activations"
    if "results.json" in has:
        return "evaluate"
    if "comparisons.csv" in has:
        return "compare"
    if "tunelens.json" in has:
        meta = read_json(folder / "tunelens.json")
        return FOLDER_KINDS.get(str(meta.get("kind")), "unknown")
    return None


LOADERS: dict[str, Callable[[Path], Results]] = {
    "diff": load_diff,
    "subspace": load_subspace,
    "spectrum": load_spectrum,
    "activations": load_activations,
    "evaluate": load_evaluate,
    "compare": load_compare,
}


def load(path: str | Path) -> Results:
    """Open any tunelens output folder (or a file in one) as tidy pandas DataFrames plus its metadata.

    Example:
        >>> import tunelens
        >>> study = tunelens.load("out/demo")
        >>> study.activations.pairs.pivot(index="layer", columns="pair", values="distance").plot()
    """
    folder = Path(path).expanduser()
    if folder.is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise TunelensError(f"{folder}: no such output folder")
    kind = _kind(folder)
    if kind is None:
        raise TunelensError(
            f"{folder}: not a tunelens output folder (none of study.json, summary.json with tensors.csv / "
            "subspace.csv, spectrum.csv, activations.json, results.json, comparisons.csv, tunelens.json)"
        )
    if kind == "study":
        return _study(folder)
    if kind in LOADERS:
        return LOADERS[kind](folder)
    meta = read_json(folder / "tunelens.json")
    if kind == "unknown":
        raise TunelensError(f"{folder}/tunelens.json: unknown kind {meta.get('kind')!r}")
    return folder_results(kind, meta, folder)


def _stages(state: dict[str, Any]) -> pd.DataFrame:
    rows = [
        {"stage": name, **{k: v for k, v in rec.items() if k != "key"}} for name, rec in state.get("stages", {}).items()
    ]
    return frame(rows, ["stage", "state", "folder", "seconds"])


def _models(state: dict[str, Any]) -> pd.DataFrame:
    config = state.get("config", {})
    inputs = state.get("inputs", {})
    rows = []
    for m in config.get("models", []):
        rec = {"model": m.get("name"), "path": m.get("path"), "parent": m.get("parent")}
        rec["role"] = "base" if m.get("name") == config.get("base") else "tuned"
        rec["sha256"] = inputs.get(m.get("name"), {}).get("sha256")
        rows.append(rec)
    return frame(rows, ["model", "role", "parent", "path", "sha256"])


def _study(folder: Path) -> Results:
    state = read_json(folder / "study.json")
    parts: dict[str, Results] = {}
    for stage in STAGES:
        sub = folder / stage
        if sub.is_dir() and _kind(sub) == stage:
            parts[stage] = LOADERS[stage](sub)
    runs_dir = folder / "evaluate"
    runs = {
        p.name: load_evaluate(p) for p in sorted(runs_dir.iterdir()) if p.is_dir() and (p / "results.json").exists()
    } if runs_dir.is_dir() else {}  # fmt: skip
    if runs:
        parts["evaluate"] = merge_runs(runs, path=runs_dir)
    builders: dict[str, Callable[[], pd.DataFrame]] = {
        "stages": lambda: _stages(state),
        "models": lambda: _models(state),
    }
    if (folder / "comparisons.csv").exists():
        builders["comparisons"] = lambda: read_csv(folder / "comparisons.csv")
    return Results("study", state, builders, path=folder, parts=parts)

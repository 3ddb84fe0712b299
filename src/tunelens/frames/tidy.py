"""Records → a typed pandas DataFrame, the same whether the records come from a file or from memory.

A CSV cell is a string (``""`` = undefined), a JSON value a number, string, ``null`` (undefined) or
``"inf"``/``"-inf"``, an in-memory row a Python value (``""`` or NaN = undefined). :func:`frame` gives
each column one dtype from the values themselves, so ``tunelens.load(folder)`` and ``result.to_pandas()``
produce equal frames: text columns (names, tensors, components...) ``str``; columns whose values are all
integers ``Int64`` (nullable: an empty ``layer`` is ``<NA>``; known integer columns such as
``head`` stay ``Int64`` when all undefined); other numeric columns ``float64`` (parsed
with Python's ``float``, exact for the ``repr`` floats tunelens writes; undefined = NaN); all-boolean
columns ``boolean``; anything else (lists, mixed) ``object``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from tunelens.errors import TunelensError

# Columns that hold names, never numbers (a model called "1" stays the string "1").
TEXT_COLUMNS = frozenset(
    {
        "model", "tensor", "component", "shape", "criterion", "method", "status", "kind", "name", "a", "b",
        "pair", "task", "metric", "variant", "run", "test", "group", "scope", "aggregate", "path", "id",
        "role", "sha256", "dtype", "source", "level", "selection", "reason", "share",
    }
)  # fmt: skip
# Integer columns: ``Int64`` even when every value is undefined (``head`` on whole-tensor rows).
INT_COLUMNS = frozenset(
    {
        "layer", "head", "numel", "rows", "cols", "k", "n", "tokens", "a_only", "b_only", "tau_top_r",
        "energy_rank_90", "energy_rank_99", "intruders",
    }
)  # fmt: skip
_MISSING = object()


def _cell(v: Any) -> Any:
    """One value, undefined → ``_MISSING``; strings stay strings (parsed per column later)."""
    if type(v).__module__ == "numpy" and hasattr(v, "item"):
        v = v.item()  # a numpy scalar in an in-memory result: the Python number the JSON would hold
    if v is None or v is pd.NA or (isinstance(v, str) and v == ""):
        return _MISSING
    if isinstance(v, float) and math.isnan(v):
        return _MISSING
    return v


def _parse(s: str) -> Any:
    """A non-text cell written as a string: int, float (``nan``, ``inf``), bool, else the string."""
    if s in ("True", "False"):
        return s == "True"
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        return s


def column(name: str, values: Sequence[Any]) -> pd.Series:
    """One typed column (see the module docstring for the rules)."""
    cells = [_cell(v) for v in values]
    if name in TEXT_COLUMNS:
        return pd.Series([None if c is _MISSING else str(c) for c in cells], dtype="str", name=name)
    cells = [_parse(c) if isinstance(c, str) else c for c in cells]
    present = [c for c in cells if c is not _MISSING]
    if present and all(isinstance(c, bool) for c in present):
        return pd.Series([pd.NA if c is _MISSING else c for c in cells], dtype="boolean", name=name)
    if all(isinstance(c, int) and not isinstance(c, bool) for c in present) and (present or name in INT_COLUMNS):
        return pd.Series([pd.NA if c is _MISSING else c for c in cells], dtype="Int64", name=name)
    if all(isinstance(c, int | float) and not isinstance(c, bool) for c in present):
        return pd.Series([math.nan if c is _MISSING else float(c) for c in cells], dtype="float64", name=name)
    return pd.Series([None if c is _MISSING else c for c in cells], dtype="object", name=name)


def frame(records: Iterable[Mapping[str, Any]], columns: Sequence[str] = ()) -> pd.DataFrame:
    """A DataFrame of ``records``: ``columns`` first, then any other key in order of appearance."""
    rows = list(records)
    names = list(dict.fromkeys([*columns, *(k for r in rows for k in r)]))
    if not rows:
        return pd.DataFrame({n: pd.Series([], dtype="object") for n in names})
    return pd.DataFrame({n: column(n, [r.get(n) for r in rows]) for n in names})


def csv_frame(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    """In-memory rows as ``write_csv`` writes them (exactly ``columns``; a missing key is undefined)."""
    return frame([{c: r.get(c, "") for c in columns} for r in rows], columns)


def read_csv(path: Path) -> pd.DataFrame:
    """A tunelens CSV as a typed frame (cells parsed by :func:`column`, never by pandas' float parser)."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TunelensError(f"{path}: cannot read ({exc})") from exc
    return frame(rows, header)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TunelensError(f"{path}: cannot read ({exc})") from exc
    if not isinstance(data, dict):
        raise TunelensError(f"{path}: not a tunelens JSON object")
    return data


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    try:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    rows.append(json.loads(line))
    except (OSError, ValueError) as exc:
        raise TunelensError(f"{path}: cannot read ({exc})") from exc
    return rows


def scalars(record: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``record`` whose values are numbers, strings, booleans or null (no lists, no dicts)."""
    return {k: v for k, v in record.items() if not isinstance(v, list | tuple | dict)}

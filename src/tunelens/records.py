"""Write typed rows as CSV and results as JSON (stable column order; a non-finite number never passes as a
finite one).

- NaN (an undefined value: the cosine of a zero vector, a metric over nothing) is ``null`` in JSON and an
  empty cell in CSV.
- ±Inf is ``inf`` / ``-inf`` in CSV (what ``float()`` and pandas read back as infinity). JSON has no
  infinity, so there it is ``null`` and the file's top-level ``nonfinite_values`` maps the JSON Pointer
  of each such value to ``"inf"`` or ``"-inf"`` (absent when there are none): a reader that only looks
  at the value sees "undefined", never a finite number.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

#: top-level key of a JSON file listing where +-inf were written as null (JSON Pointer -> "inf" / "-inf")
NONFINITE_KEY = "nonfinite_values"


def write_csv(path: Path, rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> Path:
    """Rows with exactly ``columns`` (floats written with full repr precision, NaN as an empty cell)."""
    with Path(path).open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: csv_cell(row.get(k, "")) for k in columns})
    return Path(path)


def write_json(path: Path, data: Any) -> Path:
    """``data`` as indented JSON: NaN → null; ±inf → null, listed under :data:`NONFINITE_KEY`."""
    Path(path).write_text(json_text(data))
    return Path(path)


def json_text(data: Any) -> str:
    """The text :func:`write_json` writes."""
    infinite: dict[str, str] = {}
    clean = _clean(data, "", infinite)
    if infinite and isinstance(clean, dict):
        clean[NONFINITE_KEY] = infinite
    return json.dumps(clean, indent=2, allow_nan=False) + "\n"


def csv_cell(v: Any) -> Any:
    """One CSV cell: a float at full precision, NaN empty, ±inf as ``inf`` / ``-inf``."""
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(float(v))
    return v


def _clean(v: Any, where: str, infinite: dict[str, str]) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        if not math.isnan(v):
            infinite[where or "/"] = "inf" if v > 0 else "-inf"
        return None
    if isinstance(v, dict):
        return {str(k): _clean(x, f"{where}/{_escape(str(k))}", infinite) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x, f"{where}/{i}", infinite) for i, x in enumerate(v)]
    return v


def _escape(key: str) -> str:
    """A JSON Pointer reference token (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")

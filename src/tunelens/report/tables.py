"""Write typed rows as CSV and results as JSON (stable column order, NaN-free JSON)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def write_csv(path: Path, rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> Path:
    """Rows with exactly ``columns`` (floats written with full repr precision)."""
    with Path(path).open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: _cell(row.get(k, "")) for k in columns})
    return Path(path)


def write_json(path: Path, data: Any) -> Path:
    Path(path).write_text(json.dumps(_clean(data), indent=2, allow_nan=False) + "\n")
    return Path(path)


def _cell(v: Any) -> Any:
    """Floats at full precision; an undefined (NaN) value is an empty cell, never a number."""
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return v


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    return v

"""Aggregate per-sample scores: mean, n and standard error (float64).

``value = mean(x)``; ``stderr = sqrt(Σ(x − mean)² / (n − 1)) / sqrt(n)`` (the sample standard
deviation over √n, lm-evaluation-harness's ``mean_stderr``); ``stderr`` is null when n < 2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

STDERR_DEFINITION = "sample standard deviation (n - 1) / sqrt(n), as lm-evaluation-harness mean_stderr; null if n < 2"


def summarize(values: Sequence[float]) -> dict[str, Any]:
    n = len(values)
    if n == 0:
        return {"value": None, "n": 0, "stderr": None}
    mean = math.fsum(values) / n
    if n < 2:
        return {"value": mean, "n": n, "stderr": None}
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return {"value": mean, "n": n, "stderr": math.sqrt(var) / math.sqrt(n)}

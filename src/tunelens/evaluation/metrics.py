"""Aggregate per-sample scores: mean, n, standard error and a confidence interval (float64).

``value = mean(x)``; ``stderr = sqrt(Σ(x − mean)² / (n − 1)) / sqrt(n)`` (the sample standard
deviation over √n, lm-evaluation-harness's ``mean_stderr``); ``stderr`` is null when n < 2.
``ci_low`` / ``ci_high``: the Wilson interval for 0/1 metrics (:data:`BINARY_METRICS`), else the
percentile bootstrap of the mean (:mod:`tunelens.evaluation.stats`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from tunelens.evaluation import stats
from tunelens.evaluation.stats import StatsOptions

STDERR_DEFINITION = "sample standard deviation (n - 1) / sqrt(n), as lm-evaluation-harness mean_stderr; null if n < 2"

# per-item scores that are 0 or 1: Wilson intervals, McNemar tests; every other per-item score is continuous
BINARY_METRICS = frozenset(
    {"acc", "acc_norm", "acc_bytes", "exact_match", "follow_tags", "follow_answer", "follow_stop", "follow_all",
     "answer_acc"}
)  # fmt: skip


def summarize(values: Sequence[float]) -> dict[str, Any]:
    n = len(values)
    if n == 0:
        return {"value": None, "n": 0, "stderr": None}
    mean = math.fsum(values) / n
    if n < 2:
        return {"value": mean, "n": n, "stderr": None}
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return {"value": mean, "n": n, "stderr": math.sqrt(var) / math.sqrt(n)}


def interval(metric: str, values: Sequence[float], opts: StatsOptions) -> dict[str, float | None]:
    """``ci_low`` / ``ci_high`` of the mean of ``values`` (see the module docstring)."""
    if metric in BINARY_METRICS:
        lo, hi = stats.wilson(math.fsum(values), len(values), opts.level)
    else:
        lo, hi = stats.bootstrap_ci(values, None, opts)
    return {"ci_low": lo, "ci_high": hi}


def score_row(metric: str, values: Sequence[float], opts: StatsOptions) -> dict[str, Any]:
    """``value``, ``n``, ``stderr``, ``ci_low``, ``ci_high`` of one metric over its per-item values."""
    return {**summarize(values), **interval(metric, values, opts)}

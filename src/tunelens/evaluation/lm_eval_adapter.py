"""Run any lm-evaluation-harness task on a tunelens-loaded (or in-memory edited) model.

Optional (``pip install 'tunelens[lmeval]'``). The resident module is wrapped as
``HFLM(pretrained=model, tokenizer=tokenizer, batch_size=...)``, so the weights lm-eval scores are
exactly those tunelens holds at that moment (inside an ``--apply`` / ``--sweep`` variant: the edited
ones). Nothing is downloaded: tasks whose data live on a hub fail offline; point ``include`` at a
folder of task YAMLs over local files (``dataset_path: json`` + ``dataset_kwargs.data_files``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunelens.errors import TunelensError
from tunelens.evaluation.model import LoadedModel
from tunelens.evaluation.stats import wilson

_OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def run_lm_eval(
    lm: LoadedModel,
    tasks: Sequence[str],
    *,
    variant: str = "as_loaded",
    include: str | Path | None = None,
    num_fewshot: int | None = None,
    limit: int | None = None,
    batch_size: int = 8,
) -> list[dict[str, Any]]:
    """Result rows (model, variant, task, metric, value, n, stderr, source) from ``lm_eval.simple_evaluate``."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise TunelensError("--lm-eval-task needs lm-evaluation-harness: pip install 'tunelens[lmeval]'") from exc
    for key, value in _OFFLINE.items():
        os.environ.setdefault(key, value)
    manager = TaskManager(include_path=str(include) if include is not None else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise TunelensError(f"lm-eval does not know task(s) {', '.join(unknown)} (use --lm-eval-include DIR)")
    wrapped = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=batch_size)
    out = simple_evaluate(model=wrapped, tasks=list(tasks), task_manager=manager, num_fewshot=num_fewshot, limit=limit)
    if out is None:
        raise TunelensError("lm-eval returned no results")
    return results_rows(out, model=lm.name, variant=variant)


def results_rows(out: dict[str, Any], *, model: str, variant: str) -> list[dict[str, Any]]:
    """Flatten lm-eval's ``results`` (``"acc,none"`` / ``"acc_stderr,none"`` keys) into result rows."""
    rows = []
    for task, metrics in out["results"].items():
        n = out.get("n-samples", {}).get(task, {}).get("effective")
        for key, value in metrics.items():
            name, _, filt = key.partition(",")
            if name.endswith("_stderr") or not isinstance(value, int | float) or isinstance(value, bool):
                continue
            stderr = metrics.get(f"{name}_stderr,{filt}")
            lo, hi = _wilson(name, float(value), n)
            rows.append(
                {
                    "model": model,
                    "variant": variant,
                    "task": f"lm-eval:{task}",
                    "metric": name if filt in ("", "none") else f"{name}[{filt}]",
                    "value": float(value),
                    "n": n,
                    "stderr": float(stderr) if isinstance(stderr, int | float) else None,
                    "ci_low": lo,
                    "ci_high": hi,
                    "source": "lm-evaluation-harness",
                }
            )
    return rows


_PROPORTIONS = ("acc", "acc_norm", "exact_match")


def _wilson(metric: str, value: float, n: Any) -> tuple[float | None, float | None]:
    """Wilson interval of a proportion lm-eval reports as a mean of 0/1 scores over n items, else no interval."""
    if metric not in _PROPORTIONS or not isinstance(n, int) or n < 1 or abs(value * n - round(value * n)) > 1e-6:
        return None, None
    return wilson(round(value * n), n)

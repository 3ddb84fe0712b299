"""Paired comparisons of two models (or variants) scored on the same items: ``comparisons.csv``.

For one task and metric, the items both sides scored (matched by ``id``) give ``n``, ``mean_a``,
``mean_b`` and ``diff = mean_b − mean_a``, a paired bootstrap interval of ``diff``, and a two-sided
p-value: the exact McNemar test for 0/1 metrics (``a_only`` / ``b_only`` = items only A / only B got
right), a paired sign-flip permutation test for continuous ones. ``p_adjusted`` is Holm's adjustment
over every comparison of one output (one evaluate run, one study, one ``tunelens compare``).
A held-out ``loss`` is compared per document: ``mean`` is the token-weighted mean loss of the common
documents, the bootstrap resamples documents, the sign-flip test flips per-document differences of
summed loss (both sides must have scored the same number of tokens in every document).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelens.errors import TunelensError
from tunelens.evaluation import stats
from tunelens.evaluation.definitions import item_terms
from tunelens.evaluation.metrics import BINARY_METRICS
from tunelens.evaluation.stats import StatsOptions

COMPARISON_COLUMNS = (
    "task", "metric", "a", "b", "n", "mean_a", "mean_b", "diff", "ci_low", "ci_high", "p_value", "p_adjusted",
    "test", "a_only", "b_only",
)  # fmt: skip
ALPHA = 0.05  # a difference is called a change when its Holm-adjusted p-value is below this


def definitions(opts: StatsOptions) -> dict[str, str]:
    """The definition of every column of comparisons.csv under ``opts`` (written with the rows)."""
    pct = f"{100 * opts.level:g}%"
    return {
        "n": "items (documents for loss) scored by both a and b, matched by task and id",
        "mean_a / mean_b": "the metric over those n items for a and for b (token-weighted over documents for loss)",
        "diff": "mean_b - mean_a",
        "ci_low / ci_high": (
            f"{pct} paired percentile bootstrap of diff: {opts.resamples} resamples of the n items with "
            f"replacement, the same items for a and b (numpy default_rng(seed={opts.seed}))"
        ),
        "p_value": (
            "two-sided; mcnemar_exact for 0/1 metrics (" + ", ".join(sorted(BINARY_METRICS)) + "): binomial test of "
            "b_only in a_only + b_only discordant items at 1/2, min(1, 2 P(X <= min(a_only, b_only))); "
            f"signflip for continuous metrics: paired sign-flip permutation test of sum(d) = 0, d = b - a per item "
            f"(per document: summed loss), exact over all 2^m sign patterns of the m non-zero d when 2^m <= "
            f"{opts.resamples}, else Monte Carlo with {opts.resamples} patterns (seed {opts.seed}), "
            f"p = (1 + hits) / ({opts.resamples} + 1)"
        ),
        "p_adjusted": "Holm step-down adjustment over every comparison in this file",
        "test": "mcnemar_exact, signflip_exact, signflip_monte_carlo, or none (no p-value: token counts differ)",
        "a_only / b_only": "0/1 metrics: items a got right and b did not / b got right and a did not",
        "change": f"a difference is called a change only when p_adjusted < {ALPHA}",
    }


@dataclass
class Scores:
    """One model (or variant) on one task: per item id, per metric, the terms ``(num, den)`` of its score."""

    label: str
    task: str
    items: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)

    def add(self, sample: dict[str, Any]) -> None:
        self.items[str(sample["id"])] = item_terms(sample)

    def metrics(self) -> list[str]:
        return list(dict.fromkeys(m for terms in self.items.values() for m in terms))


def compare_pair(a: Scores, b: Scores, metric: str, opts: StatsOptions) -> dict[str, Any] | None:
    """One row of comparisons.csv (``p_adjusted`` left empty), or None when no item has the metric on both sides."""
    common = [i for i in a.items if i in b.items and metric in a.items[i] and metric in b.items[i]]
    if not common:
        return None
    na, da = zip(*(a.items[i][metric] for i in common), strict=True)
    nb, db = zip(*(b.items[i][metric] for i in common), strict=True)
    mean_a, mean_b = math.fsum(na) / math.fsum(da), math.fsum(nb) / math.fsum(db)
    lo, hi = stats.paired_bootstrap_ci(na, nb, da, db, opts)
    row: dict[str, Any] = {
        "task": a.task, "metric": metric, "a": a.label, "b": b.label, "n": len(common),
        "mean_a": mean_a, "mean_b": mean_b, "diff": mean_b - mean_a, "ci_low": lo, "ci_high": hi,
        "p_value": None, "p_adjusted": None, "test": "none", "a_only": None, "b_only": None,
    }  # fmt: skip
    if metric in BINARY_METRICS:
        if any(v not in (0.0, 1.0) for v in (*na, *nb)) or any(d != 1.0 for d in (*da, *db)):
            raise TunelensError(f"task {a.task}: {metric} is a 0/1 metric but has other values")
        row["a_only"] = sum(1 for x, y in zip(na, nb, strict=True) if x > y)
        row["b_only"] = sum(1 for x, y in zip(na, nb, strict=True) if y > x)
        row["p_value"], row["test"] = stats.mcnemar_exact(row["a_only"], row["b_only"]), "mcnemar_exact"
    elif all(x == y for x, y in zip(da, db, strict=True)):
        p, how = stats.signflip_p([y - x for x, y in zip(na, nb, strict=True)], opts)
        row["p_value"], row["test"] = p, f"signflip_{how}"
    return row


def compare_all(pairs: Iterable[tuple[Scores, Scores]], opts: StatsOptions) -> list[dict[str, Any]]:
    """Every metric of every (a, b) pair (same task), then Holm over all rows."""
    rows = []
    for a, b in pairs:
        if a.task != b.task:
            raise ValueError(f"paired scores of different tasks: {a.task} and {b.task}")
        for metric in a.metrics():
            row = compare_pair(a, b, metric, opts)
            if row is not None:
                rows.append(row)
    for row, adj in zip(rows, stats.holm([r["p_value"] for r in rows]), strict=True):
        row["p_adjusted"] = adj
    return rows


def is_change(row: dict[str, Any]) -> bool:
    p = row.get("p_adjusted")
    return p is not None and not (isinstance(p, float) and math.isnan(p)) and float(p) < ALPHA


# ---------------------------------------------------------------------------------------------- runs on disk


@dataclass
class Run:
    """A finished ``tunelens evaluate`` folder: its task definitions and per-variant scores."""

    folder: Path
    name: str
    tasks: dict[str, dict[str, Any]]
    variants: list[str]
    scores: dict[tuple[str, str], Scores]  # (variant, task) -> scores


def run_label(run_name: str, variant: str) -> str:
    """How a (run, variant) is named in study and compare outputs (as the report names it)."""
    return run_name if variant in ("", "as_loaded", "edited") else f"{run_name} {variant}"


def read_run(folder: Path, name: str | None = None) -> Run:
    """Read ``results.json`` and ``samples.jsonl`` of an evaluate output folder."""
    folder = Path(folder)
    res, samples = folder / "results.json", folder / "samples.jsonl"
    if not res.is_file() or not samples.is_file():
        raise TunelensError(f"{folder} is not a tunelens evaluate output (no results.json and samples.jsonl)")
    try:
        summary = json.loads(res.read_text())
    except (OSError, ValueError) as exc:
        raise TunelensError(f"{res}: cannot read ({exc})") from exc
    label = name or folder.name
    variants = [str(v["name"]) for v in summary.get("variants") or [{"name": "as_loaded"}]]
    scores: dict[tuple[str, str], Scores] = {}
    for lineno, sample in _jsonl(samples):
        if "scores" not in sample or "id" not in sample:
            raise TunelensError(f"{samples}:{lineno}: a sample without id and scores (written by an older tunelens?)")
        key = (str(sample.get("variant", "as_loaded")), str(sample["task"]))
        if key not in scores:
            scores[key] = Scores(run_label(label, key[0]), key[1])
        scores[key].add(sample)
    return Run(folder, label, dict(summary.get("tasks") or {}), variants, scores)


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    yield lineno, json.loads(line)
    except (OSError, ValueError) as exc:
        raise TunelensError(f"{path}: cannot read ({exc})") from exc


_PATH_KEYS = ("data", "fewshot_data")


def _differing(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Keys in which two task definitions differ, leaving out where they were read from; the data files
    are compared by their sha256 when both runs recorded it, else by path."""
    hashed = "data_sha256" in a and "data_sha256" in b
    skip = {"source", *(_PATH_KEYS if hashed else ("data_sha256", "fewshot_sha256"))}
    return sorted(k for k in set(a) | set(b) if k not in skip and a.get(k) != b.get(k))


def check_same_tasks(runs: Sequence[Run]) -> None:
    """One line naming the task and keys when two runs define a task they share differently."""
    seen: dict[str, tuple[str, dict[str, Any]]] = {}
    for run in runs:
        for task, definition in run.tasks.items():
            if task not in seen:
                seen[task] = (run.name, definition)
                continue
            first, other = seen[task]
            diff = _differing(other, definition)
            if diff:
                raise TunelensError(
                    f"task {task} is defined differently in {first} and {run.name} ({', '.join(diff)}); "
                    "their items cannot be paired"
                )


def pair_scores(runs: Sequence[Run], pairs: Sequence[tuple[str, str]]) -> list[tuple[Scores, Scores]]:
    """The (a, b) score pairs of every task both labels scored, pairs in order, tasks in a's order."""
    by_label: dict[str, dict[str, Scores]] = {}
    for run in runs:
        for (variant, task), sc in run.scores.items():
            by_label.setdefault(run_label(run.name, variant), {})[task] = sc
    out = []
    for a, b in pairs:
        if a not in by_label or b not in by_label:
            raise TunelensError(f"no evaluate run named {a if a not in by_label else b}")
        out += [(sa, by_label[b][task]) for task, sa in by_label[a].items() if task in by_label[b]]
    return out


def expand(path: Path) -> list[Path]:
    """An evaluate output folder, or a study folder's evaluate runs in the study's order."""
    path = Path(path)
    if (path / "results.json").is_file():
        return [path]
    state = path / "study.json"
    if state.is_file():
        try:
            stages = json.loads(state.read_text()).get("stages", {})
        except (OSError, ValueError) as exc:
            raise TunelensError(f"{state}: cannot read ({exc})") from exc
        found = [path / rec["folder"] for name, rec in stages.items()
                 if name.startswith("evaluate/") and rec.get("state") == "done"]  # fmt: skip
        found = [f for f in found if (f / "results.json").is_file()]
        if found:
            return found
        raise TunelensError(f"{path}: a study folder without finished evaluate runs")
    if not path.exists():
        raise TunelensError(f"{path} does not exist")
    raise TunelensError(f"{path} is neither an evaluate output (results.json) nor a study folder (study.json)")


def _names(folders: Sequence[Path]) -> list[str]:
    """Folder names; parent/name where two are alike; whole paths where that is not enough."""
    for depth in (1, 2):
        names = ["/".join(f.resolve().parts[-depth:]) for f in folders]
        if len(set(names)) == len(names):
            return names
    return [str(f) for f in folders]


@dataclass
class CompareResult:
    rows: list[dict[str, Any]]
    summary: dict[str, Any]


def compare_runs(
    paths: Sequence[str | Path],
    *,
    all_pairs: bool = False,
    opts: StatsOptions = stats.DEFAULT,
) -> CompareResult:
    """Every (run, variant) against the first one (or every pair), per task and metric they share."""
    folders = [f for p in paths for f in expand(Path(p))]
    if len(folders) != len({f.resolve() for f in folders}):
        raise TunelensError("a run was given twice")
    runs = [read_run(f, n) for f, n in zip(folders, _names(folders), strict=True)]
    check_same_tasks(runs)
    labels = [run_label(run.name, v) for run in runs for v in run.variants]
    if len(labels) < 2:
        raise TunelensError("compare needs at least two models or variants (give two or more runs)")
    if all_pairs:
        pairs = [(labels[i], labels[j]) for i in range(len(labels)) for j in range(i + 1, len(labels))]
    else:
        pairs = [(labels[0], lab) for lab in labels[1:]]
    scored = pair_scores(runs, pairs)
    if not scored:
        raise TunelensError("the runs share no task: nothing to compare")
    rows = compare_all(scored, opts)
    summary = {
        "definitions": definitions(opts),
        "statistics": {**opts.describe(), "alpha": ALPHA, "family": "all rows of this file (Holm)"},
        "pairs": "every pair of models" if all_pairs else "every model against the first",
        "runs": [{"name": r.name, "folder": str(r.folder), "variants": r.variants} for r in runs],
        "tasks": {t: d for r in runs for t, d in r.tasks.items()},
        "comparisons": rows,
    }
    return CompareResult(rows, summary)


def write_comparisons(folder: Path, result: CompareResult) -> None:
    """``comparisons.csv`` and ``comparisons.json`` (rows with their definitions and settings) into ``folder``."""
    from tunelens.records import write_csv, write_json

    write_csv(folder / "comparisons.csv", result.rows, COMPARISON_COLUMNS)
    write_json(folder / "comparisons.json", result.summary)

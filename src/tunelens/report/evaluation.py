"""The report's evaluation section (paper Tables 1, 3 and Fig. 4): scores with their intervals, the paired
comparisons of ``comparisons/comparisons.csv``, and every model described in words from the study's config.

A difference is called a change only when its Holm-adjusted p-value is below
:data:`tunelens.evaluation.compare.ALPHA`; the text says how many comparisons that leaves, never which
difference merely looks largest.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelens.report import plots

if TYPE_CHECKING:
    from tunelens.report.sections import Section

LOSS_METRICS = ("loss", "perplexity")
ALPHA = 0.05  # tunelens.evaluation.compare.ALPHA (not imported: the report does not load numpy)
PRIMARY = ("acc", "follow_all", "rouge1", "exact_match", "answer_acc", "loss")  # first one a task has is its headline
CONTINUOUS = ("gold_prob",)  # the continuous companion of a multiple-choice headline


def _load_json(path: Path) -> Any:
    from tunelens.report.sections import load_json  # sections imports this module

    return load_json(path)


def _table(header: list[str], rows: list[list[Any]], fmt: str = "{:.4g}") -> str:
    from tunelens.report.sections import table

    return table(header, rows, fmt)


def _eval_rows(folder: Path) -> list[dict[str, Any]]:
    rows = []
    root = folder / "evaluate"
    for res in sorted(root.glob("*/results.json")) if root.is_dir() else []:
        for r in _load_json(res)["results"]:
            variant = r.get("variant") or ""
            label = (
                res.parent.name
                if variant in ("", "as_loaded", "as loaded", "edited")
                else f"{res.parent.name} {variant}"
            )
            rows.append({**r, "label": label, "run": res.parent.name})
    return rows


def sweep_anchors(folder: Path, labels: set[str], have: set[float]) -> list[tuple[float, str]]:
    """Points of the λ sweep that other entries of the study already evaluated (from ``study.json``):
    λ = 0 is the base, λ = 1 the swept fine-tune itself (θ_pre + τ equals it up to float32 rounding),
    λ = −1 an edit ``{vector: -1}`` on the base. Only scales the sweep did not run itself."""
    cfg = _config(folder)
    sweep = cfg.get("sweep") or {}
    vector = sweep.get("vector")
    if not vector:
        return []
    found: list[tuple[float, str]] = [(0.0, str(cfg.get("base"))), (1.0, vector)]
    for e in cfg.get("edits") or []:
        if e.get("target", "pre") == "pre" and e.get("terms") == {vector: -1.0}:
            found.append((-1.0, e["name"]))
    return [(x, lab) for x, lab in found if lab in labels and x not in have]


def _config(folder: Path) -> dict[str, Any]:
    study = folder / "study.json"
    if not study.exists():
        return {}
    cfg = _load_json(study).get("config", {})
    return cfg if isinstance(cfg, dict) else {}


def _coef(lam: float, name: str) -> str:
    mag = abs(lam)
    term = f"τ_{name}" if mag == 1 else f"{mag:g}·τ_{name}"
    return f"{'−' if lam < 0 else '+'} {term}"


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"


def edit_words(target: str, terms: dict[str, float]) -> tuple[str, str]:
    """(formula, words) of θ = θ_target + Σ λ·τ_m, the words assembled from the signs, sizes and names."""
    base = "θ_pre" if target == "pre" else f"θ_{target}"
    formula = " ".join([base, *(_coef(lam, m) for m, lam in terms.items())])
    names, lams = list(terms), list(terms.values())
    plural = "vector" if len(names) == 1 else "vectors"
    if all(lam < 0 for lam in lams):
        words = f"negation of the {_names(names)} {plural}"
        if len(set(lams)) == 1 and lams[0] != -1:
            words += f", scaled by {abs(lams[0]):g}"
        if target != "pre":
            words += f", applied to the {target} fine-tune"
            if names == [target] and lams == [-1.0]:
                words += " (θ_pre again, up to float32 rounding)"
    elif all(lam > 0 for lam in lams) and len(names) > 1:
        words = f"cross-domain addition of the {_names(names)} {plural} (paper Fig. 4)"
    elif all(lam > 0 for lam in lams):
        words = f"the {names[0]} vector" + (f" scaled by {lams[0]:g}" if lams[0] != 1 else "") + " added"
        if target == "pre" and lams[0] == 1:
            words += " (the fine-tune itself, up to float32 rounding)"
        elif target != "pre":
            words += f" to the {target} fine-tune"
    else:
        words = f"arithmetic of the {_names(names)} {plural}"
    return formula, words


def describe_models(folder: Path) -> dict[str, tuple[str, str]]:
    """Label → (formula, words) for every model of the study, from ``study.json``'s config (empty without it)."""
    cfg = _config(folder)
    if not cfg:
        return {}
    base = str(cfg.get("base"))
    out = {base: ("θ_pre", "the pre-trained base model")}
    for m in cfg.get("models") or []:
        if m.get("name") != base:
            out[m["name"]] = (f"θ_{m['name']}", f"fine-tuned from the base (τ_{m['name']} = θ_{m['name']} − θ_pre)")
    for e in cfg.get("edits") or []:
        out[e["name"]] = edit_words(str(e.get("target", "pre")), {str(k): float(v) for k, v in e["terms"].items()})
    sweep = cfg.get("sweep") or {}
    if sweep.get("vector"):
        v = sweep["vector"]
        for s in sweep.get("scales") or []:
            formula, words = edit_words("pre", {v: float(s)}) if s else ("θ_pre", "the base (λ = 0)")
            out[f"sweep-{v} sweep={float(s):g}"] = (formula, f"λ sweep: {words}")
    return out


def _read_comparisons(folder: Path) -> list[dict[str, Any]]:
    path = folder / "comparisons" / "comparisons.csv"
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for r in rows:
        row: dict[str, Any] = dict(r)
        for k in ("n", "a_only", "b_only"):
            row[k] = int(r[k]) if r[k] else None
        for k in ("mean_a", "mean_b", "diff", "ci_low", "ci_high", "p_value", "p_adjusted"):
            row[k] = float(r[k]) if r[k] else None
        out.append(row)
    return out


def is_change(row: dict[str, Any]) -> bool:
    p = row.get("p_adjusted")
    return p is not None and not math.isnan(p) and p < ALPHA


def headline(task_metrics: list[str]) -> list[str]:
    """A task's headline metric (its first of :data:`PRIMARY`) and its continuous companion, when present."""
    first = next((m for m in PRIMARY if m in task_metrics), task_metrics[0] if task_metrics else None)
    return [m for m in (first, *CONTINUOUS) if m is not None and m in task_metrics]


def _fmt_ci(lo: Any, hi: Any) -> str:
    return "—" if lo is None or hi is None else f"[{lo:+.3g}, {hi:+.3g}]"


def evaluation(folder: Path) -> Section | None:
    """Tables 1 / 3 and Fig. 4 style: every metric with its interval for base, fine-tuned, negated and added
    models; the paired comparisons; the λ sweep."""
    rows = [r for r in _eval_rows(folder) if r.get("value") is not None]
    if not rows:
        return None
    words = describe_models(folder)
    labels = list(dict.fromkeys(r["label"] for r in rows))
    cols = list(dict.fromkeys((r["task"], r["metric"]) for r in rows))
    by = {(r["label"], r["task"], r["metric"]): r for r in rows}

    def v(label: str, col: tuple[str, str]) -> float:
        r = by.get((label, *col))
        return math.nan if r is None else float(r["value"])

    def ci(label: str, col: tuple[str, str]) -> tuple[float, float] | None:
        r = by.get((label, *col))
        if r is None or r.get("ci_low") is None or r.get("ci_high") is None:
            return None
        return float(r["ci_low"]), float(r["ci_high"])

    def what(label: str) -> str:
        f, w = words.get(label, ("", ""))
        return f"{f}: {w}" if f else ""

    tasks = list(dict.fromkeys(t for t, _ in cols))
    heads = {t: headline([m for tt, m in cols if tt == t]) for t in tasks}
    score_cols = [(t, m) for t in tasks for m in heads[t] if m not in LOSS_METRICS]
    loss_cols = [(t, m) for t in tasks for m in heads[t] if m in LOSS_METRICS]

    def cell(label: str, col: tuple[str, str]) -> str:
        x, c = v(label, col), ci(label, col)
        if math.isnan(x):
            return "—"
        return f"{x:.3f}" + ("" if c is None else f" [{c[0]:.3f}, {c[1]:.3f}]")

    shown = score_cols + loss_cols
    body = "<p>Models:</p>" + _table(["model", "what it is"], [[lab, what(lab) or "—"] for lab in labels])
    body += "<p>Headline scores with 95% intervals (every metric is in <code>evaluate/*/results.csv</code>):</p>"
    body += _table(
        ["model", *[f"{t}: {m}" for t, m in shown]], [[lab, *[cell(lab, c) for c in shown]] for lab in labels]
    )
    main = [lab for lab in labels if not lab.startswith("sweep-")]
    figs = {}
    bar_cols = [(t, m) for t, m in score_cols if m in PRIMARY]
    if bar_cols:
        series = {(f"{lab} ({words[lab][0]})" if lab in words else lab): [v(lab, c) for c in bar_cols] for lab in main}
        errors = {(f"{lab} ({words[lab][0]})" if lab in words else lab): [ci(lab, c) for c in bar_cols] for lab in main}
        figs["fig4_evaluation"] = plots.grouped_bars(
            [f"{t}\n{m}" for t, m in bar_cols], series, "evaluation of base, fine-tuned and edited models", "score",
            errors=errors,
        )  # fmt: skip
        body += "<p class='caption'>Error bars: 95% intervals (Wilson for 0/1 scores, bootstrap otherwise).</p>"
    sweep_labels = [lab for lab in labels if lab.startswith("sweep-")]
    if sweep_labels:
        figs["fig4_sweep"] = _sweep_figure(folder, labels, sweep_labels, bar_cols, v, ci)
    comps = _read_comparisons(folder)
    reading = _reading(comps, heads, labels)
    body += _comparison_tables(comps, heads, words)
    definition = (
        "acc / acc_norm: log-likelihood multiple choice as lm-evaluation-harness defines them (acc_norm divides by "
        "the choice's length in characters, acc_bytes by its UTF-8 bytes); gold_prob: the gold choice's probability "
        "normalised over the choices; rouge1: ROUGE-1 F-measure (rouge-score); follow_*: share of outputs obeying "
        "the three system-prompt rules; exact_match: final number equal; loss: held-out next-token cross-entropy "
        "(nats, n = scored tokens). Intervals: 95%, Wilson for 0/1 scores, percentile bootstrap of the mean "
        "otherwise (over documents for loss). Comparisons: paired on the items both models scored; exact McNemar "
        "for 0/1 metrics, sign-flip permutation for continuous ones, Holm over every row of comparisons.csv; a "
        f"difference is a change only when the adjusted p < {ALPHA}. λ sweep: the sweep's own scales, plus λ = 0 "
        "(the base), 1 (the swept fine-tune itself) and −1 (an edit of the base by −τ) where the study evaluated them."
    )
    from tunelens.report.sections import Section

    title = "Evaluation of base, fine-tuned and edited models (paper Tables 1, 3; Fig. 4)"
    return Section("evaluation", title, definition, reading, body, figs)


def _sweep_figure(folder: Path, labels: list[str], sweep: list[str], cols: list[tuple[str, str]], v: Any, ci: Any
                  ) -> bytes:  # fmt: skip
    lams = []
    for lab in sweep:
        try:
            lams.append(float(lab.rsplit("=", 1)[1]))
        except (IndexError, ValueError):
            lams.append(math.nan)
    points = list(zip(lams, sweep, strict=True)) + sweep_anchors(folder, set(labels), set(lams))
    points.sort(key=lambda p: p[0])
    series = {f"{t}: {m}": [v(lab, (t, m)) for _, lab in points] for t, m in cols}
    errors = {f"{t}: {m}": [ci(lab, (t, m)) for _, lab in points] for t, m in cols}
    return plots.lines([x for x, _ in points], series, "λ sweep", "λ (θ_base + λ·τ)", "score", errors=errors)


def _reading(comps: list[dict[str, Any]], heads: dict[str, list[str]], labels: list[str]) -> str:
    if not comps:
        return (f"{len(labels)} model(s); no paired comparisons in this folder (comparisons/comparisons.csv), so no "
                "difference is called a change")  # fmt: skip
    changes = [r for r in comps if is_change(r)]
    text = (f"{len(changes)} of {len(comps)} paired differences are changes (Holm-adjusted p < {ALPHA}, all metrics "
            "and pairs of comparisons.csv)")  # fmt: skip
    pairs = list(dict.fromkeys((r["a"], r["b"]) for r in comps))
    parts, quiet = [], []
    for a, b in pairs:
        found = [r for r in changes if (r["a"], r["b"]) == (a, b) and r["metric"] in heads.get(r["task"], [])]
        if not found:
            quiet.append(f"{b} vs {a}")
            continue
        found.sort(key=lambda r: -abs(r["diff"]) / max(r["ci_high"] - r["ci_low"], 1e-12))
        said = [f"{r['task']} {r['metric']} {r['diff']:+.3f} {_fmt_ci(r['ci_low'], r['ci_high'])}" for r in found[:3]]
        parts.append(f"{b} vs {a}: " + ", ".join(said))
    if parts:
        text += ". Headline changes: " + "; ".join(parts)
    if quiet:
        text += ". No headline change: " + ", ".join(quiet)
    return text


def _comparison_tables(comps: list[dict[str, Any]], heads: dict[str, list[str]], words: dict[str, tuple[str, str]]
                       ) -> str:  # fmt: skip
    if not comps:
        return ""
    header = ["a", "b", "b is", "task", "metric", "n", "mean a", "mean b", "diff (b − a)", "95% CI", "test",
              "p", "p adj (Holm)", "verdict"]  # fmt: skip

    def row(r: dict[str, Any]) -> list[Any]:
        f, w = words.get(r["b"], ("", ""))
        b_is = f"{f}: {w}" if f else "—"
        return [r["a"], r["b"], b_is, r["task"], r["metric"], r["n"], r["mean_a"], r["mean_b"], r["diff"],
                _fmt_ci(r["ci_low"], r["ci_high"]), r["test"], r["p_value"], r["p_adjusted"],
                "change" if is_change(r) else "no detectable change"]  # fmt: skip

    main = [r for r in comps if r["metric"] in heads.get(r["task"], [])]
    out = (f"<p>Paired comparisons, headline metrics ({len(main)} of {len(comps)} rows; all of them below and in "
           "<code>comparisons/comparisons.csv</code>):</p>")  # fmt: skip
    out += _table(header, [row(r) for r in main]).replace("<table>", '<table id="comparisons">', 1)
    out += (f"<details><summary>All {len(comps)} comparisons</summary>"
            + _table(header, [row(r) for r in comps]) + "</details>")  # fmt: skip
    return out

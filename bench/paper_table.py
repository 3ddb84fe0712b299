"""The README's "paper in miniature" table, from a finished study folder (e.g. ``tunelens demo -o out/demo``).

Usage: python bench/paper_table.py out/demo

Prints one markdown row per headline finding of Tanwar et al. (2025) with what this study measured.
Every number is read from the study's own files (diff/summary.json, subspace/summary.json,
activations/activations.json, evaluate/*/results.csv); nothing is typed in by hand.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path


def results(folder: Path) -> dict[tuple[str, str, str], float]:
    """(variant or model folder, task, metric) → value over every evaluate/* folder."""
    out: dict[tuple[str, str, str], float] = {}
    for f in sorted((folder / "evaluate").glob("*/results.csv")):
        with f.open() as fh:
            for row in csv.DictReader(fh):
                # one folder per model or edit; a sweep folder's variants are its scales
                name = f.parent.name if row["variant"] in ("as_loaded", "edited") else row["variant"]
                out[(name, row["task"], row["metric"])] = float(row["value"])
    return out


def fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


def main(folder: Path) -> None:
    diff = json.loads((folder / "diff" / "summary.json").read_text())
    ssa = json.loads((folder / "subspace" / "summary.json").read_text())
    act = json.loads((folder / "activations" / "activations.json").read_text())
    ev = results(folder)
    rows: list[tuple[str, str, str]] = []

    cos = {m["name"]: m["without_embeddings"]["cosine"] for m in diff["models"]}
    cos_all = {m["name"]: m["global"]["cosine"] for m in diff["models"]}
    rows.append((
        "weight cosine fine-tuned vs base > 99.75 %",
        ", ".join(f"{n} {100 * c:.4f} %" for n, c in cos_all.items())
        + f" (without embeddings: min {100 * min(cos.values()):.4f} %)",
        "yes" if min(cos_all.values()) > 0.9975 else "no",
    ))  # fmt: skip

    vc = diff["vector_cosine"]["without_embeddings"]
    names = diff["vector_cosine"]["names"]
    pairs = [(names[i], names[j], vc["matrix"][i][j]) for i in range(len(names)) for j in range(i + 1, len(names))]
    std = vc["baseline"]["random_std"]
    rows.append((
        "domain vectors nearly orthogonal",
        ", ".join(f"{a}·{b} {c:.4f}" for a, b, c in pairs) + f" (random-direction std {std:.1e}; "
        + "with embeddings " + ", ".join(
            f"{diff['vector_cosine']['matrix'][i][j]:.3f}" for i in range(len(names)) for j in range(i + 1, len(names))
        ) + ")",
        f"yes (largest {max(abs(c) for _, _, c in pairs):.3f}), though far above chance",
    ))  # fmt: skip

    t4 = next(iter(ssa["table4"].values()))
    att, mlp = ["W_Q", "W_K", "W_V", "W_O"], ["W_gate", "W_up", "W_down"]
    cells = []
    verdicts = []
    for r in t4["rows"]:
        if r["share"] != "both":
            continue
        ra = sum(r["ratio"][c] for c in att) / len(att)
        rm = sum(r["ratio"][c] for c in mlp) / len(mlp)
        cells.append(f"{r['model']} attention {ra:.2f}× / MLP {rm:.2f}× baseline")
        verdicts.append(rm < ra)
    rows.append((
        "SSA lower in MLP (new directions) than attention (amplified)",
        "; ".join(cells) + f" (two-sided share / random baseline, {next(iter(ssa['table4']))})",
        f"{sum(verdicts)}/{len(verdicts)} models; all near 1× (no strong alignment)",
    ))  # fmt: skip

    dists = [(p["a"], p["b"], p["mean"], max(p["distance"])) for p in act["pairs"] if p["a"] == "base"]
    rows.append((
        "FFN activation edit distance mostly < 0.04",
        ", ".join(f"{b} mean {m:.3f} (max layer {x:.3f})" for _, b, m, x in dists)
        + f" ({act['distance_metric']}, {act['pairs'][0]['tokens']} tokens)",
        "yes (means)" if all(m < 0.04 for _, _, m, _ in dists) else "no",
    ))  # fmt: skip

    def get(name: str, task: str, metric: str) -> float:
        return ev.get((name, task, metric), float("nan"))

    neg = [
        ("medical", "hpo_term", "acc"), ("medical", "format_hpo", "follow_all"),
        ("math", "champ_answer", "acc"), ("code", "code_line", "acc"),
    ]  # fmt: skip
    cells = [
        f"{task} {metric}: base {fmt(get('base', task, metric))} → {d} {fmt(get(d, task, metric))}"
        f" → {d}-negated {fmt(get(d + '-negated', task, metric))}"
        for d, task, metric in neg
    ]
    domains = [d for d in ("medical", "math", "code") if not math.isnan(get("base", f"heldout_{d}", "loss"))]
    cells += [
        f"held-out {d} loss: base {fmt(get('base', f'heldout_{d}', 'loss'))} → {d} "
        f"{fmt(get(d, f'heldout_{d}', 'loss'))} → {d}-negated {fmt(get(d + '-negated', f'heldout_{d}', 'loss'))}"
        for d in domains
    ]
    worse = sum(get(d + "-negated", f"heldout_{d}", "loss") > get("base", f"heldout_{d}", "loss") for d in domains)
    below = sum(get(d + "-negated", t, m) < get("base", t, m) for d, t, m in neg)
    back = sum(get(d + "-negated", t, m) < get(d, t, m) for d, t, m in neg)
    rows.append((
        "negation collapses in-domain accuracy and compliance",
        "; ".join(cells) + " (θ_pre − τ; 40 items each)",
        f"in held-out loss yes: above the base's in {worse}/{len(domains)} domains (+"
        + " / +".join(fmt(get(d + "-negated", f"heldout_{d}", "loss") - get("base", f"heldout_{d}", "loss"))
                      for d in domains)
        + f" nats); in the 40-item scores no: {back}/{len(neg)} fall below the fine-tune, {below}/{len(neg)} "
        "below the base",
    ))  # fmt: skip
    add = "medical+math"
    cells = [
        f"{task} {metric}: medical {fmt(get('medical', task, metric))}, math {fmt(get('math', task, metric))}, "
        f"{add} {fmt(get(add, task, metric))}"
        for task, metric in (("hpo_term", "acc"), ("format_hpo", "follow_all"), ("champ_answer", "acc"))
    ]
    cells += [
        f"held-out {d} loss: {d} {fmt(get(d, f'heldout_{d}', 'loss'))}, {add} {fmt(get(add, f'heldout_{d}', 'loss'))}"
        for d in ("medical", "math")
        if d in domains
    ]
    two = [d for d in ("medical", "math") if d in domains]
    own = {"hpo_term": "medical", "format_hpo": "medical", "champ_answer": "math"}
    metric_of = {"hpo_term": "acc", "format_hpo": "follow_all", "champ_answer": "acc"}
    kept = sum(get(add, t, metric_of[t]) >= get(d, t, metric_of[t]) for t, d in own.items())
    rows.append((
        "addition good on both domains",
        "; ".join(cells) + " (θ_pre + τ_medical + τ_math)",
        f"yes: {kept}/{len(own)} scores at or above the domain's own fine-tune; held-out loss within "
        + " / ".join(f"{get(add, f'heldout_{d}', 'loss') - get(d, f'heldout_{d}', 'loss'):+.3f}" for d in two)
        + " nats of it",
    ))  # fmt: skip
    print("| paper's finding | this study measured | holds here? |")
    print("|---|---|---|")
    for a, b, c in rows:
        print(f"| {a} | {b} | {c} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""The README's "paper in miniature" table, from a finished study folder (e.g. ``tunelens demo -o out/demo``).

Usage: python bench/paper_table.py out/demo [--json verdicts.json]

Prints one markdown row per headline finding of Tanwar et al. (2025) with what this study measured, then the
smallest differences the study can detect. Every number is read from the study's own files
(diff/summary.json, subspace/summary.json, activations/activations.json, study.json, evaluate/*), and every
verdict is computed from them in code: weight-space findings against the paper's thresholds, evaluation
findings from paired tests on the items both models scored (tunelens.evaluation.compare: exact McNemar for
0/1 scores, sign-flip for continuous ones and losses, Holm over this table's own comparisons). A difference
counts as a change only when its adjusted p < 0.05.

Which edit is a negation or an addition is read from the study's recipe (study.json: target and λ of every
term), which task belongs to which domain from the zoo's task card (tasks/tunelens.json) or, for held-out
loss tasks, from the name of the corpus file they score.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
from pathlib import Path
from typing import Any

from tunelens.evaluation import compare as cmp
from tunelens.evaluation.stats import StatsOptions, holm, mcnemar_exact
from tunelens.report.evaluation import headline

PAPER_COSINE = 0.9975  # paper: weight cosine > 99.75 % for every fine-tune
NEAR_ORTHOGONAL = 0.1  # |cosine| below this counts as nearly orthogonal (the report's threshold too)
PAPER_DISTANCE = 0.04  # paper Fig. 2: edit distance mostly < 0.04
ALPHA = cmp.ALPHA
POWER = 0.8


def fmt(x: float, digits: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


class Study:
    """A finished study folder: its recipe, evaluate runs and the domain of each task."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.config: dict[str, Any] = json.loads((folder / "study.json").read_text())["config"]
        self.base = str(self.config["base"])
        names = [p.name for p in sorted((folder / "evaluate").iterdir()) if (p / "results.json").exists()]
        self.runs = {n: cmp.read_run(folder / "evaluate" / n, n) for n in names}
        self.values: dict[tuple[str, str, str], float] = {}
        for n in names:
            for r in json.loads((folder / "evaluate" / n / "results.json").read_text())["results"]:
                if r["value"] is not None and r["variant"] in ("as_loaded", "edited"):
                    self.values[(n, r["task"], r["metric"])] = float(r["value"])
        first = next(iter(self.runs.values()))
        self.domain = {t: d for t, d in ((t, task_domain(spec)) for t, spec in first.tasks.items()) if d}
        self.metrics = {t: headline(sorted({m for (_, tt, m) in self.values if tt == t})) for t in first.tasks}

    def value(self, model: str, task: str, metric: str) -> float:
        return self.values.get((model, task, metric), math.nan)

    def _edits(self) -> list[tuple[str, dict[str, float]]]:
        """(name, terms) of every edit made from the base (target pre)."""
        edits = self.config.get("edits") or []
        return [(e["name"], dict(e["terms"])) for e in edits if e.get("target", "pre") == "pre"]

    def negations(self) -> list[tuple[str, str]]:
        """(domain model, edit) for every edit θ_pre − λ·τ_d with one term and λ > 0."""
        return [(next(iter(t)), name) for name, t in self._edits() if len(t) == 1 and next(iter(t.values())) < 0]

    def additions(self) -> list[tuple[list[str], str]]:
        """(domain models, edit) for every edit θ_pre + Σ λ_d τ_d with two or more terms, all λ > 0."""
        return [(list(t), name) for name, t in self._edits() if len(t) > 1 and all(v > 0 for v in t.values())]

    def tasks_of(self, domain: str) -> list[str]:
        return [t for t, d in self.domain.items() if d == domain]


def task_domain(spec: dict[str, Any]) -> str | None:
    """A zoo task's domain: from the zoo's task card beside its YAML, or the corpus file a loss task scores."""
    if spec.get("kind") == "perplexity":
        return Path(str(spec.get("data", ""))).stem or None
    source = Path(str(spec.get("source", "")))
    card = source.parent / "tunelens.json"
    if card.is_file():
        info = json.loads(card.read_text()).get("tasks", {}).get(spec.get("name"), {})
        return info.get("domain")
    return None


def better(row: dict[str, Any]) -> int:
    """+1 when b is better than a by a change (lower loss, higher score), −1 when worse, 0 otherwise."""
    if not cmp.is_change(row):
        return 0
    up = row["diff"] > 0
    return (1 if up else -1) * (-1 if row["metric"] in ("loss", "perplexity") else 1)


def comparisons(study: Study, pairs: list[tuple[str, str, str]]) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    """Paired comparisons (a, b, task) on the tasks' headline metrics, Holm over all of them."""
    scored = []
    for a, b, task in pairs:
        sa, sb = _scores(study, a, task), _scores(study, b, task)
        if sa is not None and sb is not None:
            scored.append((sa, sb))
    rows = [r for r in cmp.compare_all(scored, StatsOptions()) if r["metric"] in study.metrics.get(r["task"], [])]
    for r, adj in zip(rows, holm([r["p_value"] for r in rows]), strict=True):
        r["p_adjusted"] = adj
    return {(r["a"], r["b"], r["task"], r["metric"]): r for r in rows}


def _scores(study: Study, run: str, task: str) -> cmp.Scores | None:
    sc = study.runs[run].scores
    return sc.get(("as_loaded", task)) or sc.get(("edited", task))


def lora_pairs(study: Study) -> dict[str, str]:
    """{LoRA model: its full fine-tune} for every model of the study that is a PEFT adapter folder and has a
    model named like it without the ``-lora`` suffix (the zoo's pair: same rows, steps and tokens)."""
    models = {m["name"]: Path(m["path"]) for m in study.config["models"]}
    return {
        n: n.removesuffix("-lora")
        for n, p in models.items()
        if (p / "adapter_config.json").is_file() and n.endswith("-lora") and n.removesuffix("-lora") in models
    }


def weight_rows(folder: Path, lora: dict[str, str]) -> list[tuple[str, str, str]]:
    diff = json.loads((folder / "diff" / "summary.json").read_text())
    ssa = json.loads((folder / "subspace" / "summary.json").read_text())
    act = json.loads((folder / "activations" / "activations.json").read_text())
    rows = []
    cos = {m["name"]: m["without_embeddings"]["cosine"] for m in diff["models"]}
    cos_all = {m["name"]: m["global"]["cosine"] for m in diff["models"]}
    above = sum(c > PAPER_COSINE for c in cos_all.values())
    rows.append((
        f"weight cosine fine-tuned vs base > {100 * PAPER_COSINE:g} %",
        ", ".join(f"{n} {100 * c:.4f} %" for n, c in cos_all.items())
        + f" (without embeddings: min {100 * min(cos.values()):.4f} %)",
        f"{'yes' if above == len(cos_all) else 'no'}: {above}/{len(cos_all)} above",
    ))  # fmt: skip

    vc = diff["vector_cosine"]["without_embeddings"]
    names = diff["vector_cosine"]["names"]
    full = [i for i, n in enumerate(names) if n not in lora]  # domain vectors: the full fine-tunes
    pairs = [(names[i], names[j], vc["matrix"][i][j]) for i in full for j in full if i < j]
    std = vc["baseline"]["random_std"]
    worst = max(abs(c) for _, _, c in pairs)
    rows.append((
        "domain vectors nearly orthogonal",
        ", ".join(f"{a}·{b} {c:.4f}" for a, b, c in pairs) + f" (random-direction std {std:.1e}; with embeddings "
        + ", ".join(f"{diff['vector_cosine']['matrix'][i][j]:.3f}" for i in full for j in full if i < j) + ")",
        f"{'yes' if worst < NEAR_ORTHOGONAL else 'no'}: largest |cosine| {worst:.3f} (threshold {NEAR_ORTHOGONAL}), "
        f"{worst / std:.0f}× the random-direction std",
    ))  # fmt: skip

    crit = next(iter(ssa["table4"]))
    att, mlp = ["W_Q", "W_K", "W_V", "W_O"], ["W_gate", "W_up", "W_down"]
    cells, lower, ratios = [], 0, []
    for r in ssa["table4"][crit]["rows"]:
        if r["share"] != "both":
            continue
        ra = sum(r["ratio"][c] for c in att) / len(att)
        rm = sum(r["ratio"][c] for c in mlp) / len(mlp)
        cells.append(f"{r['model']} attention {ra:.2f}× / MLP {rm:.2f}× baseline")
        lower += rm < ra
        ratios += [ra, rm]
    rows.append((
        "SSA lower in MLP (new directions) than attention (amplified)",
        "; ".join(cells) + f" (two-sided share / random baseline, {crit})",
        f"{lower}/{len(cells)} models lower in MLP; every ratio between {min(ratios):.2f}× and {max(ratios):.2f}× "
        f"the random baseline (the paper: W_V 0.97 vs W_up 0.28 shares)",
    ))  # fmt: skip

    dists = [(p["b"], p["mean"], max(p["distance"])) for p in act["pairs"] if p["a"] == act["models"][0]["name"]]
    below = sum(m < PAPER_DISTANCE for _, m, _ in dists)
    rows.append((
        f"FFN activation edit distance mostly < {PAPER_DISTANCE}",
        ", ".join(f"{b} mean {m:.3f} (max layer {x:.3f})" for b, m, x in dists)
        + f" ({act['distance_metric']}, {act['pairs'][0]['tokens']} tokens)",
        f"{'yes' if below == len(dists) else 'no'}: {below}/{len(dists)} mean distances below {PAPER_DISTANCE}",
    ))  # fmt: skip
    return rows


def lora_rows(study: Study, lora: dict[str, str]) -> tuple[list[tuple[str, str, str]], list[dict[str, Any]]]:
    """LoRA against full fine-tuning of the same domain on the same rows (not in the paper; Shuttleworth et
    al. 2024, "LoRA vs full fine-tuning: an illusion of equivalence"): the weight-space measures side by side,
    and paired tests of LoRA against full on the domain's tasks."""
    folder = study.folder
    diff = json.loads((folder / "diff" / "summary.json").read_text())
    spec = json.loads((folder / "spectrum" / "summary.json").read_text()) if (folder / "spectrum").is_dir() else None
    ssa = json.loads((folder / "subspace" / "summary.json").read_text())
    act = json.loads((folder / "activations" / "activations.json").read_text())
    by_model = {m["name"]: m for m in diff["models"]}
    names = diff["vector_cosine"]["names"]
    matrix = diff["vector_cosine"]["without_embeddings"]["matrix"]
    crit = next(iter(ssa["table4"]))
    ratio = {r["model"]: r["ratio"] for r in ssa["table4"][crit]["rows"] if r["share"] == "both"}
    spectra = {m["name"]: m["by_group"]["all"] for m in spec["models"]} if spec else {}
    dist = {p["b"]: p["mean"] for p in act["pairs"] if p["a"] == act["models"][0]["name"]}
    rows: list[tuple[str, str, str]] = []
    comps: list[dict[str, Any]] = []
    for lo, fu in lora.items():
        domain_tasks = study.tasks_of(fu) or study.tasks_of(fu.split("-")[0])
        found = comparisons(study, [(fu, lo, t) for t in domain_tasks])
        comps += found.values()
        cells = [
            f"cosine to the base without embeddings {100 * by_model[lo]['without_embeddings']['cosine']:.4f} % vs "
            f"{100 * by_model[fu]['without_embeddings']['cosine']:.4f} %",
            f"‖τ‖/‖θ‖ {by_model[lo]['global']['relative_change']:.2e} vs "
            f"{by_model[fu]['global']['relative_change']:.2e}",
            f"cosine(τ_LoRA, τ_full) {matrix[names.index(lo)][names.index(fu)]:.3f}",
        ]
        if lo in ratio and fu in ratio:
            att, mlp = ["W_Q", "W_K", "W_V", "W_O"], ["W_gate", "W_up", "W_down"]

            def mean(model: str, cols: list[str]) -> float:
                vals = [ratio[model][c] for c in cols if ratio[model].get(c) is not None]
                return sum(vals) / len(vals) if vals else math.nan

            cells.append(f"SSA two-sided ratio attention {mean(lo, att):.2f}× / MLP {mean(lo, mlp):.2f}× vs "
                         f"{mean(fu, att):.2f}× / {mean(fu, mlp):.2f}×")  # fmt: skip
        verdict = []
        if lo in spectra and fu in spectra and "mean" in spectra[lo] and "mean" in spectra[fu]:
            el, ef = spectra[lo]["mean"]["effective_rank"], spectra[fu]["mean"]["effective_rank"]
            il, i_f = spectra[lo]["intruders_total"], spectra[fu]["intruders_total"]
            cells.append(f"τ's mean effective rank {el:.1f} vs {ef:.1f}, intruder dimensions {il} vs {i_f} "
                         f"(k = {spec['options']['intruder_k']}, ε = {spec['options']['intruder_eps']})")  # fmt: skip
            verdict.append(f"τ of LoRA has {el / ef:.2f}× the effective rank of the full fine-tune's and "
                           f"{'more' if il > i_f else 'no more'} intruder dimensions ({il} vs {i_f})")  # fmt: skip
        if lo in dist and fu in dist:
            cells.append(f"FFN activation edit distance to the base {dist[lo]:.3f} vs {dist[fu]:.3f}")
        for t in domain_tasks:
            for m in study.metrics[t]:
                cells.append(_cell(study, [fu, lo], t, m))
        up, down, same = _tally(list(found.values()))
        verdict.append(f"on the domain's tasks LoRA is better in {up}/{len(found)} paired comparisons with the full "
                       f"fine-tune, worse in {down}, no detectable change in {same} (Holm p < {ALPHA})")  # fmt: skip
        rows.append((
            f"(not in the paper) LoRA vs full fine-tuning of {fu}, same rows, steps and tokens",
            "; ".join(cells) + f" ({lo} vs {fu})",
            "; ".join(verdict),
        ))  # fmt: skip
    return rows, comps


def _tally(rows: list[dict[str, Any]]) -> tuple[int, int, int]:
    up = sum(better(r) > 0 for r in rows)
    down = sum(better(r) < 0 for r in rows)
    return up, down, len(rows) - up - down


def _cell(study: Study, models: list[str], task: str, metric: str) -> str:
    return f"{task} {metric}: " + " → ".join(f"{m} {fmt(study.value(m, task, metric))}" for m in models)


def evaluation_rows(study: Study) -> tuple[list[tuple[str, str, str]], list[dict[str, Any]]]:
    base = study.base
    pairs: list[tuple[str, str, str]] = []
    for d, neg in study.negations():
        pairs += [(d, neg, t) for t in study.tasks_of(d)] + [(base, neg, t) for t in study.tasks_of(d)]
    for ds, add in study.additions():
        pairs += [(d, add, t) for d in ds for t in study.tasks_of(d)]
    comps = comparisons(study, pairs)
    out = []
    if study.negations():
        cells, vs_ft, vs_base = [], [], []
        for d, neg in study.negations():
            for t in study.tasks_of(d):
                for m in study.metrics[t]:
                    cells.append(_cell(study, [base, d, neg], t, m))
                    vs_ft += [r for k, r in comps.items() if k[:3] == (d, neg, t) and k[3] == m]
                    vs_base += [r for k, r in comps.items() if k[:3] == (base, neg, t) and k[3] == m]
        (fu, fd, fn), (bu, bd, bn) = _tally(vs_ft), _tally(vs_base)
        out.append((
            "negation collapses in-domain accuracy and compliance",
            "; ".join(cells) + " (θ_pre − τ_d; in-domain headline metrics)",
            f"against its own fine-tune, the negation is worse in {fd}/{len(vs_ft)} in-domain comparisons, better in "
            f"{fu}, no detectable change in {fn}; against the base: worse in {bd}/{len(vs_base)}, better in {bu}, "
            f"no detectable change in {bn} (paired tests, Holm p < {ALPHA})",
        ))  # fmt: skip
    for ds, add in study.additions():
        cells, rows = [], []
        for d in ds:
            for t in study.tasks_of(d):
                for m in study.metrics[t]:
                    cells.append(_cell(study, [d, add], t, m))
                    rows += [r for k, r in comps.items() if k[:3] == (d, add, t) and k[3] == m]
        up, down, same = _tally(rows)
        formula = " + ".join(f"τ_{d}" for d in ds)
        out.append((
            "addition good on both domains",
            "; ".join(cells) + f" (θ_pre + {formula})",
            f"{'yes' if down == 0 else 'no'}: against each domain's own fine-tune on its tasks, worse in "
            f"{down}/{len(rows)}, better in {up}, no detectable change in {same} (paired tests, Holm p < {ALPHA})",
        ))  # fmt: skip
    return out, list(comps.values())


@functools.cache
def _rejected(k: int, alpha: float) -> tuple[int, ...]:
    """Counts j (items only b got right, of k discordant) at which the exact McNemar test rejects at ``alpha``."""
    return tuple(j for j in range(k + 1) if mcnemar_exact(k - j, j) < alpha)


def mcnemar_power(n: int, discordance: float, diff: float, alpha: float) -> float:
    """Power of the exact two-sided McNemar test on n items when a share ``discordance`` of items is
    discordant and the paired difference in accuracy is ``diff``: the discordant count K ~ Bin(n, discordance),
    items only b got right ~ Bin(K, (1 + diff / discordance) / 2); summed exactly."""
    if not 0 < discordance <= 1 or abs(diff) > discordance:
        return math.nan
    q = (1 + diff / discordance) / 2
    power = 0.0
    for k in range(n + 1):
        pk = math.comb(n, k) * discordance**k * (1 - discordance) ** (n - k)
        if pk > 1e-15:
            power += pk * sum(math.comb(k, j) * q**j * (1 - q) ** (k - j) for j in _rejected(k, alpha))
    return power


def smallest_detectable(n: int, discordance: float, alpha: float, power: float = POWER) -> float:
    """The smallest accuracy difference (step 1/n) the exact McNemar test detects with ``power``."""
    for step in range(1, n + 1):
        d = step / n
        if d > discordance:
            return math.nan
        if mcnemar_power(n, discordance, d, alpha) >= power:
            return d
    return math.nan


def detectable(study: Study, comps: list[dict[str, Any]]) -> list[str]:
    """The smallest differences this study detects at 80% power, from its measured discordance and spread."""
    from statistics import NormalDist

    pairs = [(study.base, m["name"]) for m in study.config["models"] if m["name"] != study.base]
    rows = cmp.compare_all(cmp.pair_scores(list(study.runs.values()), pairs), StatsOptions())
    binary = [r for r in rows if r["test"] == "mcnemar_exact" and r["metric"] in study.metrics.get(r["task"], [])]
    n = statistics.median(r["n"] for r in binary)
    disc = statistics.median((r["a_only"] + r["b_only"]) / r["n"] for r in binary)
    m = len(comps) or 1
    lines = [
        f"0/1 scores, {int(n)} items per task, median discordance {disc:.3f} (share of items on which a fine-tune and "
        f"the base disagree, over {len(binary)} fine-tune-vs-base comparisons): smallest accuracy difference detected "
        f"with {POWER:.0%} power by the exact McNemar test: {fmt(smallest_detectable(int(n), disc, ALPHA), 3)} at "
        f"α = {ALPHA}, {fmt(smallest_detectable(int(n), disc, ALPHA / m), 3)} at α = {ALPHA}/{m} (Holm's first step "
        "over this table's comparisons)",
    ]
    cont = [r for r in rows if r["metric"] == "gold_prob"]
    if cont:
        sd = _paired_sd(study, pairs, "gold_prob")
        z = NormalDist().inv_cdf
        for a_level, label in ((ALPHA, f"α = {ALPHA}"), (ALPHA / m, f"α = {ALPHA}/{m}")):
            mde = (z(1 - a_level / 2) + z(POWER)) * sd / math.sqrt(n)
            lines.append(
                f"gold_prob (continuous): median sd of the per-item paired difference {sd:.3f}; smallest mean "
                f"difference detected with {POWER:.0%} power (normal approximation): {mde:.3f} at {label}"
            )
    return lines


def _paired_sd(study: Study, pairs: list[tuple[str, str]], metric: str) -> float:
    sds = []
    for sa, sb in cmp.pair_scores(list(study.runs.values()), pairs):
        common = [i for i in sa.items if i in sb.items and metric in sa.items[i] and metric in sb.items[i]]
        d = [sb.items[i][metric][0] - sa.items[i][metric][0] for i in common]
        if len(d) > 1:
            sds.append(statistics.stdev(d))
    return statistics.median(sds) if sds else math.nan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--json", type=Path, help="also write the rows and the comparisons behind them")
    args = ap.parse_args()
    study = Study(args.folder)
    lora = lora_pairs(study)
    rows = weight_rows(args.folder, lora)
    ev_rows, comps = evaluation_rows(study)
    rows += ev_rows
    lo_rows, lo_comps = lora_rows(study, lora)
    rows += lo_rows
    comps += lo_comps
    print("| paper's finding | this study measured | holds here? |")
    print("|---|---|---|")
    for a, b, c in rows:
        print(f"| {a} | {b} | {c} |")
    print()
    for line in detectable(study, comps):
        print(f"- {line}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "comparisons": comps}, indent=1, allow_nan=False) + "\n")


if __name__ == "__main__":
    main()

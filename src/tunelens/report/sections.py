"""Report sections in the paper's shapes, each built from one stage's output files."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelens.errors import TunelensError
from tunelens.frames.activations import load_activations
from tunelens.frames.weights import load_diff
from tunelens.report import figures, plots
from tunelens.report.evaluation import evaluation, sweep_anchors

PAPER_COSINE = 0.9975  # paper: > 99.75% weight cosine for every pair
PAPER_DISTANCE = 0.04  # paper Fig. 2: edit distance mostly < 0.04


@dataclass
class Section:
    """One report section: heading, definition, reading, HTML body, figures (name → PNG bytes)."""

    key: str
    title: str
    definition: str
    reading: str
    body: str = ""
    figures: dict[str, bytes] = field(default_factory=dict)


def load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TunelensError(f"{path}: cannot read stage output ({exc})") from exc


def table(header: list[str], rows: list[list[Any]], fmt: str = "{:.4g}") -> str:
    """An HTML table; floats formatted with ``fmt``, None shown as an em dash."""

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "—"
        if isinstance(v, float):
            return html.escape(fmt.format(v))
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def weight_cosine(folder: Path) -> Section | None:
    """Table 15 style: weight cosine and relative change per component, per model; relative change per layer
    and per layer × component (figures drawn from the frames of ``tunelens.load``)."""
    path = folder / "diff" / "summary.json"
    if not path.exists():
        return None
    frames = load_diff(path.parent)
    s = frames.meta
    comps = list(s["models"][0]["by_component"])
    rows = []
    for m in s["models"]:
        g = m["global"]
        rows.append([m["name"], g["cosine"], g["one_minus_cosine"], g["relative_change"]]
                    + [m["by_component"][c]["cosine"] for c in comps])  # fmt: skip
    lowest = min((_num(m["global"]["cosine"]) for m in s["models"]), default=math.nan)
    verdict = "above" if lowest > PAPER_COSINE else "not above"
    reading = (
        f"Lowest whole-model weight cosine {lowest:.6f}: {verdict} the paper's 0.9975 for every fine-tune; "
        + "; ".join(f"{m['name']} moved most in {_argmax(m['by_component'], 'relative_change')}" for m in s["models"])
    )
    body = table(["model", "cosine", "1 - cosine", "|tau|/|W|", *[f"cos {c}" for c in comps]], rows, "{:.6g}")
    per_layer = figures.per_layer(frames.layers, "relative_change", title="relative change per layer",
                                  ylabel="‖τ‖ / ‖θ_pre‖")  # fmt: skip
    cells = figures.layer_heatmap(frames.layer_components, "relative_change",
                                  title="relative change ‖τ‖ / ‖θ_pre‖ per layer and component")  # fmt: skip
    figs = {"weights_per_layer": figures.png(per_layer), "weights_layer_component": figures.png(cells)}
    return Section("weights", "Weight cosine per component (paper Table 15)", s["definitions"]["cosine"], reading, body,
                   figs)  # fmt: skip


def vector_cosine(folder: Path) -> Section | None:
    """Fig. 3 style: heatmap of cosine between tuning vectors, with the null baselines."""
    path = folder / "diff" / "summary.json"
    if not path.exists():
        return None
    frames = load_diff(path.parent)
    s = frames.meta
    vc = s["vector_cosine"]
    names = vc["names"]
    if len(names) < 2:
        return None
    block = vc["without_embeddings"]
    off = [(names[i], names[j], block["matrix"][i][j], block["baseline"]["signflip_std"][i][j])
           for i in range(len(names)) for j in range(i + 1, len(names))]  # fmt: skip
    off = [(a, b, _num(v), _num(sf)) for a, b, v, sf in off]  # null (undefined, e.g. a zero tau) → nan
    worst = max(off, key=lambda t: -1.0 if math.isnan(t[2]) else abs(t[2]))
    rnd = _num(block["baseline"]["random_std"])
    reading = (
        f"Largest |cosine| between domain vectors: {worst[2]:+.4f} ({worst[0]} vs {worst[1]}); "
        f"random-vector null std {rnd:.1e}, sign-flip null std {worst[3]:.1e}: "
        + ("near-orthogonal as in the paper" if abs(worst[2]) < 0.1 else "clearly aligned, unlike the paper's domains")
    )
    pairs_we = frames.vector_cosine[frames.vector_cosine["scope"] == "without_embeddings"]
    fig = figures.pair_heatmap(pairs_we, "cosine", title="cosine between tuning vectors (without embeddings)",
                               note=f"null: random 1/sqrt(D) = {rnd:.1e}")  # fmt: skip
    png = figures.png(fig)
    rows = [[a, b, v, sf, rnd] for a, b, v, sf in off]
    body = table(["a", "b", "cosine", "sign-flip null std", "random null std"], rows, "{:+.4g}")
    comps = list(vc["by_component"])
    crow = [[c, *[vc["by_component"][c]["matrix"][i][j] for i in range(len(names)) for j in range(i + 1, len(names))]]
            for c in comps]  # fmt: skip
    pairs = [f"{names[i]}·{names[j]}" for i in range(len(names)) for j in range(i + 1, len(names))]
    body += "<p>Per component:</p>" + table(["component", *pairs], crow, "{:+.4f}")
    return Section("vectors", "Cosine between tuning vectors (paper Fig. 3)", s["definitions"]["vector_cosine"],
                   reading, body, {"fig3_vector_cosine": png})  # fmt: skip


def _num(v: Any) -> float:
    """A JSON / CSV value as a float: null or an empty cell (an undefined value) is nan."""
    return math.nan if v is None or v == "" else float(v)


def _argmax(groups: dict[str, dict[str, Any]], key: str) -> str:
    best = max(groups.items(), key=lambda kv: -1.0 if kv[1][key] is None else kv[1][key])
    return best[0]


PAPER_COMPONENTS = ("q", "k", "v", "o", "gate", "up", "down")
SHARES = ("left", "right", "both")


def _read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    try:
        with path.open(newline="") as fh:
            return list(csv.DictReader(fh))
    except OSError as exc:
        raise TunelensError(f"{path}: cannot read stage output ({exc.strerror})") from exc


def _mean(xs: list[float]) -> float:
    return math.fsum(xs) / len(xs) if xs else math.nan


def subspace_alignment(folder: Path) -> Section | None:
    """Table 4 style: SSA per component — the absolute share (the paper's number), its random-τ baseline and
    the ratio with its chance spread side by side; readings from the ratios only (stats.subspace.readings)."""
    from tunelens.stats.subspace import READING_Z, readings

    path = folder / "subspace" / "summary.json"
    if not path.exists():
        return None
    s = load_json(path)
    crit = s["criteria"][0]
    t4 = s["table4"][crit]
    comps = [c for c in t4["columns"] if any(r.get(c) is not None for r in t4["rows"])]
    rows: list[list[Any]] = []
    for r in t4["rows"]:
        label = f"{r['model']} ({r['share']})"
        rows.append([label, "share", *[r.get(c) for c in comps]])
        rows.append(["", "random-τ baseline", *[r["baseline"].get(c) for c in comps]])
        rows.append(["", f"ratio ± {READING_Z:g}σ of chance",
                     *[_pm(r["ratio"].get(c), r["ratio_null_std"].get(c), READING_Z) for c in comps]])  # fmt: skip
    left = [r for r in t4["rows"] if r["share"] == "left"]
    series = {r["model"]: [_nan(r["ratio"].get(c)) for c in comps] for r in left}
    spread = {r["model"]: [READING_Z * _nan(r["ratio_null_std"].get(c)) for c in comps] for r in left}
    png = plots.ratio_bars(comps, series, spread, f"SSA, left share / random-τ baseline ({crit}); "
                           f"bars ± {READING_Z:g}σ of chance", "‖U_kᵀτ‖²/‖τ‖² ÷ k/out")  # fmt: skip
    definition = (
        "left ‖U_kᵀτ‖²/‖τ‖² (the paper's SSA; random-τ baseline k/out), right ‖τV_k‖²/‖τ‖² (baseline k/in), both "
        "‖U_kᵀτV_k‖²/‖τ‖² (baseline k²/(out·in)), with U_k, V_k the top-k singular vectors of the pre-trained W "
        f"(exact float64 basis), k by {crit}; cells are plain means over the component's whole tensors. The "
        "absolute share depends on shape (a weight with few rows keeps most of any τ in its top-k subspace): only "
        "the ratio share/baseline compares components. σ = the ratio's standard deviation for an isotropic random "
        f"τ (closed form, Beta-distributed shares). Readings: ratio within {READING_Z:g}σ of 1 = no evidence of "
        "amplification / new directions; attention and MLP are compared by their ratios."
    )
    body = table(["model (share kind)", "row", *comps], rows, "{:.3f}")
    return Section("subspace", "Subspace alignment per component (paper Table 4), read against chance", definition,
                   ". ".join(readings(s, criterion=crit)) + ".", body, {"table4_subspace_alignment": png})  # fmt: skip


def _pm(value: float | None, std: float | None, z: float) -> str:
    if value is None or std is None:
        return "—"
    return f"{value:.3f} ± {z * std:.2g}"


def _nan(v: float | None) -> float:
    return math.nan if v is None else float(v)


SPECTRUM_COMPONENTS = ("q", "k", "v", "o", "gate", "up", "down")


def spectral_anatomy(folder: Path) -> Section | None:
    """Heatmaps (layers × components) of τ's effective rank and of intruder counts per model, LoRA next to
    full; per-group means; readings from stats.spectrum.readings."""
    from tunelens.stats.spectrum import readings

    path = folder / "spectrum" / "summary.json"
    if not path.exists():
        return None
    s = load_json(path)
    rows = [r for r in _read_csv(folder / "spectrum" / "spectrum.csv") if not r["head"]]
    models = [m["name"] for m in s["models"]]
    comps = [c for c in SPECTRUM_COMPONENTS if any(r["component"] == c for r in rows)]
    layers = sorted({int(r["layer"]) for r in rows if r["layer"] != ""})
    cell = {(r["model"], int(r["layer"]), r["component"]): r for r in rows if r["layer"] != ""}

    def grid(model: str, col: str) -> list[list[float]]:
        return [[_float(cell.get((model, la, c), {}).get(col)) for c in comps] for la in layers]

    opts = s["options"]
    figs = {
        "spectrum_effective_rank": plots.layer_component_grid(
            {m: grid(m, "effective_rank") for m in models}, comps, "effective rank of τ (layers × components)"
        ),
        "spectrum_intruders": plots.layer_component_grid(
            {m: grid(m, "intruders") for m in models}, comps,
            f"intruder dimensions of W_ft (k = {opts['intruder_k']}, ε = {opts['intruder_eps']})", integer=True,
            cmap="magma",
        ),
    }  # fmt: skip
    header = ["model", "group", "tensors", "effective rank", "× random", "stable rank", "r90", "r99",
              f"amplification (r={opts['amp_rank']})", "intruders", "weights with intruders"]  # fmt: skip
    trows: list[list[Any]] = []
    for m in s["models"]:
        for g in ("attention", "mlp", "all"):
            a = m["by_group"][g]
            mean = a.get("mean", {})
            measures = [mean.get(c) for c in ("stable_rank", "energy_rank_90", "energy_rank_99", "amplification")]
            trows.append([m["name"], g, a["tensors"], mean.get("effective_rank"), a.get("effective_rank_vs_random"),
                          *measures, a.get("intruders_total"), a.get("tensors_with_intruders")])  # fmt: skip
    defs = s["definitions"]
    keys = ("singular values", "numerical rank", "effective_rank", "stable_rank", "energy_rank_90", "amplification",
            "intruders", "random_effective_rank")  # fmt: skip
    definition = "\n".join(f"{k}: {defs[k]}" for k in keys)
    return Section("spectrum", "Spectral anatomy of τ: rank, amplification, intruder dimensions", definition,
                   ". ".join(readings(s)) + ".", table(header, trows, "{:.3g}"), figs)  # fmt: skip


def _float(v: Any) -> float:
    try:
        return float(v) if v not in (None, "") else math.nan
    except ValueError:
        return math.nan


def activation_patterns(folder: Path) -> Section | None:
    """Fig. 1 / Fig. 2 style: fraction of active FFN neurons per layer; edit distance per layer."""
    path = folder / "activations" / "activations.json"
    if not path.exists():
        return None
    frames = load_activations(path.parent)
    s = frames.meta
    frac = {m["name"]: [_num(x) for x in m["fraction_active"]] for m in s["models"]}  # null → nan
    fig = figures.per_layer(frames.layers, "fraction_active", title="fraction of active FFN neurons",
                            ylabel="fraction active")  # fmt: skip
    figs = {"fig1_fraction_active": figures.png(fig)}
    spread = max((max(v) - min(v) for v in zip(*frac.values(), strict=True) if not any(map(math.isnan, v))),
                 default=math.nan)  # fmt: skip
    tokens = s["models"][0].get("tokens")
    reading = f"Fraction active differs across models by at most {spread:.4f} at any layer ({tokens} tokens)"
    body = table(["model", *[f"L{i}" for i in range(len(next(iter(frac.values()))))]],
                 [[n, *v] for n, v in frac.items()], "{:.3f}")  # fmt: skip
    pairs = s.get("pairs", [])
    if pairs:
        dist = {f"{p['a']}↔{p['b']}": [_num(x) for x in p["distance"]] for p in pairs}
        fig = figures.per_layer(frames.pairs, "distance", hue="pair", title="normalized edit distance of activation "
                                "patterns", ylabel="Hamming / d_ff", hline=PAPER_DISTANCE)  # fmt: skip
        figs["fig2_edit_distance"] = figures.png(fig)
        n_all = sum(len(v) for v in dist.values())
        n_low = sum(1 for v in dist.values() for x in v if x < PAPER_DISTANCE)
        worst = max(pairs, key=lambda p: -1.0 if p["mean"] is None else p["mean"])
        reading += (
            f"; {n_low}/{n_all} layer distances below the paper's 0.04, largest mean {_num(worst['mean']):.4f} "
            f"({worst['a']}↔{worst['b']})"
        )
        body += "<p>Edit distance per layer:</p>" + table(
            ["pair", "mean", *[f"L{i}" for i in range(len(pairs[0]["distance"]))]],
            [[f"{p['a']}↔{p['b']}", p["mean"], *p["distance"]] for p in pairs],
            "{:.4f}",
        )
    defs = s.get("definitions", {})
    definition = "\n".join(f"{k}: {v}" for k, v in defs.items() if isinstance(v, str)) or "see activations.json"
    return Section("activations", "FFN activation patterns (paper Fig. 1 and Fig. 2)", definition, reading + ".",
                   body, figs)  # fmt: skip


__all__ = ["SECTION_BUILDERS", "Section", "evaluation", "load_json", "sweep_anchors", "table"]

SECTION_BUILDERS: list[Callable[[Path], Section | None]] = [
    weight_cosine,
    vector_cosine,
    subspace_alignment,
    spectral_anatomy,
    activation_patterns,
    evaluation,
]

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
    """Table 4 style: SSA per component (plain mean over whole tensors) with the random baseline."""
    path = folder / "subspace" / "subspace.csv"
    if not path.exists():
        return None
    rows = [r for r in _read_csv(path) if not r["head"]]
    if not rows:
        return None
    crit = rows[0].get("criterion", "")
    rows = [r for r in rows if r.get("criterion", "") == crit]
    models = list(dict.fromkeys(r["model"] for r in rows))
    comps = [c for c in PAPER_COMPONENTS if any(r["component"] == c for r in rows)]

    def cell(model: str, comp: str, col: str) -> float:  # an empty CSV cell is an undefined value: nan
        return _mean([_num(r[col]) for r in rows if r["model"] == model and r["component"] == comp])

    table_rows = []
    for m in models:
        for share in SHARES:
            table_rows.append([f"{m} ({share})", *[cell(m, c, f"share_{share}") for c in comps]])
    for share in SHARES:
        table_rows.append([f"random baseline ({share})", *[cell(models[0], c, f"baseline_{share}") for c in comps]])
    attn = [cell(m, c, "share_left") for m in models for c in comps if c in ("q", "k", "v", "o")]
    mlp = [cell(m, c, "share_left") for m in models for c in comps if c in ("gate", "up", "down")]
    a, b = _mean(attn), _mean(mlp)
    reading = (
        f"Left SSA ({crit}), mean over models: attention {a:.3f}, MLP {b:.3f} — "
        + (
            "lower in MLP than attention, as in the paper (new directions in MLP, amplified ones in attention)"
            if b < a
            else "not lower in MLP than in attention, unlike the paper's finding"
        )  # fmt: skip
    )
    series = {m: [cell(m, c, "share_left") for c in comps] for m in models}
    png = plots.grouped_bars([f"W_{c}" for c in comps], series, f"SSA, left share ({crit})", "‖U_kᵀτ‖²/‖τ‖²",
                             baseline=[cell(models[0], c, "baseline_left") for c in comps])  # fmt: skip
    definition = (
        "left ‖U_kᵀτ‖²/‖τ‖² (baseline k/out), right ‖τV_k‖²/‖τ‖² (baseline k/in), both ‖U_kᵀτV_k‖²/‖τ‖² "
        "(baseline k²/(out·in)), with U_k, V_k the top-k singular vectors of the pre-trained W (exact float64 "
        f"basis), k by {crit}; cells are plain means over the component's whole tensors (heads excluded)."
    )
    body = table(["model (share)", *[f"W_{c}" for c in comps]], table_rows, "{:.3f}")
    return Section("subspace", "Subspace alignment per component (paper Table 4)", definition, reading, body,
                   {"table4_subspace_alignment": png})  # fmt: skip


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
    activation_patterns,
    evaluation,
]

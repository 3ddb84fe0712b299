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
from tunelens.report import plots

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
    """Table 15 style: weight cosine and relative change per component, per model."""
    path = folder / "diff" / "summary.json"
    if not path.exists():
        return None
    s = load_json(path)
    comps = list(s["models"][0]["by_component"])
    rows = []
    for m in s["models"]:
        g = m["global"]
        rows.append([m["name"], g["cosine"], g["one_minus_cosine"], g["relative_change"]]
                    + [m["by_component"][c]["cosine"] for c in comps])  # fmt: skip
    lowest = min(m["global"]["cosine"] for m in s["models"])
    verdict = "above" if lowest > PAPER_COSINE else "not above"
    reading = (
        f"Lowest whole-model weight cosine {lowest:.6f}: {verdict} the paper's 0.9975 for every fine-tune; "
        + "; ".join(f"{m['name']} moved most in {_argmax(m['by_component'], 'relative_change')}" for m in s["models"])
    )
    body = table(["model", "cosine", "1 - cosine", "|tau|/|W|", *[f"cos {c}" for c in comps]], rows, "{:.6g}")
    return Section("weights", "Weight cosine per component (paper Table 15)", s["definitions"]["cosine"], reading, body)


def vector_cosine(folder: Path) -> Section | None:
    """Fig. 3 style: heatmap of cosine between tuning vectors, with the null baselines."""
    path = folder / "diff" / "summary.json"
    if not path.exists():
        return None
    s = load_json(path)
    vc = s["vector_cosine"]
    names = vc["names"]
    if len(names) < 2:
        return None
    block = vc["without_embeddings"]
    off = [(names[i], names[j], block["matrix"][i][j], block["baseline"]["signflip_std"][i][j])
           for i in range(len(names)) for j in range(i + 1, len(names))]  # fmt: skip
    worst = max(off, key=lambda t: abs(t[2]))
    rnd = block["baseline"]["random_std"]
    reading = (
        f"Largest |cosine| between domain vectors: {worst[2]:+.4f} ({worst[0]} vs {worst[1]}); "
        f"random-vector null std {rnd:.1e}, sign-flip null std {worst[3]:.1e}: "
        + ("near-orthogonal as in the paper" if abs(worst[2]) < 0.1 else "clearly aligned, unlike the paper's domains")
    )
    png = plots.heatmap(names, block["matrix"], "cosine between tuning vectors (without embeddings)",
                        f"null: random 1/sqrt(D) = {rnd:.1e}")  # fmt: skip
    rows = [[a, b, v, sf, rnd] for a, b, v, sf in off]
    body = table(["a", "b", "cosine", "sign-flip null std", "random null std"], rows, "{:+.4g}")
    comps = list(vc["by_component"])
    crow = [[c, *[vc["by_component"][c]["matrix"][i][j] for i in range(len(names)) for j in range(i + 1, len(names))]]
            for c in comps]  # fmt: skip
    pairs = [f"{names[i]}·{names[j]}" for i in range(len(names)) for j in range(i + 1, len(names))]
    body += "<p>Per component:</p>" + table(["component", *pairs], crow, "{:+.4f}")
    return Section("vectors", "Cosine between tuning vectors (paper Fig. 3)", s["definitions"]["vector_cosine"],
                   reading, body, {"fig3_vector_cosine": png})  # fmt: skip


def _argmax(groups: dict[str, dict[str, Any]], key: str) -> str:
    best = max(groups.items(), key=lambda kv: -1.0 if kv[1][key] is None else kv[1][key])
    return best[0]


SECTION_BUILDERS: list[Callable[[Path], Section | None]] = [weight_cosine, vector_cosine]

"""Readable terminal tables (rich) for the commands' results."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def print_inspect(info: dict[str, Any]) -> None:
    c = _console()
    t = Table(title=f"{info['name']}  ({info['path']})", show_header=False)
    for key in (
        "architecture", "model_type", "family", "layers", "hidden_size", "intermediate_size", "num_heads",
        "num_kv_heads", "head_dim", "vocab_size", "tie_word_embeddings", "weight_layout", "shards",
        "tensors", "parameters", "bytes", "dtypes", "fused_tensors_split",
    ):  # fmt: skip
        value = info.get(key)
        if isinstance(value, list):
            value = ", ".join(map(str, value)) or "-"
        elif isinstance(value, int) and not isinstance(value, bool):
            value = f"{value:,}"
        t.add_row(key, str(value))
    c.print(t)
    comp = Table(title="parameters by component (fused tensors split)")
    comp.add_column("component")
    comp.add_column("parameters", justify="right")
    comp.add_column("share", justify="right")
    total = max(sum(info["parameters_by_component"].values()), 1)
    for k, v in info["parameters_by_component"].items():
        comp.add_row(k, f"{v:,}", f"{100 * v / total:.2f}%")
    c.print(comp)


def print_diff(summary: dict[str, Any]) -> None:
    c = _console()
    for m in summary["models"]:
        t = Table(title=f"{m['name']} vs base: weight cosine / relative change")
        t.add_column("group")
        t.add_column("cosine", justify="right")
        t.add_column("1 - cosine", justify="right")
        t.add_column("|tau|/|W|", justify="right")
        rows = [("all", m["global"]), ("all w/o embeddings", m["without_embeddings"])]
        rows += list(m["by_group"].items()) + list(m["by_component"].items())
        for name, g in rows:
            t.add_row(name, f"{g['cosine']:.6f}", f"{g['one_minus_cosine']:.3e}", f"{g['relative_change']:.3e}")
        c.print(t)
    vc = summary["vector_cosine"]
    if len(vc["names"]) > 1:
        t = Table(title="cosine between tuning vectors (w/o embeddings); null: random 1/sqrt(D), sign-flip std")
        t.add_column("")
        for n in vc["names"]:
            t.add_column(n, justify="right")
        block = vc["without_embeddings"]
        for i, n in enumerate(vc["names"]):
            cells = []
            for j in range(len(vc["names"])):
                v = block["matrix"][i][j]
                sf = block["baseline"]["signflip_std"][i][j]
                cells.append(f"{v:+.4f}" + (f" (±{sf:.1e})" if i != j else ""))
            t.add_row(n, *cells)
        c.print(t)
        base = block["baseline"]
        c.print(f"random-vector null std 1/sqrt(D) = {base['random_std']:.2e} (D = {base['numel']:,})")


def print_table4(summary: dict[str, Any]) -> None:
    """Paper Table 4 shape: rows = model × share kind, columns = components, cells = share (ratio)."""
    from rich.box import SIMPLE

    console = _console()
    for label, block in summary["table4"].items():
        cols = [c for c in block["columns"] if any(r.get(c) is not None for r in block["rows"])]
        t = Table(title=f"SSA, k by {label}: {block['aggregate']}; ratio = share / random baseline", box=SIMPLE)
        t.add_column("model")
        t.add_column("share")
        for c in cols:
            t.add_column(c, justify="right")
        for r in block["rows"]:
            t.add_row(r["model"], r["share"], *(_cell(r.get(c)) for c in cols))
            t.add_row("", "ratio", *(_cell(r["ratio"].get(c)) for c in cols), style="dim")
        console.print(t)
    cache = summary["cache"]
    console.print(
        f"bases: {cache['hits']} cached, {cache['misses']} computed "
        f"({summary['decomposition']['decompose_seconds']:.1f} s); cache: {cache['folder'] or 'off'}"
    )


def _cell(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"

"""``tunelens spectrum``: the spectral anatomy of tuning vectors (ranks, amplification, intruder dimensions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tunelens.cli.options import basis_options, make_basis_selection, make_read_options, read_options_without_vocab


@click.command(
    "spectrum",
    epilog="Example: tunelens spectrum base/ full=ft-med/ lora=ft-med-lora/ -o out/spectrum --per-head",
)
@click.argument("base")
@click.argument("tuned", nargs=-1, required=True)
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--intruder-k", type=int, default=10, show_default=True,
              help="Top-k left singular vectors of W_ft checked for intruders.")  # fmt: skip
@click.option("--intruder-eps", type=float, default=0.5, show_default=True,
              help="An intruder has max |cos| below this with every left singular vector of W_pre.")  # fmt: skip
@click.option("--amp-rank", type=int, default=16, show_default=True,
              help="r of the amplification factor |tau| / |U_r^T W V_r| (tau's own top-r directions).")  # fmt: skip
@basis_options
@read_options_without_vocab
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
def spectrum_cmd(base: str, tuned: tuple[str, ...], out: Path, **kw: Any) -> None:
    """Singular-value anatomy of each TUNED model's tuning vector per 2-D attention / MLP weight of
    BASE: effective, stable and 90/99%-energy ranks, the amplification factor, and intruder
    dimensions (W_ft's top singular vectors far from every singular vector of W_pre).

    Writes spectrum.csv and summary.json; prints per-component means.
    """
    from tunelens.checkpoints.prefetch import prefetch

    prefetch([base, *tuned])  # the disk starts while torch imports
    from tunelens import api

    options = make_read_options(kw)
    selection = make_basis_selection(kw, "spectrum")
    result = api.spectrum(
        base,
        list(tuned),
        out=out,
        intruder_k=kw["intruder_k"],
        intruder_eps=kw["intruder_eps"],
        amp_rank=kw["amp_rank"],
        per_head=kw["per_head"],
        method=kw["method"],
        cache_dir=kw["cache_dir"],
        use_cache=not kw["no_cache"],
        selection=selection,
        options=options,
        force=kw["force"],
    )
    if not options.quiet:
        print_spectrum(result.summary)
    click.echo(f"wrote {out}/spectrum.csv and {out}/summary.json")


def print_spectrum(summary: dict[str, Any]) -> None:
    """Per model: component means of the rank measures, amplification and intruder totals."""
    from rich.box import SIMPLE
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True)
    opts = summary["options"]
    for m in summary["models"]:
        t = Table(title=f"{m['name']}: spectrum of tau, mean over layers (intruders: total, k={opts['intruder_k']}, "
                  f"eps={opts['intruder_eps']}; amplification r={opts['amp_rank']})", box=SIMPLE)  # fmt: skip
        for col in ("component", "eff. rank", "x random", "stable rank", "r90", "r99", "amplif.", "intruders"):
            t.add_column(col, justify="left" if col == "component" else "right")
        for comp, g in m["by_component"].items():
            mean = g.get("mean", {})
            cells = [mean.get("effective_rank"), g.get("effective_rank_vs_random")]
            cells += [mean.get(c) for c in ("stable_rank", "energy_rank_90", "energy_rank_99", "amplification")]
            t.add_row(comp, *(_cell(c) for c in cells), str(g.get("intruders_total", "-")))
        console.print(t)


def _cell(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"

"""``tunelens subspace``: subspace alignment (SSA) of tuning vectors with the base's singular subspaces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tunelens.cli.options import basis_options, make_basis_selection, make_read_options, read_options_without_vocab
from tunelens.errors import TunelensError


def _floats(text: str | None, flag: str) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise TunelensError(f"bad {flag} {text!r}: use comma-separated numbers, e.g. 0.5,0.9") from exc


def _ints(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise TunelensError(f"bad --rank {text!r}: use comma-separated integers, e.g. 16,64") from exc


@click.command(
    "subspace",
    epilog="Example: tunelens subspace base/ med=ft-med/ math=vec-math/ -o out/ssa --energy 0.5,0.9,0.99 --per-head",
)
@click.argument("base")
@click.argument("tuned", nargs=-1, required=True)
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--energy", metavar="LIST", help="k = smallest k keeping this share of sum(s^2) (default 0.9).")
@click.option("--rank-fraction", metavar="LIST", help="k = ceil(f * min(out, in)), e.g. 0.1,0.25.")
@click.option("--rank", metavar="LIST", help="Fixed k (capped at min(out, in)), e.g. 16,64.")
@click.option("--tau-rank", type=click.IntRange(1), default=16, show_default=True, help="r of tau_top_r_share.")
@click.option(
    "--tau-spectrum/--no-tau-spectrum",
    default=False,
    show_default=True,
    help="Also report tau's effective rank and top-r share (one float64 Gram + eigvalsh of tau per tensor and model).",
)
@basis_options
@read_options_without_vocab
@click.option("--device", default="cpu", show_default=True, help="Decompose and project on cpu or cuda[:N].")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
def subspace_cmd(base: str, tuned: tuple[str, ...], out: Path, **kw: Any) -> None:
    """How much of each TUNED model's tuning vector (or vector folder) lies in the top-k
    singular subspaces of BASE's attention and MLP weights: left, right and two-sided
    shares with random baselines, per tensor / component / layer (and head).

    Writes subspace.csv and summary.json; prints a Table-4-style view.
    """
    from tunelens.checkpoints.prefetch import prefetch

    prefetch([base, *tuned])  # the disk starts while torch imports
    from tunelens import api

    options = make_read_options(kw)
    selection = make_basis_selection(kw, "subspace")
    result = api.subspace(
        base,
        list(tuned),
        out=out,
        energy=_floats(kw["energy"], "--energy"),
        rank_fraction=_floats(kw["rank_fraction"], "--rank-fraction"),
        rank=_ints(kw["rank"]),
        per_head=kw["per_head"],
        tau_rank=kw["tau_rank"],
        tau_spectrum=kw["tau_spectrum"],
        method=kw["method"],
        cache_dir=kw["cache_dir"],
        use_cache=not kw["no_cache"],
        selection=selection,
        options=options,
        force=kw["force"],
        device=kw["device"],
    )
    if not options.quiet:
        from tunelens.report.terminal import print_table4

        print_table4(result.summary)
    click.echo(f"wrote {out}/subspace.csv and {out}/summary.json")

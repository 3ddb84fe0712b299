"""``tunelens compare``: paired tests between finished evaluate / study runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

_EPILOG = """\b
Examples:
  tunelens compare out/eval-base out/eval-med -o out/cmp
  tunelens compare out/demo -o out/demo-cmp            (every model of a study against its base)
  tunelens compare out/eval-a out/eval-b out/eval-c --all-pairs -o out/cmp
"""


@click.command("compare", epilog=_EPILOG)
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--all-pairs", is_flag=True, help="Compare every pair of models, not each against the first.")
@click.option("--resamples", type=click.IntRange(10_000), default=10_000, show_default=True,
              help="Bootstrap resamples (and Monte Carlo sign-flip patterns).")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the resampling.")
@click.option("--level", type=click.FloatRange(0.5, 1.0, max_open=True), default=0.95, show_default=True,
              help="Confidence level of the intervals.")  # fmt: skip
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("-q", "--quiet", is_flag=True, help="Only say where the files are.")
def compare_cmd(
    runs: tuple[Path, ...],
    out: Path,
    all_pairs: bool,
    resamples: int,
    seed: int,
    level: float,
    force: bool,
    quiet: bool,
) -> None:
    """Paired comparisons of RUNS (tunelens evaluate or study output folders; a study counts as all of its
    evaluate runs): each model or variant against the first (or every pair), per task and metric, on the items
    both scored. Exact McNemar for 0/1 metrics, a paired sign-flip test for continuous ones, a paired bootstrap
    interval of the difference, Holm adjustment over all rows. Tasks defined differently are refused.

    Writes comparisons.csv and comparisons.json.
    """
    from tunelens import api
    from tunelens.evaluation.compare import is_change

    result = api.compare(list(runs), out=out, all_pairs=all_pairs, resamples=resamples, seed=seed, level=level,
                         force=force)  # fmt: skip
    changes = [r for r in result.rows if is_change(r)]
    if not quiet:
        for r in changes:
            click.echo(change_line(r))
    click.echo(f"{len(changes)} of {len(result.rows)} differences are changes (Holm-adjusted p < 0.05)")
    click.echo(f"wrote {out}/comparisons.csv and {out}/comparisons.json")


def change_line(r: dict[str, Any]) -> str:
    """One comparison row as a line: task, metric, a → b, difference, interval, adjusted p."""

    def num(x: Any) -> str:
        return "-" if x is None else f"{x:+.4f}"

    return (f"{r['task']:<18} {r['metric']:<12} {r['a']} → {r['b']}: {num(r['diff'])} "
            f"[{num(r['ci_low'])}, {num(r['ci_high'])}]  p_adj {r['p_adjusted']:.2g}")  # fmt: skip

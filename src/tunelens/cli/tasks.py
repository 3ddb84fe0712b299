"""``tunelens tasks``: the built-in evaluation tasks, their items, metrics and data sources."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("tasks", epilog="Example: tunelens tasks --json")
@click.option("--data-dir", type=click.Path(path_type=Path),
              help="Count the items of this folder (mmlu/, pubmedqa/, gsm8k/) instead of the bundled copies "
              "(default: $TUNELENS_DATA, else the copies shipped with tunelens).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def tasks_cmd(data_dir: Path | None, as_json: bool) -> None:
    """List the built-in tasks `tunelens evaluate -t NAME` accepts: kind, items, few-shot pool,
    metrics, data file and its source and licence.
    """
    from tunelens.evaluation.catalog import builtin_tasks

    info = builtin_tasks(data_dir)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    header = ("task", "kind", "items", "few-shot", "metrics", "data", "source")
    rows = [header]
    for t in info["tasks"]:
        if "error" in t:
            rows.append((t["name"], "-", "-", "-", "-", "-", t["error"]))
            continue
        pool = "-" if t["fewshot_items"] is None else f"{t['fewshot_items']} ({t['num_fewshot']}-shot)"
        source = f"{t['repository']}@{t['commit'][:7]} ({t['licence']})" if t["repository"] else "not a bundled file"
        rows.append((t["name"], t["kind"], str(t["items"]), pool, ", ".join(t["metrics"]), t["data"], source))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        click.echo(
            "  ".join(
                c.rjust(w) if i == 2 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
            ).rstrip()
        )
    where = "the copies bundled with tunelens" if info["bundled"] else "--data-dir / $TUNELENS_DATA"
    click.echo(f"data: {info['data_root']} ({where}); provenance and licences in each folder's README.md")

"""Commands over weights: ``inspect``, ``diff``, ``vector``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from tunelens.cli.lora import lora_rank_options
from tunelens.cli.options import make_read_options, make_selection, read_options, selection_options


@click.command("inspect")
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--allow-pickle", is_flag=True, help="Read pickle .bin checkpoints (unsafe).")
def inspect_cmd(model: str, as_json: bool, allow_pickle: bool) -> None:
    """Architecture, components, shapes, dtypes, tied weights and shards of MODEL (headers only)."""
    from tunelens import api
    from tunelens.config import ReadOptions

    info = api.inspect(model, options=ReadOptions(allow_pickle=allow_pickle))
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        from tunelens.report.terminal import print_inspect

        print_inspect(info)
        if "hub_id" in info:
            click.echo(f"hub id: {info['hub_id']} @ {info['ref']} = commit {info['revision']}")
        if info.get("format") == "gguf":
            quant = ", ".join(f"{t} x{n}" for t, n in info["quantization"].items())
            size = f"{info['file_bytes']:,} bytes"
            click.echo(f"format: gguf ({info['gguf_architecture']}, {size}); tensor types: {quant}")
            if info["unmapped_tensors"]:
                click.echo(f"not mapped to Hugging Face names (not read): {', '.join(info['unmapped_tensors'])}")


@click.command("diff", epilog="Example: tunelens diff base/ med=ft-med/ math=ft-math/ -o out/diff")
@click.argument("base")
@click.argument("tuned", nargs=-1, required=True)
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--device", default="cpu", show_default=True, help="Where the sums run: cpu or cuda[:N].")
@selection_options
@read_options
def diff_cmd(base: str, tuned: tuple[str, ...], out: Path, force: bool, device: str, **kw: Any) -> None:
    """Weight cosine, 1 - cosine and relative change of each TUNED model (or vector folder)
    against BASE, per tensor / component / layer / model, and the cosine between their
    tuning vectors with a null baseline. One streaming pass, exact float64 sums.

    Writes tensors.csv and summary.json.
    """
    from tunelens.checkpoints.prefetch import prefetch

    prefetch([base, *tuned])  # the disk starts while torch imports
    from tunelens import api

    options = make_read_options(kw)
    selection = make_selection(kw)
    result = api.diff(base, list(tuned), out=out, selection=selection, options=options, force=force, device=device)
    if not options.quiet:
        from tunelens.report.terminal import print_diff

        print_diff(result.summary)
    click.echo(f"wrote {out}/tensors.csv and {out}/summary.json")


@click.command(
    "vector",
    epilog="Examples: tunelens vector base/ ft-med/ -o vec-med/ ; "
    "tunelens vector base/ ft-med/ --lora --energy 0.9 -o lora-med/",
)
@click.argument("base")
@click.argument("tuned")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Output vector folder.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True)
@click.option(
    "--lora",
    is_flag=True,
    help="Write tau as a PEFT LoRA adapter (truncated SVD per 2-D layer weight, --rank R or --energy E) "
    "instead of a dense vector folder; see `tunelens lora`.",
)
@lora_rank_options
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@read_options
def vector_cmd(
    base: str,
    tuned: str,
    out: Path,
    dtype: str,
    lora: bool,
    rank: int | None,
    energy: float | None,
    keep_full: bool,
    force: bool,
    **kw: Any,
) -> None:
    """Save the tuning vector tau = TUNED - BASE as a sharded safetensors folder.

    Any command that takes a tuned model accepts this folder in its place. With --lora, write a
    PEFT LoRA adapter of tau instead (lora.csv: per tensor rank, retained energy, relative
    Frobenius error; tunelens.json: the tensors kept full or dropped).
    """
    from tunelens import api

    options = make_read_options(kw)
    if lora or rank is not None or energy is not None or keep_full:
        from tunelens.cli.lora import run_lora

        run_lora(base, tuned, out, rank, energy, options, force, keep_full)
        return
    api.vector(base, tuned, out, dtype=dtype, options=options, force=force)
    click.echo(f"wrote {out}")

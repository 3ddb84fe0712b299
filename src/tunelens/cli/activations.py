"""``tunelens activations``: fraction of active FFN neurons per layer and pattern distances."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@click.command(
    "activations",
    epilog="Example: tunelens activations pre=base/ inst=instruct/ med=medical/ --corpus pmc/ "
    "--max-tokens 1000000 -o out/acts",
)
@click.argument("models", nargs=-1, required=True)
@click.option(
    "--corpus",
    "corpus",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Text files, JSONL files (a 'text' field per line) or folders of them (.gz too); repeatable. "
    "Default: the bundled HPO medical corpus.",
)
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--seq-len", type=int, default=512, show_default=True, help="Tokens per sequence, BOS included.")
@click.option("--max-tokens", type=int, help="Use only the first N corpus tokens (recorded in the output).")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Sequences per forward pass.")
@click.option(
    "--bos",
    type=click.Choice(["auto", "yes", "no"]),
    default="auto",
    show_default=True,
    help="Prepend BOS to every sequence (auto: when the tokenizer has one).",
)
@click.option("--count-bos", is_flag=True, help="Count BOS positions in fractions and distances (default: excluded).")
@click.option(
    "--pattern",
    type=click.Choice(["gate", "gate_up"]),
    default="gate",
    show_default=True,
    help="gate: act(gate_proj(x)) > 0; gate_up: act(gate_proj(x)) * up_proj(x) > 0.",
)
@click.option(
    "--distance",
    type=click.Choice(["hamming", "levenshtein"]),
    default="hamming",
    show_default=True,
    help="Per-token distance / d_ff; levenshtein (edit distance of the active-index lists) is for small "
    "inputs: it costs about (d_ff/2)^2/64 operations per token and layer.",
)
@click.option(
    "--dtype",
    type=click.Choice(["auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16"]),
    default="auto",
    show_default=True,
    help="Compute dtype for every model (auto: the first model's stored dtype; fp32/bf16/fp16 are aliases).",
)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option(
    "--no-store",
    is_flag=True,
    help="Fractions only: no patterns on disk, no distances "
    "(storing takes ceil(d_ff/8) bytes per token per layer per model but the last).",
)
@click.option(
    "--work-dir",
    type=click.Path(path_type=Path),
    help="Where the token file and the packed patterns go while running (default: the system temp folder).",
)
@click.option("--text-field", default="text", show_default=True, help="JSONL field holding the text.")
@click.option(
    "--tokenizer",
    type=click.Path(path_type=Path),
    help="Tokenizer folder (default: the first model's); every model's own tokenizer must equal it.",
)
@click.option(
    "--allow-nonfinite",
    is_flag=True,
    help="Analyse a model whose activations hold NaN/Inf (default: stop with an error); the affected layers' "
    "numbers are null.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or table.")
def activations_cmd(
    models: tuple[str, ...],
    corpus: tuple[Path, ...],
    out: Path,
    force: bool,
    seq_len: int,
    max_tokens: int | None,
    batch_size: int,
    bos: str,
    count_bos: bool,
    pattern: str,
    distance: str,
    dtype: str,
    device: str,
    no_store: bool,
    work_dir: Path | None,
    text_field: str,
    tokenizer: Path | None,
    allow_nonfinite: bool,
    quiet: bool,
) -> None:
    """Fraction of active FFN neurons per layer of each MODEL on a corpus, and the normalised
    distance between the binary activation patterns of every pair of models (same token ids).

    One model is resident at a time; the patterns of all but the last model are kept bit-packed on
    disk. Writes activations.json and activations.csv.
    """
    from tunelens import api
    from tunelens.activations.options import ActivationOptions
    from tunelens.checkpoints.causal_lm import transformers_output

    options = ActivationOptions(
        seq_len=seq_len,
        max_tokens=max_tokens,
        batch_size=batch_size,
        bos=bos,  # type: ignore[arg-type]
        count_bos=count_bos,
        pattern=pattern,  # type: ignore[arg-type]
        distance=distance,  # type: ignore[arg-type]
        dtype=DTYPE_ALIASES.get(dtype, dtype),  # type: ignore[arg-type]
        device=device,
        store=not no_store,
        work_dir=work_dir,
        text_field=text_field,
        tokenizer=tokenizer,
        quiet=quiet,
        allow_nonfinite=allow_nonfinite,
    )
    with transformers_output(quiet=quiet):
        result = api.activations(list(models), corpus=list(corpus) or None, out=out, options=options, force=force)
    if not quiet:
        _print_table(result.summary)
        store = result.summary["pattern_store"]
        if store["stored"]:
            click.echo(
                f"patterns: {_size(store['pattern_bytes'])} on disk while running "
                f"({store['bytes_per_token_per_layer']} bytes per token per layer per stored model), removed"
            )
    click.echo(f"wrote {out}/activations.json and {out}/activations.csv")


def _print_table(summary: dict[str, Any]) -> None:
    """Per layer: fraction active of each model and distance of each pair."""
    from rich.console import Console
    from rich.table import Table

    models, pairs = summary["models"], summary["pairs"]
    t = Table(title=f"FFN activations on {summary['corpus']['tokens']:,} tokens ({summary['dtype']})")
    t.add_column("layer", justify="right")
    for m in models:
        t.add_column(f"active {m['name']}", justify="right")
    for p in pairs:
        t.add_column(f"{p['metric']} {p['a']}-{p['b']}", justify="right")
    for layer in range(max(len(m["fraction_active"]) for m in models)):
        cells = [f"{m['fraction_active'][layer]:.4f}" if layer < len(m["fraction_active"]) else "" for m in models]
        cells += [f"{p['distance'][layer]:.4f}" for p in pairs]
        t.add_row(str(layer), *cells)
    t.add_row("mean", *[f"{m['mean']:.4f}" for m in models], *[f"{p['mean']:.4f}" for p in pairs])
    Console(highlight=False, soft_wrap=True).print(t)


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"

"""``lora``: extract a PEFT LoRA adapter from the tuning vector TUNED - BASE (also usable as ``vector --lora``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from tunelens.cli.options import make_read_options, read_options

F = Callable[..., Any]


def lora_rank_options(fn: F) -> F:
    """--rank / --energy / --keep-full: how the rank of each tensor's LoRA is chosen, what else is kept."""
    fn = click.option("--keep-full", is_flag=True,
                      help="Store what a LoRA cannot carry (norms, biases, untied embeddings, lm_head) whole, "
                      "as fine-tuned values (PEFT modules_to_save), instead of dropping it.")(fn)  # fmt: skip
    fn = click.option("--energy", type=float, metavar="ETA",
                      help="Per tensor, the smallest rank whose singular values keep this share of ||tau||^2 "
                      "(e.g. 0.9).")(fn)  # fmt: skip
    fn = click.option("--rank", type=int, metavar="R", help="Fixed LoRA rank per tensor (capped at the matrix rank).")(
        fn
    )
    return fn


def run_lora(
    base: str,
    tuned: str,
    out: Path,
    rank: int | None,
    energy: float | None,
    options: Any,
    force: bool,
    keep_full: bool = False,
) -> None:
    """Extract, write and print where (shared by ``tunelens lora`` and ``tunelens vector --lora``)."""
    from tunelens import api

    meta = api.lora(base, tuned, out, rank=rank, energy=energy, keep_full=keep_full, options=options, force=force)
    t = meta["tensors"]
    click.echo(
        f"wrote {out} ({t['lora']} LoRA tensors, {len(t['kept_full'])} kept full, {len(t['dropped'])} dropped holding "
        f"{meta['dropped_share']:.2%} of ||tau||^2; overall relative error {meta['global_relative_error']:.4f}; "
        f"per tensor in {out}/lora.csv)"
    )


@click.command("lora", epilog="Example: tunelens lora base/ ft-med/ --energy 0.9 -o lora-med/")
@click.argument("base")
@click.argument("tuned")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Output adapter folder.")
@lora_rank_options
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@read_options
def lora_cmd(
    base: str, tuned: str, out: Path, rank: int | None, energy: float | None, keep_full: bool, force: bool, **kw: Any
) -> None:
    """Extract a LoRA adapter (PEFT format) of tau = TUNED - BASE by truncated SVD per 2-D layer weight.

    Writes adapter_model.safetensors + adapter_config.json (load with PeftModel.from_pretrained),
    lora.csv (per tensor: rank, retained energy, relative Frobenius error, kept full, or why it
    was dropped) and tunelens.json (the kept-full and dropped lists).
    """
    run_lora(base, tuned, out, rank, energy, make_read_options(kw), force, keep_full)

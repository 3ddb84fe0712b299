"""Options shared by the streaming commands, declared once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from tunelens.errors import TunelensError

F = Callable[..., Any]


EXECUTOR_OPTIONS = [
    click.option(
        "--executor",
        type=click.Choice(["thread", "process", "ray"]),
        default="thread",
        show_default=True,
        help="Who runs the per-tensor jobs: threads in this process, --workers local processes, or Ray tasks "
        "(same numbers bit for bit; see docs/scale.md).",
    ),
    click.option("--address", metavar="auto|HOST:PORT", help="--executor ray: join this cluster (default: local)."),
    click.option(
        "--retries",
        type=click.IntRange(0, 100),
        default=3,
        show_default=True,
        help="--executor process/ray: re-runs of a job whose worker died.",
    ),
]


def executor_options(fn: F) -> F:
    """--executor, --address, --retries."""
    for deco in reversed(EXECUTOR_OPTIONS):
        fn = deco(fn)
    return fn


VOCAB_OPTION = click.option(
    "--vocab",
    type=click.Choice(["error", "crop", "skip"]),
    default="error",
    show_default=True,
    help="What to do when embed/lm_head row counts differ: stop with a report, compare the "
    "shared rows, or leave those tensors out (recorded in the output).",
)

READ_OPTIONS = [
    click.option(
        "--missing",
        type=click.Choice(["error", "skip"]),
        default="error",
        show_default=True,
        help="Tensors of the base missing elsewhere: stop, or analyse the rest (recorded).",
    ),
    click.option(
        "--allow-pickle",
        is_flag=True,
        help="Read pickle .bin checkpoints (unsafe: pickle can run code; weights_only=True is used).",
    ),
    click.option(
        "--allow-nonfinite",
        is_flag=True,
        help="Analyse inputs holding NaN/Inf instead of stopping (every affected number is null).",
    ),
    click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True, help="Tensors in flight."),
    click.option("-q", "--quiet", is_flag=True, help="No progress bar or tables."),
    *EXECUTOR_OPTIONS,
]


def read_options(fn: F) -> F:
    """--vocab, --missing, --allow-pickle, --allow-nonfinite, --workers, --quiet, and the executor options."""
    for deco in reversed([VOCAB_OPTION, *READ_OPTIONS]):
        fn = deco(fn)
    return fn


def read_options_without_vocab(fn: F) -> F:
    """:func:`read_options` for a command that never reads embeddings (its vocabulary policy is fixed)."""
    for deco in reversed(READ_OPTIONS):
        fn = deco(fn)
    return fn


def selection_options(fn: F) -> F:
    """--components, --layers, --no-embeddings."""
    for deco in reversed(
        [
            click.option(
                "--components",
                metavar="LIST",
                help="Only these components or groups, e.g. q,v or attention,mlp "
                "(embed q k v o gate up down attn_norm mlp_norm final_norm lm_head other).",
            ),
            click.option("--layers", metavar="RANGES", help="Only these layers, e.g. 0-11 or 0,4,8."),
            click.option("--no-embeddings", is_flag=True, help="Leave embed and lm_head out entirely."),
        ]
    ):
        fn = deco(fn)
    return fn


def make_read_options(kw: dict[str, Any]) -> Any:
    """:class:`~tunelens.config.ReadOptions` from the popped values of :func:`read_options` (without
    ``--vocab``: skip, the policy of commands that never read embeddings)."""
    from tunelens.config import ReadOptions

    return ReadOptions(
        vocab=kw.pop("vocab", "skip"),
        missing=kw.pop("missing"),
        allow_pickle=kw.pop("allow_pickle"),
        allow_nonfinite=kw.pop("allow_nonfinite"),
        workers=kw.pop("workers"),
        quiet=kw.pop("quiet"),
        **executor_kwargs(kw),
    )


def executor_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    """``executor``, ``address``, ``retries`` of :class:`~tunelens.config.ReadOptions`, popped from ``kw``."""
    return {"executor": kw.pop("executor"), "address": kw.pop("address"), "retries": kw.pop("retries")}


def make_selection(kw: dict[str, Any]) -> Any:
    from tunelens.config import Selection, parse_components, parse_layers

    return Selection(
        components=parse_components(kw.pop("components")),
        layers=parse_layers(kw.pop("layers")),
        embeddings=not kw.pop("no_embeddings"),
    )


#: the 2-D weights subspace and spectrum analyse
ANALYSED_COMPONENTS = ("q", "k", "v", "o", "gate", "up", "down")


def basis_options(fn: F) -> F:
    """--per-head, --method, --cache-dir, --no-cache, --components, --layers: the options of the commands that
    decompose the base's 2-D weights (subspace, spectrum), which share one decomposition cache."""
    for deco in reversed(
        [
            click.option(
                "--per-head", is_flag=True, help="Also report each attention head (q/k/v rows, o columns; GQA aware)."
            ),
            click.option(
                "--method",
                type=click.Choice(["auto", "gram", "svd"]),
                default="auto",
                show_default=True,
                help="Exact basis: float64 Gram eigh, full float64 SVD, or pick by shape.",
            ),
            click.option(
                "--cache-dir",
                type=click.Path(path_type=Path),
                help="Where base decompositions are cached, shared by subspace and spectrum "
                "[default: $TUNELENS_CACHE/subspace or ~/.cache/tunelens/subspace].",
            ),
            click.option("--no-cache", is_flag=True, help="Neither read nor write the decomposition cache."),
            click.option(
                "--components", metavar="LIST", help="Only these of q,k,v,o,gate,up,down (or attention, mlp)."
            ),
            click.option("--layers", metavar="RANGES", help="Only these layers, e.g. 0-11 or 0,4,8."),
        ]
    ):
        fn = deco(fn)
    return fn


def make_basis_selection(kw: dict[str, Any], command: str) -> Any:
    """The :class:`~tunelens.config.Selection` of :func:`basis_options` (embeddings never analysed); a component
    that is not a 2-D q/k/v/o/gate/up/down weight is one error line."""
    from tunelens.config import Selection, parse_components, parse_layers

    components = parse_components(kw["components"])
    bad = [c for c in components or () if c not in ANALYSED_COMPONENTS]
    if bad:
        raise TunelensError(f"{command} analyses {','.join(ANALYSED_COMPONENTS)} only, not {', '.join(bad)}")
    return Selection(components=components, layers=parse_layers(kw["layers"]), embeddings=False)

"""``apply``: θ = θ_target + Σ λ_i τ_i into a loadable checkpoint (negation, scaling, addition, merges)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tunelens.cli.options import make_read_options, read_options

COMMANDLINE = click.core.ParameterSource.COMMANDLINE
#: options that a --recipe file holds itself (given with --recipe, they are an error)
_RECIPE_OPTIONS = (
    "target", "only", "components", "layers", "no_embeddings", "scales", "mean", "method", "density", "seed",
    "dtype", "shard_size",
)  # fmt: skip

_EPILOG = """Examples:

\b
  tunelens apply base/ -v ft-med/:-1 -o negated/            theta_pre - tau (task-arithmetic negation)
  tunelens apply base/ -v ft-med/:-1 --target ft -o back/    theta_ft - tau = theta_pre
  tunelens apply base/ -v med=ft-med/ -v math=ft-math/ --mean -o merged/
  tunelens apply base/ -v ft-med/:-1 --only mlp --layers 0-11 -o mlp-neg/
  tunelens apply base/ -v a/ -v b/ --method ties --density 0.2 -o ties/
  tunelens apply --recipe recipe.yaml -o out/
"""


@click.command("apply", epilog=_EPILOG)
@click.argument("base", required=False)
@click.option("-v", "--vector", "vectors", multiple=True, metavar="SPEC",
              help="A fine-tuned model or vector folder: PATH, PATH:LAMBDA, NAME=PATH or NAME=PATH:LAMBDA "
              "(LAMBDA may be negative; default 1). Repeat for several.")  # fmt: skip
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Output model folder.")
@click.option("--recipe", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="A YAML recipe (base, vectors with per-vector masks and factors, method...) "
              "instead of BASE -v.")  # fmt: skip
@click.option("--target", type=click.Choice(["pre", "ft"]), default="pre", show_default=True,
              help="Add onto the base (pre) or onto the first vector's fine-tuned model (ft).")  # fmt: skip
@click.option("--only", metavar="GROUPS", help="Edit only these groups/components, e.g. attention or mlp.")
@click.option(
    "--components", metavar="LIST", help="Edit only these components, e.g. gate,up (intersected with --only)."
)
@click.option("--layers", metavar="RANGES", help="Edit only these layers, e.g. 0-11 or 0,4,8.")
@click.option("--no-embeddings", is_flag=True, help="Leave embed and lm_head unchanged.")
@click.option("--scale", "scales", multiple=True, metavar="COMP=F",
              help="Multiply lambda by F on a component or group, e.g. mlp=0.5. Repeatable.")  # fmt: skip
@click.option("--mean", is_flag=True, help="Divide every lambda by the number of vectors (the mean of the vectors).")
@click.option("--method", type=click.Choice(["sum", "ties", "dare_linear", "dare_ties"]), default="sum",
              show_default=True, help="Plain weighted sum, or PEFT's TIES / DARE merges of the vectors.")  # fmt: skip
@click.option("--density", type=float, help="TIES: share of each vector's largest entries kept (k); DARE: keep "
              "probability (drop rate p = 1 - density).")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of DARE's random drops.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]),
              help="Output dtype of float tensors (default: each tensor keeps the target's dtype).")  # fmt: skip
@click.option("--shard-size", default="5GB", show_default=True, help="Largest shard, e.g. 2GB or 500MB.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@read_options
def apply_cmd(base: str | None, vectors: tuple[str, ...], out: Path, recipe: Path | None, **kw: Any) -> None:
    """Write theta = theta_target + sum_i lambda_i tau_i as a checkpoint transformers loads.

    tau_i = FT_i - BASE for each fine-tuned model, or as stored in a vector folder. A negative
    lambda negates. Masks and factors select what changes; tensors with every lambda 0 are copied
    byte for byte. Writes sharded safetensors + index, config, tokenizer, generation config, a
    model card and tunelens.json (recipe, lambdas, masks, inputs' sha256, dtypes, skipped tensors).
    """
    from tunelens.checkpoints.prefetch import prefetch

    prefetch([*([base] if base else []), *vectors])  # the disk starts while torch imports
    from tunelens import api
    from tunelens.arithmetic.spec import (
        build_recipe,
        load_recipe,
        mask,
        parse_component_scales,
        parse_size,
        parse_vector_spec,
    )
    from tunelens.errors import TunelensError

    options = make_read_options(kw)
    force = kw.pop("force")
    if recipe is not None:
        ctx = click.get_current_context()
        given = [f"--{k.replace('_', '-')}" for k in _RECIPE_OPTIONS if ctx.get_parameter_source(k) == COMMANDLINE]
        if base or vectors or given:
            raise TunelensError(f"--recipe holds the whole recipe; drop {', '.join(['BASE', '-v', *given])}")
        plan = load_recipe(recipe)
    else:
        if not base or not vectors:
            raise TunelensError("give BASE and at least one -v SPEC, or --recipe FILE")
        plan = build_recipe(
            base,
            [parse_vector_spec(v) for v in vectors],
            selection=mask(
                components=kw["components"], only=kw["only"], layers=kw["layers"], embeddings=not kw["no_embeddings"]
            ),
            component_scales=parse_component_scales(kw["scales"]),
            mean=kw["mean"],
            target=kw["target"],
            method=kw["method"],
            density=kw["density"],
            seed=kw["seed"],
            dtype=kw["dtype"],
            shard_bytes=parse_size(kw["shard_size"]),
        )
    result = api.apply(plan, out, options=options, force=force)
    t = result.metadata["tensors"]
    click.echo(f"wrote {out} ({t['edited']} of {t['written']} tensors edited; recipe in {out}/tunelens.json)")

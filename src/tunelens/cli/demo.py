"""``tunelens demo``: the embedded default — the demo zoo through the whole study, one command."""

from __future__ import annotations

from pathlib import Path

import click

from tunelens.cli.study import say, summary
from tunelens.errors import TunelensError


@click.command("demo", epilog="Example: tunelens demo -o out/demo   (first run ~27 min on 2 cores; --resume: seconds)")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=Path("out/demo"), show_default=True)
@click.option("--resume", is_flag=True, help="Continue or reuse a demo study in OUT.")
@click.option("--force", is_flag=True, help="Replace an existing OUT (the zoo cache is kept).")
@click.option("--tiny", is_flag=True, help="Tiny random models trained for seconds (a smoke run, not the study).")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Zoo cache (default ~/.cache/tunelens/zoo).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def demo_cmd(out: Path, resume: bool, force: bool, tiny: bool, cache_dir: Path | None, quiet: bool) -> None:
    """Build (or reuse) the demo zoo — SmolLM2-135M-Instruct and its medical, math and code fine-tunes —
    and run the full study on it into OUT."""
    from tunelens.checkpoints.causal_lm import transformers_output
    from tunelens.study.demo import demo_config
    from tunelens.study.pipeline import run_study
    from tunelens.zoo import ZooSpec, build

    log = say(quiet)
    if out.exists() and not (resume or force):
        raise TunelensError(f"{out} already exists; pass --resume to reuse it or --force to replace it")
    log("zoo: building or reusing the demo models")
    with transformers_output(quiet=quiet):
        zoo = build(ZooSpec.tiny() if tiny else ZooSpec.demo(), cache_dir, quiet=quiet)
        cfg = demo_config(zoo)
        runs = run_study(cfg, out, resume=resume, force=force, quiet=quiet, log=log)
    summary(out, runs, True)

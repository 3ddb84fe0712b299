"""``tunelens study``, ``tunelens report`` and ``tunelens demo``: the whole study, one config in, one report out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from tunelens.study.pipeline import StageRun


def say(quiet: bool) -> Callable[[str], None]:
    def log(line: str) -> None:
        if not quiet:
            click.echo(line, err=True)

    return log


@click.command("study", epilog="Example: tunelens study study.yaml -o out/study   (then open out/study/report.html)")
@click.argument("config", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Study folder.")
@click.option("--resume", is_flag=True, help="Continue a study in OUT: reuse stages whose inputs are unchanged.")
@click.option("--force", is_flag=True, help="Replace an existing OUT.")
@click.option("--no-report", is_flag=True, help="Run the stages only (build the report later with tunelens report).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def study_cmd(config: Path, out: Path, resume: bool, force: bool, no_report: bool, quiet: bool) -> None:
    """Run the stages STUDY.yaml names (diff, subspace, activations, evaluate, edits, sweep) into OUT."""
    from tunelens.checkpoints.causal_lm import transformers_output
    from tunelens.study.config import StudyConfig
    from tunelens.study.pipeline import run_study

    cfg = StudyConfig.from_yaml(config)
    with transformers_output(quiet=quiet):
        runs = run_study(
            cfg, out, resume=resume, force=force, quiet=quiet, report=not no_report, log=say(quiet), inputs=(config,)
        )
    summary(out, runs, not no_report)


@click.command("report", epilog="Example: tunelens report out/study")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--title", default=None, help="Page title (default: the study's).")
def report_cmd(folder: Path, title: str | None) -> None:
    """Build FOLDER/report.html (images embedded) and FOLDER/figures/*.png from a study's stage outputs."""
    import json

    from tunelens.errors import TunelensError
    from tunelens.report.html import build_report

    if title is None:
        state = folder / "study.json"
        try:
            title = (
                json.loads(state.read_text()).get("title", "tunelens study") if state.exists() else "tunelens report"
            )
        except (OSError, ValueError, AttributeError) as exc:
            raise TunelensError(f"{state}: cannot read the study state ({exc})") from exc
    try:
        click.echo(build_report(folder, title=title))
    except OSError as exc:
        raise TunelensError(f"{folder}: cannot write the report there ({exc.strerror or exc})") from exc


def summary(out: Path, runs: Sequence[StageRun], report: bool) -> None:
    reused = sum(r.reused for r in runs)
    click.echo(f"{len(runs)} stage(s), {reused} reused; wrote {out}")
    if report:
        click.echo(f"report: {out / 'report.html'}")

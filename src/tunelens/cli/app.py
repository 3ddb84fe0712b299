"""The click group: turns library errors into one line and a non-zero exit."""

from __future__ import annotations

import sys
import warnings
from typing import Any

import click

from tunelens import __version__
from tunelens.errors import TunelensError


class UserError(click.ClickException):
    """A :class:`TunelensError` shown as ``Error: <one line>`` with its exit code."""

    def __init__(self, error: TunelensError) -> None:
        super().__init__(str(error))

    exit_code = TunelensError.exit_code


class TunelensGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TunelensError as exc:
            raise UserError(exc) from exc
        except KeyboardInterrupt:
            click.echo("interrupted: nothing was written", err=True)
            sys.exit(130)


def _one_line_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, *args: Any, **kw: Any
) -> None:
    click.echo(f"warning: {message}", err=True)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """``tunelens --version``: versions from the installed packages' metadata (torch is not imported)."""
    if not value or ctx.resilient_parsing:
        return
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def installed(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    click.echo(f"tunelens {__version__}")
    click.echo(
        f"torch {installed('torch')}, transformers {installed('transformers')}, Python {platform.python_version()}"
    )
    ctx.exit()


@click.group(cls=TunelensGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the versions of tunelens and of the torch, transformers and Python it runs with.")  # fmt: skip
def cli() -> None:
    """tunelens: what domain fine-tuning does to a language model.

    Measure (diff, subspace, activations), explain (report), edit (vector, apply) and
    evaluate base, fine-tuned and edited checkpoints: local Hugging Face folders of
    safetensors. MODEL arguments accept NAME=PATH to name a model in outputs.
    """
    warnings.showwarning = _one_line_warning

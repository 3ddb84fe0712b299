"""The ``tunelens`` command line: a thin click shell over :mod:`tunelens.api`.

Nothing heavy is imported at module level (torch, transformers, numpy, safetensors are imported
inside the commands), so ``tunelens --help`` is instant; a test checks it in a subprocess.
"""

from __future__ import annotations

from tunelens.cli.activations import activations_cmd
from tunelens.cli.app import cli
from tunelens.cli.apply import apply_cmd
from tunelens.cli.compare import compare_cmd
from tunelens.cli.demo import demo_cmd
from tunelens.cli.evaluate import evaluate_cmd
from tunelens.cli.lora import lora_cmd
from tunelens.cli.spectrum import spectrum_cmd
from tunelens.cli.study import report_cmd, study_cmd
from tunelens.cli.subspace import subspace_cmd
from tunelens.cli.tasks import tasks_cmd
from tunelens.cli.weights import diff_cmd, inspect_cmd, vector_cmd
from tunelens.cli.zoo import zoo_cmd

cli.add_command(inspect_cmd)
cli.add_command(diff_cmd)
cli.add_command(vector_cmd)
cli.add_command(apply_cmd)
cli.add_command(lora_cmd)
cli.add_command(activations_cmd)
cli.add_command(subspace_cmd)
cli.add_command(spectrum_cmd)
cli.add_command(evaluate_cmd)
cli.add_command(tasks_cmd)
cli.add_command(compare_cmd)
cli.add_command(study_cmd)
cli.add_command(report_cmd)
cli.add_command(demo_cmd)
cli.add_command(zoo_cmd)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="tunelens")


__all__ = ["cli", "main"]

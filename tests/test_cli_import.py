"""Importing the CLI must not import torch, transformers, numpy, safetensors or matplotlib."""

from __future__ import annotations

import subprocess
import sys


def test_cli_import_is_light() -> None:
    code = (
        "import sys, tunelens.cli\n"
        "heavy = [m for m in ('torch', 'transformers', 'numpy', 'safetensors', 'matplotlib') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"tunelens.cli imported heavy modules at import time: {out}"


def test_help_lists_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tunelens", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for cmd in ("inspect", "diff", "vector"):
        assert cmd in out

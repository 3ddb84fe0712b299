"""The fault suite's tools: tiny inputs built once per session, and one "run and check" helper.

``fault(args, inputs=[...], match="...")`` runs the real CLI (click's CliRunner) and checks what issue 14
asks of every bad input: exit code 2, exactly one ``Error:`` line (click's own usage lines aside), no
traceback, and every input's bytes unchanged (sha256 of every file, and no file added or removed).
``run_cli_subprocess`` runs ``tunelens`` in a separate process for the cases that need one (signals,
concurrent runs).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import tunelens
from tunelens.cli import cli

ALLOWED_EXTRA = ("Usage:", "Try '", "warning:")  # click's usage lines for a bad option; warnings


def snapshot(paths: Iterable[Path]) -> dict[str, str]:
    """sha256 of every file under ``paths`` (a file or a folder, symlinks followed once), by path."""
    out: dict[str, str] = {}
    for p in paths:
        p = Path(p)
        if p.is_symlink() and not p.exists():
            out[str(p)] = f"-> {os.readlink(p)}"
            continue
        files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else []
        if not p.exists():
            out[str(p)] = "absent"
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def check_one_error(output: str, match: str | None) -> str:
    """The single ``Error:`` line of ``output`` (nothing else but click's usage lines and warnings)."""
    lines = [line for line in output.splitlines() if line.strip()]
    assert "Traceback" not in output, output
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1, output
    others = [line for line in lines if not line.startswith("Error:") and not line.startswith(ALLOWED_EXTRA)]
    assert not others, output
    if match is not None:
        assert re.search(match, errors[0]), f"{match!r} not in {errors[0]!r}"
    return errors[0]


@dataclass
class Fault:
    """Run the CLI on a bad input and check the contract (see the module docstring)."""

    def __call__(
        self,
        args: list[Any],
        *,
        inputs: list[Path],
        match: str | None = None,
        code: int = 2,
        out: Path | None = None,
    ) -> str:
        before = snapshot(inputs)
        out_before = snapshot([out]) if out is not None else None
        result: Result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        assert result.exit_code == code, result.output
        line = check_one_error(result.output, match)
        assert snapshot(inputs) == before, "an input changed"
        if out is not None:
            assert snapshot([out]) == out_before, "the output location changed"
            assert not list(out.parent.glob(f".{out.name}.tmp-*")), "a temporary folder was left behind"
        return line


@pytest.fixture(scope="session")
def snap() -> Callable[[Iterable[Path]], dict[str, str]]:
    """:func:`snapshot`, for tests that check inputs themselves."""
    return snapshot


@pytest.fixture(scope="session")
def fault() -> Fault:
    return Fault()


@pytest.fixture(scope="session")
def pair(tiny: Callable[..., Path], tuned: Callable[..., Path]) -> tuple[Path, Path]:
    """A tiny Llama base and a fine-tune (base + 1% noise), built once; never modified by a test."""
    base = tiny("llama")
    return base, tuned(base)


@pytest.fixture()
def copies(pair: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """Copies of the pair a test may break or write beside (``tmp/base``, ``tmp/ft``)."""
    base, ft = pair
    return shutil.copytree(base, tmp_path / "base"), shutil.copytree(ft, tmp_path / "ft")


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("corpus") / "text.txt"
    p.write_text("The patient presented with fever and a persistent cough. Blood pressure was normal.\n" * 8)
    return p


def run_cli_subprocess(args: list[str], *, prelude: str = "", timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``tunelens ARGS`` in a fresh interpreter, after running ``prelude`` (e.g. a patch that sends Ctrl-C)."""
    src = str(Path(tunelens.__file__).parents[1])
    code = f"import sys\nsys.argv = {['tunelens', *args]!r}\n{prelude}\nfrom tunelens.cli import main\nmain()\n"
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


@pytest.fixture(scope="session")
def subprocess_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_cli_subprocess

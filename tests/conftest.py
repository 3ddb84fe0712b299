"""Session fixtures: tiny real models of every family, built offline from config objects."""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import pytest

from tunelens.testing import make_tiny, perturb


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        default="cuda",
        help="the accelerator `gpu` tests compare with the CPU (cuda or cuda:N); without one they fail",
    )


def require_accelerator(device: str) -> None:
    """Fail (never skip, never fall back to the CPU) unless ``device`` is a CUDA device that exists: a
    ``gpu`` test on the CPU would compare the CPU with itself and pass without having checked anything."""
    if not device.startswith("cuda"):
        pytest.fail(
            f"gpu tests compare --device cuda with the CPU: --device {device} would compare the CPU with itself"
        )
    import torch

    if not torch.cuda.is_available():
        pytest.fail(
            f"gpu tests need a CUDA device and this machine has none (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda or 'none'}); run them where one exists: make test-gpu",
            pytrace=False,
        )
    index = device.partition(":")[2] or "0"
    if not index.isdigit() or int(index) >= torch.cuda.device_count():
        pytest.fail(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)", pytrace=False)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Every test marked ``gpu`` needs the accelerator, whether or not it asks for the ``device`` fixture."""
    if item.get_closest_marker("gpu") is not None:
        require_accelerator(str(item.config.getoption("--device")))


REQUIRE_REFERENCES = "TUNELENS_REQUIRE_REFERENCES"


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    text = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return text.removeprefix("Skipped: ")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """With ``TUNELENS_REQUIRE_REFERENCES=1`` (``make test-reference``, CI) a ``reference`` test that skips
    (lm-eval, mergekit or SmolLM2 missing) fails: a cross-check that did not run must not look like one
    that passed."""
    report = yield
    if report.skipped and os.environ.get(REQUIRE_REFERENCES) == "1" and item.get_closest_marker("reference"):
        reason = _skip_reason(report)
        report.outcome = "failed"
        report.longrepr = f"reference test skipped where it must run ({REQUIRE_REFERENCES}=1): {reason}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, Any]:
    """The same for a test module that skips as a whole at import (``pytest.importorskip`` at module level)."""
    report = yield
    if report.skipped and os.environ.get(REQUIRE_REFERENCES) == "1" and isinstance(collector, pytest.Module):
        reason = _skip_reason(report)
        report.outcome = "failed"
        report.longrepr = f"test module skipped at import where references must run ({REQUIRE_REFERENCES}=1): {reason}"
    return report


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> str:
    """The accelerator of the ``gpu`` tests (checked before each of them runs)."""
    return str(request.config.getoption("--device"))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``tiny("llama", seed=0, sharded=False)`` → folder of a tiny random model (cached per session)."""
    cache: dict[tuple[Any, ...], Path] = {}
    root = tmp_path_factory.mktemp("tiny")

    def build(family: str, *, seed: int = 0, sharded: bool = False, **overrides: Any) -> Path:
        key = (family, seed, sharded, tuple(sorted(overrides.items())))
        if key not in cache:
            folder = root / f"{family}-s{seed}{'-sharded' if sharded else ''}-{len(cache)}"
            make_tiny(family, folder, seed=seed, max_shard_size="20KB" if sharded else None, **overrides)
            cache[key] = folder
        return cache[key]

    return build


@pytest.fixture(scope="session")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``tuned(base_folder, scale=1e-2, seed=1, only=None)`` → a perturbed copy (cached per session)."""
    cache: dict[tuple[Any, ...], Path] = {}
    root = tmp_path_factory.mktemp("tuned")

    def build(base: Path, *, scale: float = 1e-2, seed: int = 1, only: Callable[[str], bool] | None = None) -> Path:
        key = (str(base), scale, seed, only)
        if key not in cache:
            cache[key] = perturb(base, root / f"ft-{len(cache)}", scale=scale, seed=seed, only=only)
        return cache[key]

    return build

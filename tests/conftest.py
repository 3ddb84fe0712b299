"""Session fixtures: tiny real models of every family, built offline from config objects."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tunelens.testing import make_tiny, perturb


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", help="device for optional accelerator checks (cpu or cuda)")


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> str:
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

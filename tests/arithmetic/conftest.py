"""Helpers for the arithmetic tests: run ``apply`` on tiny pairs and compare with naive state dicts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tunelens.arithmetic.combine import ApplyResult, apply_recipe
from tunelens.arithmetic.spec import build_recipe, parse_vector_spec
from tunelens.config import ReadOptions
from tunelens.testing import make_tiny, perturb, read_state


@pytest.fixture(scope="session")
def bf16_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A bf16 llama base and a perturbed fine-tune (bf16 differences are exact in float32)."""
    root = tmp_path_factory.mktemp("bf16")
    base = make_tiny("llama", root / "base", dtype=torch.bfloat16, seed=3)
    return base, perturb(base, root / "ft", seed=5)


@pytest.fixture
def run_apply(tmp_path: Path) -> Callable[..., tuple[dict[str, torch.Tensor], ApplyResult]]:
    """``run_apply(base, ["ft:-1", ...], **recipe_options)`` → (output state dict, result)."""
    counter = iter(range(1000))

    def run(base: Path, specs: list[str], *, selection: Any = None, scales: Any = (), mean: bool = False,
            options: ReadOptions | None = None, **kw: Any) -> tuple[dict[str, torch.Tensor], ApplyResult]:  # fmt: skip
        recipe = build_recipe(
            base,
            [parse_vector_spec(s) for s in specs],
            selection=selection,
            component_scales=scales,
            mean=mean,
            **kw,
        )
        out = tmp_path / f"out{next(counter)}"
        result = apply_recipe(recipe, out, options=options or ReadOptions(quiet=True))
        return read_state(out), result

    return run


def _ulp_close(actual: torch.Tensor, expected: torch.Tensor, *magnitudes: torch.Tensor, ulps: float = 4.0) -> bool:
    """|actual - expected| ≤ ``ulps`` · eps(dtype) · max(|expected|, |each magnitude|) elementwise."""
    eps = torch.finfo(expected.dtype).eps
    mag = expected.double().abs()
    for m in magnitudes:
        mag = torch.maximum(mag, m.double().abs())
    return bool(((actual.double() - expected.double()).abs() <= ulps * eps * mag).all())


@pytest.fixture(scope="session")
def ulp_close() -> Callable[..., bool]:
    return _ulp_close

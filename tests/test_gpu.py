"""``--device cuda`` equals the CPU path within stated tolerances (run with ``pytest -m gpu --device cuda``
on a machine with a GPU; never needed in CI). Without CUDA the flag is one clear error."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from tunelens import api
from tunelens.cli import cli


def test_cuda_without_a_gpu_is_one_error(tiny: Callable[..., Path], tuned: Callable[..., Path], tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the error path cannot occur")
    base = tiny("llama")
    ft = tuned(base)
    for cmd in ("diff", "subspace"):
        res = CliRunner().invoke(cli, [cmd, str(base), str(ft), "-o", str(tmp_path / cmd), "--device", "cuda"])
        assert res.exit_code == 2, res.output
        assert "no CUDA device is available" in res.output
        assert not (tmp_path / cmd).exists()
    res = CliRunner().invoke(cli, ["diff", str(base), str(ft), "-o", str(tmp_path / "x"), "--device", "tpu"])
    assert res.exit_code == 2 and "--device must be cpu or cuda" in res.output


@pytest.mark.gpu
def test_diff_on_gpu_matches_cpu(tiny: Callable[..., Path], tuned: Callable[..., Path], device: str) -> None:
    base = tiny("llama")
    fts = [f"a={tuned(base, seed=1)}", f"b={tuned(base, seed=2)}"]
    cpu = api.diff(base, fts)
    gpu = api.diff(base, fts, device=device)
    for r, g in zip(cpu.rows, gpu.rows, strict=True):
        for col in ("cosine", "relative_change", "delta_norm"):
            assert g[col] == pytest.approx(r[col], rel=1e-9, abs=1e-12), (r["tensor"], col)
    m_cpu = cpu.summary["vector_cosine"]["matrix"]
    m_gpu = gpu.summary["vector_cosine"]["matrix"]
    for row_cpu, row_gpu in zip(m_cpu, m_gpu, strict=True):
        assert row_gpu == pytest.approx(row_cpu, rel=1e-9)


@pytest.mark.gpu
def test_subspace_on_gpu_matches_cpu(
    tiny: Callable[..., Path], tuned: Callable[..., Path], tmp_path: Path, device: str
) -> None:
    base = tiny("llama")
    ft = tuned(base, scale=0.05)
    kw = {"energy": [0.5, 0.9], "tau_spectrum": True, "use_cache": False}
    cpu = api.subspace(base, [ft], **kw)
    gpu = api.subspace(base, [ft], device=device, **kw)
    for r, g in zip(cpu.rows, gpu.rows, strict=True):
        assert g["k"] == r["k"]
        for col in ("share_left", "share_right", "share_both", "tau_effective_rank", "tau_top_r_share"):
            if not math.isnan(r[col]):
                assert g[col] == pytest.approx(r[col], rel=1e-5, abs=1e-7), (r["tensor"], col)

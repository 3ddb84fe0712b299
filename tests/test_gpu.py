"""``--device cuda`` equals the CPU path within stated tolerances: ``pytest -m gpu`` (``make test-gpu``,
which also runs ``bench/bench_gpu.py``) on a machine with a GPU; ``--device cuda:N`` picks another.

Where no CUDA device exists, every ``gpu`` test fails (tests/conftest.py ``require_accelerator``):
on the CPU it would only compare the CPU with itself. The default run (``-m "not slow and not gpu"``)
never selects them. Without CUDA, ``--device cuda`` on the command line is one clear error.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
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


CORPUS = "The patient presented with fever and a persistent cough. Blood pressure was normal. " * 20
MCQA = [
    {"question": "Which organ filters blood?", "choices": ["the heart", "the kidney", "the lung"], "answer": 1},
    {"question": "What is 1 + 1?", "choices": ["1", "2", "3"], "answer": 1},
    {"question": "def add(a, b): return a + b. add(1, 2)?", "choices": ["3", "12"], "answer": 0},
]


@pytest.mark.gpu
def test_activations_on_gpu_match_cpu(
    tiny: Callable[..., Path], tuned: Callable[..., Path], tmp_path: Path, device: str
) -> None:
    """Patterns are thresholds (gate > 0): a gate within float32 rounding of 0 may flip, so fractions and
    distances agree to 1e-3 (each flip moves them by 1 / (tokens x d_ff), ~3e-5 here), not bit for bit."""
    from tunelens.activations.options import ActivationOptions

    base = tiny("llama")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    models = [f"base={base}", f"ft={tuned(base, scale=0.05)}"]
    runs = {
        d: api.activations(models, corpus=corpus, options=ActivationOptions(seq_len=32, dtype="float32", device=d))
        for d in ("cpu", device)
    }
    cpu, gpu = runs["cpu"].summary, runs[device].summary
    assert gpu["device"] == device
    for mc, mg in zip(cpu["models"], gpu["models"], strict=True):
        assert mg["tokens"] == mc["tokens"]
        assert mg["fraction_active"] == pytest.approx(mc["fraction_active"], abs=1e-3)
    for pc, pg in zip(cpu["pairs"], gpu["pairs"], strict=True):
        assert pg["distance"] == pytest.approx(pc["distance"], abs=1e-3)


@pytest.mark.gpu
def test_evaluate_on_gpu_matches_cpu(tiny: Callable[..., Path], tmp_path: Path, device: str) -> None:
    task = tmp_path / "mcqa.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in MCQA))
    cpu = api.evaluate(tiny("llama"), [f"mcqa={task}"], dtype="float32", device="cpu")
    gpu = api.evaluate(tiny("llama"), [f"mcqa={task}"], dtype="float32", device=device)
    assert gpu.summary["options"]["device"] == device
    for sc, sg in zip(cpu.samples, gpu.samples, strict=True):
        assert sg["loglikelihoods"] == pytest.approx(sc["loglikelihoods"], rel=1e-4, abs=1e-4), sc["id"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "gpu tests need a CUDA device and this machine has none"),
        (["--device", "cpu"], "would compare the CPU with itself"),
    ],
)
def test_gpu_tests_fail_without_a_gpu(args: list[str], message: str) -> None:
    """``pytest -m gpu`` where no CUDA device is visible: every gpu test fails, none passes or skips."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.pathsep.join(sys.path)}
    res = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-m", "gpu", "-q", "-p", "no:cacheprovider", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).parents[1],
        timeout=300,
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert message in res.stdout
    tail = res.stdout.strip().splitlines()[-1]
    assert "4 error" in tail and "passed" not in tail and "skipped" not in tail, tail

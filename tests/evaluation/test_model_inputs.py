"""Inputs as users have them, run as models: a PEFT LoRA adapter runs on the base it names (its τ added in
place), a GGUF file through transformers' GGUF loader — each gives the numbers of its merged / converted
folder (``evaluate``; ``activations`` in tests/activations)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tunelens import api
from tunelens.testing import make_lora, merge_lora


@pytest.fixture(scope="module")
def adapter_and_merged(tiny: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eval-adapter")
    base = tiny("llama")
    adapter = make_lora(base, root / "adapter", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                        std=0.2)  # fmt: skip
    return adapter, merge_lora(base, adapter, root / "merged")


def tiny_base(adapter: Path) -> Path:
    import json

    return Path(json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"])


def test_evaluate_an_adapter_equals_its_merge(adapter_and_merged: tuple[Path, Path], data_dir: Path) -> None:
    adapter, merged = adapter_and_merged
    got = api.evaluate(str(adapter), ["mmlu_medical"], data_dir=data_dir)
    ref = api.evaluate(str(merged), ["mmlu_medical"], data_dir=data_dir)
    g, r = got.samples, ref.samples
    assert len(g) == len(r) > 0
    for a, b in zip(g, r, strict=True):
        assert a["id"] == b["id"]
        assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], abs=1e-4)
    assert [s["scores"] for s in g] == [s["scores"] for s in r]
    model = got.summary["inputs"][0]
    assert model["kind"] == "adapter" and model["adapter"]["r"] == 4
    assert model["runs_on"]["path"] == str(tiny_base(adapter))


def test_evaluate_apply_an_adapter_as_a_term(
    adapter_and_merged: tuple[Path, Path], tiny: Callable[..., Path], data_dir: Path
) -> None:
    """--apply ADAPTER on its base is the merge; --apply ADAPTER:-1 is its negation, restored after."""
    adapter, merged = adapter_and_merged
    base = tiny("llama")
    got = api.evaluate(str(base), ["mmlu_medical"], data_dir=data_dir, apply=[f"a={adapter}"])
    ref = api.evaluate(str(merged), ["mmlu_medical"], data_dir=data_dir)
    edited = [s for s in got.samples if s["variant"] == "edited"]
    assert len(edited) == len(ref.samples) > 0
    for a, b in zip(edited, ref.samples, strict=True):
        assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], abs=1e-4)

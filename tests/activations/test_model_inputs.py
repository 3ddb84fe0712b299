"""activations on inputs as users have them: a PEFT LoRA adapter runs on the base it names (τ added in place)
and matches PEFT's merged model; the base's tokenizer serves an adapter saved without one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tunelens import api
from tunelens.activations.options import ActivationOptions
from tunelens.testing import make_lora, merge_lora


def test_activations_of_an_adapter_equal_its_merge(
    tiny: Callable[..., Path], tmp_path: Path, corpus_file: Path
) -> None:
    base = tiny("llama")
    adapter = make_lora(base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["gate_proj", "up_proj"],
                        std=0.2)  # fmt: skip
    merged = merge_lora(base, adapter, tmp_path / "merged")
    opts = ActivationOptions(seq_len=32, dtype="float32", store=True)
    got = api.activations([f"base={base}", f"lora={adapter}"], corpus=corpus_file, options=opts).summary
    ref = api.activations([f"base={base}", f"lora={merged}"], corpus=corpus_file, options=opts).summary
    assert got["models"][1]["tokens"] == ref["models"][1]["tokens"]
    assert got["models"][1]["fraction_active"] == pytest.approx(ref["models"][1]["fraction_active"], abs=2e-3)
    assert got["pairs"][0]["distance"] == pytest.approx(ref["pairs"][0]["distance"], abs=2e-3)
    assert max(got["pairs"][0]["distance"]) > 0  # the adapter changed the patterns: the check has something to see

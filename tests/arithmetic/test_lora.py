"""LoRA extraction: factors against a numpy SVD, rank choice, the report, and loading through PEFT."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tunelens.arithmetic.lora import LoraSpec, choose_rank, extract_lora
from tunelens.checkpoints.index import open_checkpoint
from tunelens.errors import TunelensError
from tunelens.testing import perturb, read_state


def _low_rank_ft(base: Path, dst: Path, rank: int) -> Path:
    gen = torch.Generator().manual_seed(11)

    def fn(name: str, t: torch.Tensor) -> torch.Tensor:
        if t.dim() != 2 or "embed" in name or "lm_head" in name or "wte" in name or "wpe" in name:
            return t
        rows, cols = t.shape
        u, v = torch.randn(rows, rank, generator=gen), torch.randn(rank, cols, generator=gen)
        return t + 0.01 * (u @ v) / rank

    return perturb(base, dst, fn=fn)


def test_rank_choice_by_energy() -> None:
    s = torch.tensor([3.0, 2.0, 1.0, 0.5])  # energies 9, 4, 1, 0.25 of 14.25
    assert choose_rank(s, LoraSpec(energy=9 / 14.25)) == 1
    assert choose_rank(s, LoraSpec(energy=0.9)) == 2  # 13/14.25 = 0.912
    assert choose_rank(s, LoraSpec(energy=1.0)) == 4
    assert choose_rank(s, LoraSpec(rank=10)) == 4
    with pytest.raises(TunelensError):
        LoraSpec(rank=2, energy=0.5)


def test_factors_match_a_numpy_truncated_svd(tiny: Any, tuned: Any, tmp_path: Path) -> None:
    base = tiny("llama")
    ft = tuned(base)
    meta = extract_lora(open_checkpoint(base), open_checkpoint(ft), tmp_path / "lora", LoraSpec(rank=4))
    from safetensors.torch import load_file

    factors = load_file(str(tmp_path / "lora" / "adapter_model.safetensors"))
    b, f = read_state(base), read_state(ft)
    rows = {r["tensor"]: r for r in csv.DictReader((tmp_path / "lora" / "lora.csv").open())}
    name = "model.layers.1.mlp.down_proj.weight"
    tau = (f[name] - b[name]).double().numpy()
    u, s, vh = np.linalg.svd(tau, full_matrices=False)
    ref = (u[:, :4] * s[:4]) @ vh[:4]
    mod = "base_model.model.model.layers.1.mlp.down_proj"
    ba = (factors[f"{mod}.lora_B.weight"].double() @ factors[f"{mod}.lora_A.weight"].double()).numpy()
    assert np.allclose(ba, ref, atol=1e-7 * np.abs(tau).max())
    assert float(rows[name]["energy"]) == pytest.approx((s[:4] ** 2).sum() / (s**2).sum(), rel=1e-9)
    assert float(rows[name]["relative_error"]) == pytest.approx(
        np.linalg.norm(tau - ref) / np.linalg.norm(tau), rel=1e-5
    )
    dropped = {d["tensor"] for d in meta["tensors"]["dropped"]}
    assert "model.embed_tokens.weight" in dropped and "model.norm.weight" in dropped
    assert "model.layers.0.input_layernorm.weight" in dropped and name not in dropped
    assert 0 < meta["dropped_share"] < 1


@pytest.mark.parametrize("family", ["llama", "phi3", "gpt2"])
def test_peft_loads_the_adapter_and_merges_base_plus_low_rank_tau(family: str, tiny: Any, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = tiny(family)
    ft = _low_rank_ft(base, tmp_path / "ft", rank=2)
    out = tmp_path / "lora"
    meta = extract_lora(open_checkpoint(base), open_checkpoint(ft), out, LoraSpec(energy=0.999999))
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 2 and cfg["lora_alpha"] == 2
    assert meta["tensors"]["lora"] == len(cfg["target_modules"]) > 0
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(out)).merge_and_unload()
    f = read_state(ft)
    state = merged.state_dict()
    checked = 0
    for name in meta_lora_tensors(out):
        assert torch.allclose(state[name], f[name], atol=1e-6), name  # rank-2 τ recovered exactly
        checked += 1
    assert checked == meta["tensors"]["lora"]


def meta_lora_tensors(out: Path) -> list[str]:
    return [r["tensor"] for r in csv.DictReader((out / "lora.csv").open()) if r["status"].startswith("lora")]


def test_cli_lora_and_errors(tiny: Any, tuned: Any, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tunelens.cli import cli

    base = tiny("qwen2")
    runner = CliRunner()
    res = runner.invoke(cli, ["lora", str(base), str(tuned(base)), "-o", str(tmp_path / "l"), "--energy", "0.5", "-q"])
    assert res.exit_code == 0, res.output
    assert "LoRA tensors" in res.output and (tmp_path / "l" / "adapter_model.safetensors").is_file()
    res = runner.invoke(cli, ["lora", str(base), str(tuned(base)), "-o", str(tmp_path / "m"), "-q"])
    assert res.exit_code == 2 and "exactly one of --rank" in res.output


@pytest.mark.parametrize("family", ["qwen2", "gpt2", "llama_tied"])
def test_keep_full_makes_peft_merge_equal_the_finetune(family: str, tiny: Any, tuned: Any, tmp_path: Path) -> None:
    """At energy 1 with --keep-full, PEFT's merged model is θ_ft on every tensor except a tied
    embedding, which is listed as dropped (biases via bias='lora_only', norms/embeddings via
    modules_to_save)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunelens import api

    base = tiny(family)
    ft = tuned(base, scale=0.05)
    out = tmp_path / "lora"
    assert api.vector(base, ft, out, lora=True, energy=1.0, keep_full=True) == out
    meta = json.loads((out / "tunelens.json").read_text())
    t = meta["tensors"]
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(out)).merge_and_unload().state_dict()
    f, b = read_state(ft), read_state(base)
    dropped = {d["tensor"] for d in t["dropped"]}
    tied = {"llama_tied": {"model.embed_tokens.weight"}, "gpt2": {"transformer.wte.weight"}}.get(family, set())
    assert dropped == tied
    for name in f:
        want = b[name] if name in dropped else f[name]
        assert torch.allclose(merged[name], want, atol=1e-6, rtol=1e-5), name
    kept = set(t["kept_full"])
    assert kept and all(b[n].dim() == 1 or "embed" in n or "lm_head" in n or "wpe" in n for n in kept)
    assert len(kept) + t["lora"] + len(dropped) == len(b)
    if family == "qwen2":
        cfg = json.loads((out / "adapter_config.json").read_text())
        assert cfg["bias"] == "lora_only" and "model.layers.0.self_attn.q_proj.bias" in kept
    rows = {r["tensor"]: r for r in csv.DictReader((out / "lora.csv").open())}
    assert all(rows[n]["status"] == "kept full" and float(rows[n]["relative_error"]) < 1e-6 for n in kept)
    assert meta["dropped_share"] == pytest.approx(
        sum(float(rows[n]["tau_norm"]) ** 2 for n in dropped) / sum(float(r["tau_norm"]) ** 2 for r in rows.values())
    )

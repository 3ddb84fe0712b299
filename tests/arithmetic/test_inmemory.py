"""The in-place editor: same values as ``apply``'s checkpoint inside, the exact original bits after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tunelens.arithmetic.inmemory import edited
from tunelens.checkpoints.index import open_checkpoint
from tunelens.config import Selection
from tunelens.testing import read_state


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_bits(model: torch.nn.Module, snap: dict[str, torch.Tensor]) -> bool:
    state = model.state_dict()
    return set(state) == set(snap) and all(
        state[k].dtype == v.dtype and bool((state[k].view(torch.uint8) == v.view(torch.uint8)).all())
        for k, v in snap.items()
    )


def _load(folder: Path, dtype: torch.dtype = torch.float32) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).eval()


@pytest.mark.parametrize("family", ["llama", "llama_tied", "phi3", "gpt2", "qwen2"])
def test_inside_equals_apply_output_and_exit_restores_bits(family: str, tiny: Any, tuned: Any, run_apply: Any) -> None:
    base = tiny(family)
    ft1, ft2 = tuned(base, seed=1), tuned(base, seed=2)
    sel = Selection(components=("q", "up", "down", "embed", "attn_norm"), layers=(0, 2))
    want, _ = run_apply(base, [f"{ft1}:-1", f"{ft2}:0.5"], selection=sel)
    model = _load(base)
    snap = _snapshot(model)
    b = open_checkpoint(base)
    with edited(model, b, [(open_checkpoint(ft1), -1.0), (open_checkpoint(ft2), 0.5)], selection=sel) as m:
        state = m.state_dict()
        for name, w in want.items():
            assert torch.equal(state[name], w), name  # same float32 formula, same rounding
        assert not _same_bits(m, snap)
    assert _same_bits(model, snap)


def test_restores_on_exception_and_bf16_model_from_fp32_checkpoint(tiny: Any, tuned: Any) -> None:
    base = tiny("llama")
    ft = tuned(base)
    model = _load(base, torch.bfloat16)  # values differ from the stored float32: backups kept in memory
    snap = _snapshot(model)
    with pytest.raises(RuntimeError, match="boom"), edited(model, open_checkpoint(base), [(open_checkpoint(ft), 2.0)]):
        assert not _same_bits(model, snap)
        raise RuntimeError("boom")
    assert _same_bits(model, snap)


def test_lambda_sweep_values(tiny: Any, tuned: Any) -> None:
    base = tiny("mistral")
    ft = tuned(base)
    b, f = read_state(base), read_state(ft)
    model = _load(base)
    snap = _snapshot(model)
    name = "model.layers.1.mlp.up_proj.weight"
    for lam in (-1.0, 0.0, 0.5, 1.0):
        with edited(model, open_checkpoint(base), [(open_checkpoint(ft), lam)]):
            got = model.state_dict()[name]
            assert torch.allclose(got, b[name] + lam * (f[name] - b[name]), atol=1e-7)
        assert _same_bits(model, snap)


def test_component_factors_and_mask_match_apply(tiny: Any, tuned: Any, run_apply: Any) -> None:
    base = tiny("phi3")  # fused qkv / gate_up: factors act on parts, written back in place
    ft1, ft2 = tuned(base, seed=1), tuned(base, seed=2)
    sel = Selection(components=("k", "v", "up", "down", "final_norm"))
    factors = (("up", 0.25), ("v", -2.0))
    want, _ = run_apply(base, [f"{ft1}:0.5", f"{ft2}:-1"], selection=sel, scales=factors)
    model = _load(base)
    snap = _snapshot(model)
    terms = [(open_checkpoint(ft1), 0.5), (open_checkpoint(ft2), -1.0)]
    with edited(model, open_checkpoint(base), terms, selection=sel, component_scales=factors) as m:
        state = m.state_dict()
        for name, w in want.items():
            assert torch.equal(state[name], w), name
    assert _same_bits(model, snap)

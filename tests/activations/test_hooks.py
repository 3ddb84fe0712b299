"""The hooks capture exactly act(gate_proj(x)) > 0, recomputed by hand without hooks, bit for bit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tunelens.activations.hooks import find_sites, mlp_activation_hooks
from tunelens.errors import TunelensError

GATED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3")


def _ids(batch: int = 2, seq: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 320, (batch, seq), generator=g)


def _captured(model: Any, ids: torch.Tensor, pattern: str = "gate") -> list[torch.Tensor]:
    got: dict[int, torch.Tensor] = {}

    def sink(layer: int, mask: torch.Tensor) -> None:
        got[layer] = mask.clone()

    with mlp_activation_hooks(model, pattern, sink) as taps, torch.inference_mode():  # type: ignore[arg-type]
        taps.expect(*ids.shape)
        model(input_ids=ids, use_cache=False)
        taps.check()
    return [got[i] for i in range(len(got))]


@pytest.mark.parametrize("family", [*GATED_FAMILIES, "gpt2"])
def test_masks_equal_hook_free_reference(family: str, zero_attn: Callable[[str], Path], ref: Any) -> None:
    """Reference: output_hidden_states + the layer's own pre-MLP norm + weights from disk (no hooks)."""
    folder = zero_attn(family)
    model = ref.load(folder)
    ids = _ids()
    want = ref.hand_masks(folder, ref.hidden_state_inputs(model, ids, family))
    got = _captured(model, ids)
    assert len(got) == len(want) == 3
    for layer, (g, r) in enumerate(zip(got, want, strict=True)):
        assert g.shape == r.shape == (2, 24, model.config.intermediate_size if family != "gpt2" else 128)
        assert torch.equal(g, r), f"{family} layer {layer}: {int((g != r).sum())} bits differ"
        assert 0.2 < g.float().mean() < 0.8  # a real pattern, not all zeros / ones


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma2", "phi3", "gpt2"])
def test_masks_equal_reference_with_attention(family: str, tiny: Callable[..., Path], ref: Any) -> None:
    """Intact attention: reference from the MLP inputs a pre-hook on ``mlp`` sees, and weights from disk."""
    folder = tiny(family)
    model = ref.load(folder)
    ids = _ids(seed=1)
    want = ref.hand_masks(folder, ref.mlp_inputs_by_pre_hook(model, ids, family))
    got = _captured(model, ids)
    assert all(torch.equal(g, r) for g, r in zip(got, want, strict=True))


@pytest.mark.parametrize("family", ["llama", "gemma3", "phi3"])
def test_gate_up_pattern_equals_reference(family: str, zero_attn: Callable[[str], Path], ref: Any) -> None:
    folder = zero_attn(family)
    model = ref.load(folder)
    ids = _ids(seed=2)
    want = ref.hand_masks(folder, ref.hidden_state_inputs(model, ids, family), pattern="gate_up")
    got = _captured(model, ids, pattern="gate_up")
    gate_only = _captured(model, ids, pattern="gate")
    assert all(torch.equal(g, r) for g, r in zip(got, want, strict=True))
    assert any(not torch.equal(g, h) for g, h in zip(got, gate_only, strict=True))  # the up sign matters


def test_bfloat16_masks_equal_reference(zero_attn: Callable[[str], Path], ref: Any) -> None:
    folder = zero_attn("qwen2")
    model = ref.load(folder, dtype=torch.bfloat16)
    ids = _ids(seed=3)
    want = ref.hand_masks(folder, ref.hidden_state_inputs(model, ids, "qwen2"))
    got = _captured(model, ids)
    assert all(torch.equal(g, r) for g, r in zip(got, want, strict=True))


def test_phi3_hooks_pick_the_gate_half(zero_attn: Callable[[str], Path], ref: Any) -> None:
    folder = zero_attn("phi3")
    model = ref.load(folder)
    ids = _ids(seed=4)
    inputs = ref.hidden_state_inputs(model, ids, "phi3")
    gate_half = ref.hand_masks(folder, inputs, half="gate")
    up_half = ref.hand_masks(folder, inputs, half="up")
    got = _captured(model, ids)
    sites, d_ff = find_sites(model, "gate")
    assert [s.name for s in sites] == [f"model.layers.{i}.mlp.activation_fn" for i in range(3)]
    assert d_ff == 64 and got[0].shape[-1] == 64  # the gate half of the 128-wide gate_up_proj
    for g, gh, uh in zip(got, gate_half, up_half, strict=True):
        assert torch.equal(g, gh)
        assert not torch.equal(g, uh)


def test_site_names_per_family(tiny: Callable[..., Path], ref: Any) -> None:
    expected = {
        "llama": "model.layers.0.mlp.act_fn",
        "gemma2": "model.layers.0.mlp.act_fn",
        "gpt2": "transformer.h.0.mlp.act",
    }
    for family, name in expected.items():
        sites, _ = find_sites(ref.load(tiny(family)), "gate")
        assert sites[0].name == name
    sites, _ = find_sites(ref.load(tiny("llama")), "gate_up")
    assert sites[2].name == "model.layers.2.mlp.down_proj" and sites[2].reads == "input"


def _hook_count(model: Any) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_are_removed_even_when_the_forward_fails(tiny: Callable[..., Path], ref: Any) -> None:
    model = ref.load(tiny("llama"))
    before = _hook_count(model)
    with pytest.raises(RuntimeError, match="expected"):
        with mlp_activation_hooks(model, "gate", lambda layer, mask: None) as taps:
            assert _hook_count(model) == before + 3
            taps.expect(1, 5)  # wrong on purpose: the forward below has 7 positions
            model(input_ids=_ids(1, 7))
    assert _hook_count(model) == before


def test_fire_count_is_checked(tiny: Callable[..., Path], ref: Any) -> None:
    model = ref.load(tiny("llama"))
    ids = _ids(1, 6)
    with mlp_activation_hooks(model, "gate", lambda layer, mask: None) as taps, torch.inference_mode():
        taps.expect(*ids.shape)
        with pytest.raises(RuntimeError, match="fired 0 times"):
            taps.check()
        model(input_ids=ids)
        model(input_ids=ids)
        with pytest.raises(RuntimeError, match="fired 2 times"):
            taps.check()


def test_gpt2_has_no_gate_up_pattern(tiny: Callable[..., Path], ref: Any) -> None:
    with pytest.raises(TunelensError, match="no gate/up pair"):
        find_sites(ref.load(tiny("gpt2")), "gate_up")

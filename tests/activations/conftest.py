"""Hook-free references for the activation tests: masks recomputed by hand from the weights.

``zero_attn(family)`` is a tiny model whose attention output projection is all zeros, so the MLP
input of layer l is exactly the layer's pre-MLP norm applied to ``hidden_states[l]`` as transformers
returns it (``output_hidden_states``); ``reference`` then recomputes ``act(gate_proj(x))`` from the
safetensors weights with torch.nn.functional, no hooks of ours involved.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from tunelens.testing import perturb, read_state

GATED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3")
ALL_FAMILIES = (*GATED_FAMILIES, "gpt2")

# the norm whose output is the MLP input, per family
_MLP_NORM = {"gemma2": "pre_feedforward_layernorm", "gemma3": "pre_feedforward_layernorm", "gpt2": "ln_2"}


def _is_attn_out(name: str) -> bool:
    return name.endswith(("self_attn.o_proj.weight", "self_attn.o_proj.bias", "attn.c_proj.weight", "attn.c_proj.bias"))


def _act(name: str, x: torch.Tensor) -> torch.Tensor:
    """The activation by hand (torch.nn.functional), by its config name."""
    if name == "silu":
        return F.silu(x)
    if name in ("gelu_pytorch_tanh", "gelu_new"):
        return F.gelu(x, approximate="tanh")
    if name == "gelu":
        return F.gelu(x)
    raise ValueError(name)


def load(folder: Path, dtype: torch.dtype = torch.float32) -> Any:
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    return model.eval()


@functools.lru_cache(maxsize=16)
def _state(folder: str) -> dict[str, torch.Tensor]:
    """The weights as saved (read once per folder: the reference runs batch by batch)."""
    return read_state(Path(folder))


def hand_masks(
    folder: Path, mlp_inputs: list[torch.Tensor], pattern: str = "gate", half: str = "gate"
) -> list[torch.Tensor]:
    """Per layer, the (B, T, d_ff) pattern from the MLP inputs and the weights read from disk."""
    cfg = json.loads((folder / "config.json").read_text())
    act_name = cfg.get("hidden_act") or cfg.get("hidden_activation") or cfg.get("activation_function")
    state = _state(str(folder))
    out = []
    for layer, x in enumerate(mlp_inputs):
        if cfg["model_type"] == "gpt2":
            w = state[f"transformer.h.{layer}.mlp.c_fc.weight"].to(x.dtype)  # Conv1D [in, out]
            b = state[f"transformer.h.{layer}.mlp.c_fc.bias"].to(x.dtype)
            gate = torch.addmm(b, x.reshape(-1, x.shape[-1]), w).reshape(*x.shape[:-1], -1)
            out.append(_act(act_name, gate) > 0)
            continue
        prefix = f"model.layers.{layer}.mlp."
        if cfg["model_type"] == "phi3":
            fused = state[prefix + "gate_up_proj.weight"].to(x.dtype)
            both = F.linear(x, fused)
            gate, up = both.chunk(2, dim=-1)
            if half == "up":
                gate = up
        else:
            gate = F.linear(x, state[prefix + "gate_proj.weight"].to(x.dtype))
            up = F.linear(x, state[prefix + "up_proj.weight"].to(x.dtype))
        a = _act(act_name, gate)
        out.append((a * up > 0) if pattern == "gate_up" else (a > 0))
    return out


def hidden_state_inputs(model: Any, ids: torch.Tensor, family: str) -> list[torch.Tensor]:
    """MLP inputs of a zero-attention model: the layer's pre-MLP norm of ``hidden_states[l]``."""
    with torch.inference_mode():
        hs = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    layers = model.transformer.h if family == "gpt2" else model.model.layers
    norm = _MLP_NORM.get(family, "post_attention_layernorm")
    with torch.inference_mode():
        return [getattr(layer, norm)(hs[i]) for i, layer in enumerate(layers)]


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    """Tiny models: one torch thread is faster than two fighting over two shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def zero_attn(tiny: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``zero_attn(family)`` → a tiny model whose attention output projection is zero."""
    cache: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("zero-attn")

    def build(family: str) -> Path:
        if family not in cache:
            cache[family] = perturb(
                tiny(family), root / family, only=_is_attn_out, fn=lambda name, t: torch.zeros_like(t)
            )
        return cache[family]

    return build


@pytest.fixture(scope="session")
def negated_gate(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path, int], Path]:
    """``negated_gate(folder, layer)`` → a copy whose gate weights (GPT-2: c_fc) of ``layer`` are negated."""
    root = tmp_path_factory.mktemp("negated")

    def build(folder: Path, layer: int) -> Path:
        cfg = json.loads((folder / "config.json").read_text())
        d_ff = cfg.get("intermediate_size")

        def only(name: str) -> bool:
            return (
                f".{layer}.mlp.gate_proj." in name
                or f".{layer}.mlp.gate_up_proj." in name
                or (f"h.{layer}.mlp.c_fc." in name)
            )

        def fn(name: str, t: torch.Tensor) -> torch.Tensor:
            if "gate_up_proj" in name:  # Phi-3: negate the gate half (rows [:d_ff]) only
                t = t.clone()
                t[:d_ff] = -t[:d_ff]
                return t
            return -t

        return perturb(folder, root / f"{folder.name}-neg{layer}", only=only, fn=fn)

    return build


@pytest.fixture()
def corpus_file(tmp_path: Path) -> Path:
    """A small JSONL medical corpus."""
    lines = [
        "The patient presented with fever and a persistent cough for three days.",
        "Blood pressure was normal; the kidney filters blood and the heart pumps it.",
        "Seizures and hypertension were noted. Abnormality of the heart was suspected.",
        "Question: Which organ filters blood? Answer: the kidney.",
    ] * 6
    p = tmp_path / "corpus.jsonl"
    p.write_text("".join(json.dumps({"text": f"{i}: {t}"}) + "\n" for i, t in enumerate(lines)))
    return p


def mlp_inputs_by_pre_hook(model: Any, ids: torch.Tensor, family: str) -> list[torch.Tensor]:
    """MLP inputs of an intact model, read by a forward pre-hook on each ``mlp`` module (not ours)."""
    layers = model.transformer.h if family == "gpt2" else model.model.layers
    seen: list[torch.Tensor] = []
    handles = [layer.mlp.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone())) for layer in layers]
    try:
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return seen


class Reference:
    """The hook-free reference, handed to tests as the ``ref`` fixture."""

    load = staticmethod(load)
    hand_masks = staticmethod(hand_masks)
    hidden_state_inputs = staticmethod(hidden_state_inputs)
    mlp_inputs_by_pre_hook = staticmethod(mlp_inputs_by_pre_hook)


@pytest.fixture(scope="session")
def ref() -> Reference:
    return Reference()

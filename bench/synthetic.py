"""Synthetic Llama-shaped checkpoints written with tunelens' own writer (bench helper, no hub).

``make_pair(root, widths)`` writes a bf16 base and a "fine-tune" (base + small seeded noise) as
sharded safetensors folders with a config.json transformers would accept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from tunelens.checkpoints.stream import ST_DTYPES
from tunelens.checkpoints.writer import PlannedTensor, ShardedWriter


@dataclass(frozen=True)
class Widths:
    hidden: int = 2048
    intermediate: int = 8192
    layers: int = 16
    heads: int = 16
    kv_heads: int = 4
    vocab: int = 32000

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


ONE_B = Widths()
EIGHT_B = Widths(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=128256)


def shapes(w: Widths) -> list[tuple[str, tuple[int, ...]]]:
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (w.vocab, w.hidden))]
    kv = w.kv_heads * w.head_dim
    for i in range(w.layers):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (w.hidden,)),
            (p + "self_attn.q_proj.weight", (w.hidden, w.hidden)),
            (p + "self_attn.k_proj.weight", (kv, w.hidden)),
            (p + "self_attn.v_proj.weight", (kv, w.hidden)),
            (p + "self_attn.o_proj.weight", (w.hidden, w.hidden)),
            (p + "post_attention_layernorm.weight", (w.hidden,)),
            (p + "mlp.gate_proj.weight", (w.intermediate, w.hidden)),
            (p + "mlp.up_proj.weight", (w.intermediate, w.hidden)),
            (p + "mlp.down_proj.weight", (w.hidden, w.intermediate)),
        ]
    out += [("model.norm.weight", (w.hidden,)), ("lm_head.weight", (w.vocab, w.hidden))]
    return out


def config(w: Widths) -> dict[str, object]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": w.hidden,
        "intermediate_size": w.intermediate,
        "num_hidden_layers": w.layers,
        "num_attention_heads": w.heads,
        "num_key_value_heads": w.kv_heads,
        "vocab_size": w.vocab,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "rms_norm_eps": 1e-5,
    }


def write_model(folder: Path, w: Widths, *, seed: int, base_seed: int | None = None, scale: float = 1e-3) -> Path:
    """Weights ~ N(0, 0.02²) from ``base_seed`` (or ``seed``); with ``base_seed`` add ``scale``-relative noise."""
    folder.mkdir(parents=True, exist_ok=True)
    dtype = torch.bfloat16
    plan = [PlannedTensor(n, s, ST_DTYPES[dtype]) for n, s in shapes(w)]
    with ShardedWriter(folder, plan, max_shard_bytes=2 * 1024**3) as writer:
        for i, (name, shape) in enumerate(shapes(w)):
            g = torch.Generator().manual_seed((base_seed if base_seed is not None else seed) * 100_003 + i)
            t = torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=g) * 0.02
            if base_seed is not None:
                g2 = torch.Generator().manual_seed(seed * 100_003 + i)
                t += torch.randn(shape, generator=g2) * (0.02 if len(shape) > 1 else 1.0) * scale
            writer.write(name, t.to(dtype))
            del t
    (folder / "config.json").write_text(json.dumps(config(w), indent=2))
    return folder


def make_pair(root: Path, w: Widths = ONE_B, n_tuned: int = 1) -> tuple[Path, list[Path]]:
    base = root / "base"
    if not (base / "config.json").exists():
        write_model(base, w, seed=1)
    tuned = []
    for k in range(n_tuned):
        ft = root / f"ft{k}"
        if not (ft / "config.json").exists():
            write_model(ft, w, seed=10 + k, base_seed=1)
        tuned.append(ft)
    return base, tuned

"""Parse tensor names into (layer, component) and split fused tensors, from the architecture table."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

from tunelens.checkpoints.architectures import (
    FAMILIES,
    GENERIC_RULES,
    LAYER_PATTERN,
    Component,
    FusedSpec,
    Rule,
)

Layout = Literal["out_in", "in_out"]
_LAYER_RE = re.compile(LAYER_PATTERN)


@dataclass(frozen=True)
class Part:
    """One analysable piece of a stored tensor: the whole tensor or a slice of a fused one.

    ``dim``/``start``/``stop`` select the slice in the *stored* layout; ``None`` means the whole
    tensor. ``layout`` says whether 2-D weights are stored ``[out, in]`` (nn.Linear) or
    ``[in, out]`` (GPT-2 Conv1D).
    """

    tensor: str
    layer: int | None
    component: Component
    dim: int | None = None
    start: int = 0
    stop: int = 0
    layout: Layout = "out_in"

    @property
    def fused(self) -> bool:
        return self.dim is not None


@dataclass(frozen=True)
class ArchInfo:
    """What tunelens needs to know of an architecture, read from ``config.json``."""

    model_type: str
    architectures: tuple[str, ...]
    family: str  # a key of FAMILIES, or "generic"
    num_layers: int | None
    hidden_size: int | None
    intermediate_size: int | None
    num_heads: int | None
    num_kv_heads: int | None
    head_dim: int | None
    vocab_size: int | None
    tie_word_embeddings: bool

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ArchInfo:
        text = config.get("text_config")
        if isinstance(text, dict) and "hidden_size" not in config:
            config = {**text, **{k: v for k, v in config.items() if k != "text_config"}}
        model_type = str(config.get("model_type", "unknown"))
        family = next((f for f, (types, *_r) in FAMILIES.items() if model_type in types), "generic")
        hidden = _first_int(config, "hidden_size", "n_embd", "d_model")
        heads = _first_int(config, "num_attention_heads", "n_head")
        kv = _first_int(config, "num_key_value_heads") or heads
        head_dim = _first_int(config, "head_dim")
        if head_dim is None and hidden and heads:
            head_dim = hidden // heads
        inter = _first_int(config, "intermediate_size", "n_inner", "ffn_dim")
        if inter is None and model_type == "gpt2" and hidden:
            inter = 4 * hidden
        default_tie = model_type in {"gpt2", "gemma", "gemma2", "gemma3", "gemma3_text"}
        tie = config.get("tie_word_embeddings", default_tie)
        return cls(
            model_type=model_type,
            architectures=tuple(config.get("architectures") or ()),
            family=family,
            num_layers=_first_int(config, "num_hidden_layers", "n_layer", "num_layers"),
            hidden_size=hidden,
            intermediate_size=inter,
            num_heads=heads,
            num_kv_heads=kv,
            head_dim=head_dim,
            vocab_size=_first_int(config, "vocab_size"),
            tie_word_embeddings=bool(tie),
        )

    @cached_property
    def _rules(self) -> tuple[tuple[re.Pattern[str], Component], ...]:
        rules: tuple[Rule, ...] = FAMILIES[self.family][1] if self.family in FAMILIES else GENERIC_RULES
        return tuple((re.compile(p), c) for p, c in rules)

    @cached_property
    def _fused(self) -> tuple[tuple[re.Pattern[str], FusedSpec], ...]:
        fused = FAMILIES[self.family][2] if self.family in FAMILIES else {}
        return tuple((re.compile(p), s) for p, s in fused.items())

    @property
    def layout(self) -> Layout:
        return "in_out" if self.family in FAMILIES and FAMILIES[self.family][3] == "in_out" else "out_in"

    def parse(self, name: str) -> tuple[int | None, Component]:
        """Return ``(layer, component)`` of a tensor name; unknown names give ``other``."""
        layer, rest = split_layer(name)
        for pattern, component in self._rules:
            if pattern.search(rest):
                return layer, component
        return layer, "other"

    def parts(self, name: str, shape: tuple[int, ...]) -> tuple[Part, ...]:
        """Analysable parts of a stored tensor: fused q/k/v and gate/up are split."""
        layer, component = self.parse(name)
        _, rest = split_layer(name)
        layout: Layout = self.layout if len(shape) == 2 else "out_in"
        for pattern, (dim, pieces) in self._fused:
            if not pattern.search(rest):
                continue
            axis = dim if len(shape) > 1 else 0
            axis = axis % len(shape)
            sizes = [self._size(expr) for _, expr in pieces]
            if None in sizes or sum(s for s in sizes if s) != shape[axis]:
                break  # config disagrees with the tensor: keep it whole rather than guess
            out: list[Part] = []
            start = 0
            for (comp, _), size in zip(pieces, sizes, strict=True):
                assert size is not None
                out.append(Part(name, layer, comp, axis, start, start + size, layout))
                start += size
            return tuple(out)
        return (Part(name, layer, component, layout=layout),)

    def _size(self, expr: str) -> int | None:
        if expr == "q" and self.num_heads and self.head_dim:
            return self.num_heads * self.head_dim
        if expr == "kv" and self.num_kv_heads and self.head_dim:
            return self.num_kv_heads * self.head_dim
        if expr == "ffn":
            return self.intermediate_size
        if expr == "hidden":
            return self.hidden_size
        return None


def split_layer(name: str) -> tuple[int | None, str]:
    """``model.layers.3.mlp.up_proj.weight`` → ``(3, "mlp.up_proj.weight")``."""
    m = _LAYER_RE.match(name)
    if m is None:
        return None, name
    return int(m.group("layer")), m.group("rest")


def _first_int(config: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None

"""Architecture knowledge as data: tensor-name patterns → component, per model family.

Each family maps ``model_type`` values to an ordered list of ``(regex, component)`` rules tried
against the tensor name with the layer prefix removed (``model.layers.3.self_attn.q_proj.weight``
→ ``self_attn.q_proj.weight``), plus fused tensors that are split into parts for analysis.
Unknown architectures use :data:`GENERIC_RULES`; names nothing matches get component ``other``.

GPT-2 (``transformers.pytorch_utils.Conv1D``) stores its linear weights as ``[in, out]``; those
rules carry ``layout="in_out"`` so the splitters and the SVD-based stages transpose them to the
``[out, in]`` convention. Cosines and norms are transpose-invariant and ignore the layout.
"""

from __future__ import annotations

from typing import Final, Literal

Component = Literal[
    "embed", "q", "k", "v", "o", "gate", "up", "down",
    "attn_norm", "mlp_norm", "final_norm", "lm_head", "other",
]  # fmt: skip

COMPONENTS: Final[tuple[Component, ...]] = (
    "embed", "q", "k", "v", "o", "gate", "up", "down",
    "attn_norm", "mlp_norm", "final_norm", "lm_head", "other",
)  # fmt: skip

GROUPS: Final[dict[str, tuple[Component, ...]]] = {
    "attention": ("q", "k", "v", "o"),
    "mlp": ("gate", "up", "down"),
    "embeddings": ("embed", "lm_head"),
    "norms": ("attn_norm", "mlp_norm", "final_norm"),
}

# How a fused tensor splits: along ``dim`` (of the stored layout) into named parts whose sizes are
# expressions over the config: "q" = heads*head_dim, "kv" = kv_heads*head_dim, "ffn" = intermediate,
# "hidden" = hidden size.
FusedSpec = tuple[int, tuple[tuple[Component, str], ...]]

Rule = tuple[str, Component]

LLAMA_RULES: Final[tuple[Rule, ...]] = (
    (r"(^|\.)embed_tokens\.", "embed"),
    (r"(^|\.)lm_head\.", "lm_head"),
    (r"(^|\.)norm\.", "final_norm"),
    (r"self_attn\.q_proj\.", "q"),
    (r"self_attn\.k_proj\.", "k"),
    (r"self_attn\.v_proj\.", "v"),
    (r"self_attn\.o_proj\.", "o"),
    (r"self_attn\.(q|k)_norm\.", "attn_norm"),
    (r"mlp\.gate_proj\.", "gate"),
    (r"mlp\.up_proj\.", "up"),
    (r"mlp\.down_proj\.", "down"),
    (r"^input_layernorm\.", "attn_norm"),
    (r"^post_attention_layernorm\.", "mlp_norm"),
)

GEMMA2_RULES: Final[tuple[Rule, ...]] = (
    # Gemma-2/3 normalise the attention output (post_attention_layernorm) and use a separate
    # pre_feedforward_layernorm before the MLP.
    (r"^post_attention_layernorm\.", "attn_norm"),
    (r"^(pre|post)_feedforward_layernorm\.", "mlp_norm"),
    *LLAMA_RULES,
)

PHI3_RULES: Final[tuple[Rule, ...]] = (
    (r"self_attn\.qkv_proj\.", "other"),  # fused: split by FUSED below
    (r"mlp\.gate_up_proj\.", "other"),  # fused: split by FUSED below
    *LLAMA_RULES,
)

GPT2_RULES: Final[tuple[Rule, ...]] = (
    (r"^transformer\.wte\.", "embed"),
    (r"^transformer\.wpe\.", "embed"),
    (r"^lm_head\.", "lm_head"),
    (r"^transformer\.ln_f\.", "final_norm"),
    (r"^attn\.c_attn\.", "other"),  # fused q,k,v: split by FUSED below
    (r"^attn\.c_proj\.", "o"),
    (r"^mlp\.c_fc\.", "up"),
    (r"^mlp\.c_proj\.", "down"),
    (r"^ln_1\.", "attn_norm"),
    (r"^ln_2\.", "mlp_norm"),
)

GENERIC_RULES: Final[tuple[Rule, ...]] = (
    (r"(embed_tokens|wte|word_embeddings|embed_in|tok_embeddings)\.", "embed"),
    (r"(^|\.)(lm_head|embed_out|output)\.", "lm_head"),
    (r"(q_proj|query|wq)\.", "q"),
    (r"(k_proj|key|wk)\.", "k"),
    (r"(v_proj|value|wv)\.", "v"),
    (r"(o_proj|out_proj|dense|wo)\.", "o"),
    (r"(gate_proj|w1)\.", "gate"),
    (r"(up_proj|w3|fc1|c_fc|dense_h_to_4h)\.", "up"),
    (r"(down_proj|w2|fc2|dense_4h_to_h)\.", "down"),
    (r"(input_layernorm|ln_1|attention_norm)\.", "attn_norm"),
    (r"(post_attention_layernorm|ln_2|ffn_norm)\.", "mlp_norm"),
    (r"^(model\.|transformer\.)?(norm|ln_f|final_layernorm)\.", "final_norm"),
)

# family name → (model_types, rules, fused specs keyed by regex, layout of 2-D weights)
FAMILIES: Final[dict[str, tuple[tuple[str, ...], tuple[Rule, ...], dict[str, FusedSpec], str]]] = {
    "llama": (("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma"), LLAMA_RULES, {}, "out_in"),
    "gemma2": (("gemma2", "gemma3", "gemma3_text"), GEMMA2_RULES, {}, "out_in"),
    "phi3": (
        ("phi3",),
        PHI3_RULES,
        {
            r"self_attn\.qkv_proj\.": (0, (("q", "q"), ("k", "kv"), ("v", "kv"))),
            r"mlp\.gate_up_proj\.": (0, (("gate", "ffn"), ("up", "ffn"))),
        },
        "out_in",
    ),
    "gpt2": (
        ("gpt2",),
        GPT2_RULES,
        {r"^attn\.c_attn\.": (-1, (("q", "hidden"), ("k", "hidden"), ("v", "hidden")))},
        "in_out",
    ),
}

LAYER_PATTERN: Final[str] = (
    r"^(?P<prefix>.*?\.(?:layers|h|blocks|layer|decoder\.layers)\.)(?P<layer>\d+)\.(?P<rest>.*)$"
)

"""``inspect``: what a checkpoint holds, from headers only (no tensor data is read)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tunelens.checkpoints.architectures import COMPONENTS
from tunelens.checkpoints.index import Checkpoint


def describe_checkpoint(ck: Checkpoint) -> dict[str, Any]:
    """Architecture, sizes, dtypes, tied weights, shards, parameters and per-component counts."""
    a = ck.arch
    by_comp: Counter[str] = Counter()
    fused: list[str] = []
    tied_skip = None
    if a.tie_word_embeddings:
        tied_skip = next((n for n in ck.tensors if a.parse(n)[1] == "lm_head"), None)
    for name, info in ck.tensors.items():
        parts = a.parts(name, info.shape)
        if len(parts) > 1:
            fused.append(name)
        per_unit = info.numel // info.shape[parts[0].dim] if parts[0].dim is not None and info.shape else 0
        for p in parts:
            by_comp[p.component] += info.numel if p.dim is None else per_unit * (p.stop - p.start)
    dtypes = Counter(t.dtype for t in ck.tensors.values())
    layers = sorted({layer for n in ck.tensors if (layer := a.parse(n)[0]) is not None})
    return {
        "name": ck.name,
        "path": str(ck.path),
        "kind": ck.kind,
        "architecture": list(a.architectures),
        "model_type": a.model_type,
        "family": a.family,
        "layers": a.num_layers if a.num_layers is not None else len(layers),
        "hidden_size": a.hidden_size,
        "intermediate_size": a.intermediate_size,
        "num_heads": a.num_heads,
        "num_kv_heads": a.num_kv_heads,
        "head_dim": a.head_dim,
        "vocab_size": a.vocab_size,
        "tie_word_embeddings": a.tie_word_embeddings,
        "tied_lm_head_stored": tied_skip,
        "weight_layout": a.layout,
        "shards": len(ck.files),
        "tensors": len(ck.tensors),
        "parameters": ck.total_params,
        "bytes": ck.total_bytes,
        "dtypes": dict(dtypes),
        "fused_tensors_split": fused,
        "parameters_by_component": {c: by_comp[c] for c in COMPONENTS if by_comp[c]},
        "sha256": ck.fingerprint,
        "format": "pickle" if ck.pickle else "safetensors",
        **ck.origin,  # GGUF: format, quantization per ggml type; hub id: hub_id, revision (commit)
    }

"""``config.json`` must agree with the weights it describes, from the headers alone.

A config that says 5 layers over weights that hold 3, or 8 heads over query rows made for 4, makes
every per-layer or per-head number wrong (and ``inspect`` report the wrong model). For the families
of the architecture table (Llama, Mistral, Mixtral, Qwen2/3, Gemma 1/2/3, Phi-3, GPT-2) the checks are:

- layers: the decoder's layer indices in tensor names are exactly ``0 .. num_hidden_layers - 1``;
- hidden size: the width of the embeddings, LM head and hidden-size norms;
- intermediate size: the rows of gate / up (Phi-3: ``gate_up_proj`` = 2x; GPT-2: ``c_fc`` columns), the
  input width of down, Mixtral's expert ``w1`` / ``w3`` rows and ``w2`` columns;
- heads x head_dim: the rows of q (and ``o``'s input width), kv heads x head_dim: the rows of k and v
  (Phi-3 ``qkv_proj`` and GPT-2 ``c_attn``: the sum of their parts), head_dim: Qwen3 / Gemma-3 q/k norms.

Other architectures (the regex fallback) are checked only for what is known without the table: the
weights must hold at least ``num_hidden_layers`` layers (some add extra modules, e.g. MTP layers).
A mismatch is one :class:`~tunelens.errors.TunelensError` line naming both values.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelens.checkpoints.architectures import FAMILIES, LAYER_PATTERN
from tunelens.errors import TunelensError

if TYPE_CHECKING:
    from tunelens.checkpoints.index import TensorInfo
    from tunelens.checkpoints.naming import ArchInfo

_LAYER_RE = re.compile(LAYER_PATTERN)
_HEAD_NORM = re.compile(r"self_attn\.(q|k)_norm\.")
_EXPERT = re.compile(r"experts\.\d+\.(?P<w>w1|w2|w3)\.")
_KEYS = {
    "layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "hidden": ("hidden_size", "n_embd", "d_model"),
    "inter": ("intermediate_size", "n_inner", "ffn_dim"),
}


def check_config_matches_weights(
    path: Path, config: dict[str, Any], arch: ArchInfo, tensors: dict[str, TensorInfo]
) -> None:
    """Raise one clear line when ``config.json`` disagrees with the tensors' names and shapes."""
    stacks: dict[str, set[int]] = {}
    for name in tensors:
        m = _LAYER_RE.match(name)
        if m is not None:
            stacks.setdefault(m.group("prefix"), set()).add(int(m.group("layer")))
    known = arch.family in FAMILIES
    decoder = _check_layers(path, config, arch, stacks, known)
    if not known:
        return
    for name, info in tensors.items():
        m = _LAYER_RE.match(name)
        if m is not None and m.group("prefix") != decoder:
            continue  # another stack (a vision tower): its sizes are not the decoder's
        for what, want, got in _expectations(arch, name, info):
            if want is not None and got != want:
                raise TunelensError(
                    f"{path}: config.json says {_said(config, arch, what, want)}, but {name} has shape "
                    f"{'x'.join(map(str, info.shape))}, which gives {got}"
                )


def _check_layers(
    path: Path, config: dict[str, Any], arch: ArchInfo, stacks: dict[str, set[int]], known: bool
) -> str | None:
    """The prefix of the decoder's layer stack, after checking its layer count against the config."""
    n = arch.num_layers
    if not stacks:
        return None
    counts = {p: max(ix) + 1 for p, ix in stacks.items()}
    main = max(stacks, key=lambda p: (counts[p] == n, len(stacks[p])))
    if n is None:
        return main
    key = _key(config, "layers")
    held = counts[main]
    if known and held != n or not known and max(counts.values()) < n:
        raise TunelensError(
            f"{path}: config.json says {key} = {n}, but the weights hold {held} layers ({main}0-{held - 1})"
        )
    gaps = sorted(set(range(held)) - stacks[main])
    if known and gaps:
        raise TunelensError(f"{path}: config.json says {key} = {n}, but the weights have no layer {gaps[0]} ({main})")
    return main


def _expectations(arch: ArchInfo, name: str, info: TensorInfo) -> list[tuple[str, int | None, int]]:
    """``(quantity, expected from the config, found in the shape)`` for one tensor of a known family."""
    shape = info.shape
    if not shape:
        return []
    layer, comp = arch.parse(name)
    in_out = arch.layout == "in_out" and len(shape) == 2
    out_dim = shape[-1] if in_out else shape[0]
    in_dim = (shape[0] if in_out else shape[1]) if len(shape) == 2 else None
    hd, heads, kv = arch.head_dim, arch.num_heads, arch.num_kv_heads
    q_rows = heads * hd if heads and hd else None
    kv_rows = kv * hd if kv and hd else None
    hidden, inter = arch.hidden_size, arch.intermediate_size
    fused = _fused(arch, name, shape)
    if fused is not None:
        return [fused]
    expert = _EXPERT.search(name)
    if expert is not None:
        if expert.group("w") == "w2":
            return [("inter", inter, in_dim)] if in_dim is not None else []
        return [("inter", inter, shape[0])]
    if _HEAD_NORM.search(name) and len(shape) == 1:
        return [("head_dim", hd, shape[0])]
    if comp in ("embed", "lm_head"):
        return [("hidden", hidden, shape[-1])] if len(shape) == 2 else []
    if comp in ("attn_norm", "mlp_norm", "final_norm"):
        return [("hidden", hidden, shape[0])] if len(shape) == 1 else []
    checks: list[tuple[str, int | None, int]] = []
    if comp == "q":
        checks.append(("q", q_rows, out_dim))
    elif comp in ("k", "v"):
        checks.append(("kv", kv_rows, out_dim))
    elif comp == "o" and in_dim is not None:
        checks.append(("q", q_rows, in_dim))
    elif comp in ("gate", "up"):
        checks.append(("inter", inter, out_dim))
    elif comp == "down" and in_dim is not None:
        checks.append(("inter", inter, in_dim))
    if comp in ("o", "down") and layer is not None:
        checks.append(("hidden", hidden, out_dim))
    return checks


def _fused(arch: ArchInfo, name: str, shape: tuple[int, ...]) -> tuple[str, int | None, int] | None:
    """A fused tensor (Phi-3 qkv / gate_up, GPT-2 c_attn): the sum of its parts along the split axis."""
    m = _LAYER_RE.match(name)
    tail = m.group("rest") if m is not None else name
    for pattern, (dim, pieces) in FAMILIES[arch.family][2].items():
        if re.search(pattern, tail):
            axis = (dim if len(shape) > 1 else 0) % len(shape)
            sizes = [arch._size(expr) for _, expr in pieces]
            want = None if None in sizes else sum(s for s in sizes if s)
            exprs = [e for _, e in pieces]
            what = "qkv" if "q" in exprs else ("gate_up" if "ffn" in exprs else "c_attn")
            return (what, want, shape[axis])
    return None


def _key(config: dict[str, Any], what: str) -> str:
    """The config key that set ``what`` (top level or under ``text_config``)."""
    sub = config.get("text_config")
    text: dict[str, Any] = sub if isinstance(sub, dict) else {}
    for k in _KEYS.get(what, ()):
        if k in config or k in text:
            return k
    return _KEYS.get(what, (what,))[0]


def _said(config: dict[str, Any], arch: ArchInfo, what: str, want: int) -> str:
    """What the config says, in its own words: ``hidden_size = 32``, ``4 heads x head_dim 8 = 32 rows``."""
    hd = arch.head_dim
    if what == "q":
        return f"{arch.num_heads} attention heads x head_dim {hd} = {want} query rows"
    if what == "kv":
        return f"{arch.num_kv_heads} key/value heads x head_dim {hd} = {want} rows"
    if what == "head_dim":
        return f"head_dim = {want}"
    if what == "qkv":
        return f"({arch.num_heads} + 2 x {arch.num_kv_heads}) heads x head_dim {hd} = {want} fused q/k/v rows"
    if what == "c_attn":
        return f"3 x {_key(config, 'hidden')} {arch.hidden_size} = {want} fused q/k/v columns"
    if what == "gate_up":
        return f"2 x {_key(config, 'inter')} {arch.intermediate_size} = {want} fused gate/up rows"
    return f"{_key(config, what)} = {want}"

"""Open a llama.cpp GGUF file as a :class:`Checkpoint` under Hugging Face names, one tensor at a time.

Opening reads the GGUF header only (metadata and tensor infos, :mod:`~tunelens.checkpoints.gguf_header`), builds
the Hugging Face config from the metadata and maps every llama.cpp tensor name to the name
transformers' GGUF loader gives it (``transformers.modeling_gguf_pytorch_utils.get_gguf_hf_weights_map``
on a model built on the ``meta`` device, so no weights are allocated). Reading a tensor
(:func:`read_gguf_into`) reads its stored bytes with positioned reads, a bounded chunk of rows at a
time, de-quantizes each chunk with ``gguf.quants.dequantize`` and undoes what llama.cpp's converter
did to it:

- llama / mistral ``attn_q`` and ``attn_k``: the rotary row permutation, reversed exactly as
  transformers' ``LlamaTensorProcessor`` does (q with ``num_attention_heads``, k with
  ``num_key_value_heads``);
- gemma / gemma2 / gemma3 ``*norm.weight``: llama.cpp stores ``w + 1``; the value is ``w``
  (transformers' ``Gemma2TensorProcessor`` does this for gemma2/3; its loader has no gemma-1 support).

Peak memory per tensor is the output tensor plus one chunk (:data:`CHUNK_ELEMENTS` values) and its
de-quantization temporaries: an 8B Q4 file is never de-quantized whole.

``TensorInfo.dtype`` is what a read returns: the stored dtype for F32/F16/BF16 (and F64 / integer)
tensors whose values need no arithmetic, ``F32`` for de-quantized types and for offset norms.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from io import FileIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelens.checkpoints.gguf_header import ArrayInfo, GGUFHeader, read_header
from tunelens.checkpoints.index import EDGE_BYTES, Checkpoint, TensorInfo
from tunelens.checkpoints.naming import ArchInfo
from tunelens.errors import TunelensError

if TYPE_CHECKING:
    import torch

#: values de-quantized per chunk (16 MiB as float32): bounds the temporaries of one read
CHUNK_ELEMENTS = 1 << 22

#: ggml types whose bytes are the values, as safetensors dtypes (read without de-quantization)
RAW_TYPES: dict[str, str] = {
    "F32": "F32", "F16": "F16", "BF16": "BF16", "F64": "F64", "I8": "I8", "I16": "I16", "I32": "I32", "I64": "I64",
}  # fmt: skip


@dataclass(frozen=True)
class Family:
    """What tunelens undoes for one GGUF ``general.architecture`` (llama.cpp's converter choices)."""

    permute_qk: bool  # attn_q / attn_k rows permuted for llama.cpp's rotary layout
    norm_offset: float  # added to every ``*norm.weight`` (llama.cpp stored w + 1 for Gemma)
    head_dim_from_key_length: bool = False  # transformers' key table has no head_dim for it


#: the architectures tunelens maps (data, checked against transformers' TENSOR_PROCESSORS in tests)
FAMILIES: dict[str, Family] = {
    "llama": Family(permute_qk=True, norm_offset=0.0),
    "mistral": Family(permute_qk=False, norm_offset=0.0),
    "qwen2": Family(permute_qk=False, norm_offset=0.0),
    "qwen3": Family(permute_qk=False, norm_offset=0.0, head_dim_from_key_length=True),
    "phi3": Family(permute_qk=False, norm_offset=0.0),
    "gemma": Family(permute_qk=False, norm_offset=-1.0),
    "gemma2": Family(permute_qk=False, norm_offset=-1.0),
    "gemma3": Family(permute_qk=False, norm_offset=-1.0),
}


@dataclass(frozen=True)
class GGUFLayout:
    """How one GGUF tensor is stored and what turns it into the Hugging Face tensor."""

    source: str  # llama.cpp tensor name
    ggml_type: int  # gguf.GGMLQuantizationType value
    type_name: str  # its name (Q4_K, F16, ...)
    raw_shape: tuple[int, ...]  # numpy order (ne reversed): rows..., values per row
    row_bytes: int  # stored bytes per row
    permute_heads: int = 0  # > 0: undo llama.cpp's q/k row permutation with this many heads
    offset: float = 0.0  # added after de-quantization (Gemma norms: -1)


def find_gguf(path: Path) -> Path | None:
    """The GGUF file ``path`` names: a ``.gguf`` file, or a folder holding exactly one and no
    config.json. ``None`` when ``path`` is not a GGUF input; an error when a folder holds several."""
    if path.is_file():
        return path if path.suffix == ".gguf" else None
    if not path.is_dir() or (path / "config.json").exists():
        return None
    found = sorted(path.glob("*.gguf"))
    if len(found) > 1:
        names = ", ".join(p.name for p in found[:4])
        raise TunelensError(f"{path}: holds {len(found)} GGUF files ({names}); pass one file, e.g. {found[0]}")
    return found[0] if found else None


def open_gguf(file: Path, name: str) -> Checkpoint:
    """Read the header of ``file`` and describe it as a model checkpoint under Hugging Face names."""
    header = read_header(file)
    arch = header.fields.get("general.architecture")
    if not isinstance(arch, str):
        raise TunelensError(f"{file}: GGUF without general.architecture")
    family = FAMILIES.get(arch)
    if family is None:
        raise TunelensError(
            f"{file}: GGUF architecture {arch!r} is not mapped to Hugging Face names (supported: {', '.join(FAMILIES)})"
        )
    size = file.stat().st_size
    config = build_config(header, arch)
    hf_config, expected, model_class = _hf_names(config, arch)
    layouts, unmapped = _layouts(header, family, hf_config, expected, file, size)
    tensors = {hf: _info(hf, lay, file, begin, end) for hf, (lay, begin, end) in layouts.items()}
    quant = Counter(lay.type_name for lay, _b, _e in layouts.values())
    digest = hashlib.sha256(_edges(file, header.data_offset, size))
    config_dict = {**hf_config.to_dict(), "architectures": [model_class]}
    origin = {
        "format": "gguf",
        "gguf_architecture": arch,
        "quantization": dict(sorted(quant.items())),
        "file_bytes": size,
        "unmapped_tensors": unmapped,
        "conversions": _conversions(arch, family),
        "tokenizer": header.fields.get("tokenizer.ggml.model"),  # None: the file carries no vocabulary
    }
    return Checkpoint(
        path=file,
        name=name,
        config=config_dict,
        arch=ArchInfo.from_config(config_dict),
        tensors=tensors,
        files=(file,),
        fingerprint=digest.hexdigest(),
        kind="model",
        origin=origin,
    )


def _conversions(arch: str, family: Family) -> list[str]:
    notes = ["tensors de-quantized with gguf.quants.dequantize to float32 (F32/F16/BF16 read as stored)"]
    if family.permute_qk:
        notes.append("attn_q/attn_k rows: llama.cpp's rotary permutation reversed as transformers' GGUF loader does")
    if family.norm_offset:
        notes.append(f"*norm.weight: {family.norm_offset:+g} (llama.cpp stores Gemma's norm weights as w + 1)")
    return notes


def build_config(header: GGUFHeader, arch: str) -> dict[str, Any]:
    """Hugging Face config keys from GGUF metadata, by transformers' own key table
    (``GGUF_CONFIG_MAPPING``) and rules; gemma-1, which transformers does not map, borrows gemma2's
    keys, and ``attention.key_length`` gives ``head_dim`` where the table has no key for it (qwen3:
    transformers would fall back to Qwen3Config's default of 128)."""
    from transformers.integrations.ggml import GGUF_CONFIG_DEFAULTS_MAPPING, GGUF_CONFIG_MAPPING

    fields = header.fields
    model_name = fields.get("general.name")
    hf_arch = "mistral" if arch == "llama" and model_name == "mistral" else arch  # transformers' rule
    table: dict[str, dict[str, Any]] = dict(GGUF_CONFIG_MAPPING)  # type: ignore[arg-type]
    if "gemma" not in table:
        table["gemma"] = {k: v for k, v in table["gemma2"].items() if k != "attention.sliding_window"}
    config: dict[str, Any] = {"tie_word_embeddings": all(t.name != "output.weight" for t in header.tensors)}
    defaults: dict[str, dict[str, Any]] = GGUF_CONFIG_DEFAULTS_MAPPING
    for key, default in defaults.get(hf_arch, {}).items():
        config.setdefault(key, default)
    for key, value in fields.items():
        prefix, _, rest = key.replace(arch, hf_arch, 1).partition(".")
        target = table.get(prefix, {}).get(rest)
        if target is None or target == -1 or isinstance(value, ArrayInfo):
            continue
        if isinstance(value, str) and arch in value:
            value = value.replace(arch, hf_arch)
        config[target] = value
    key_length = fields.get(f"{arch}.attention.key_length")
    if FAMILIES[arch].head_dim_from_key_length and "head_dim" not in config and isinstance(key_length, int):
        config["head_dim"] = key_length
    if config.get("model_type") == "gemma3":
        config["model_type"] = "gemma3_text"
    if "vocab_size" not in config:
        tokens = fields.get("tokenizer.ggml.tokens")
        if tokens is not None:
            config["vocab_size"] = tokens.count if isinstance(tokens, ArrayInfo) else len(tokens)
    return config


def _hf_names(config: dict[str, Any], arch: str) -> tuple[Any, dict[str, tuple[str, tuple[int, ...]]], str]:
    """The transformers config, ``{gguf name: (hf name, hf shape)}`` and the model class's name,
    from a model built on the ``meta`` device (no weights allocated)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = {k: v for k, v in config.items() if k not in ("model_type", "_model_name_or_path")}
    try:
        hf_config = AutoConfig.for_model(str(config.get("model_type", arch)), **kwargs)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config)  # type: ignore[no-untyped-call]
    except (ValueError, KeyError, TypeError, NotImplementedError, RuntimeError, AssertionError) as exc:
        raise TunelensError(f"cannot build a {arch} model from the GGUF metadata ({str(exc).splitlines()[0]})") from exc
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    name_map = gguf_to_hf_names(list(shapes), arch, hf_config.num_hidden_layers)
    return hf_config, {g: (hf, shapes[hf]) for g, hf in name_map.items()}, type(model).__name__


def gguf_to_hf_names(hf_names: list[str], arch: str, n_layers: int) -> dict[str, str]:
    """``{llama.cpp name: Hugging Face name}`` for a model's state-dict names, by gguf's
    ``TensorNameMap`` as transformers' ``get_gguf_hf_weights_map`` uses it: each name (less its
    ``.weight``/``.bias``) is looked up whole, then without leading module prefixes (transformers
    does that by recursing into every child module, building the map anew per module; one map and
    the suffixes are the same lookups, and a test checks the result equals transformers')."""
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    key = next((k for k, v in MODEL_ARCH_NAMES.items() if v == arch), None)
    if key is None:
        raise TunelensError(f"the installed gguf package does not know the architecture {arch!r}")
    table = get_tensor_name_map(key, n_layers)
    out: dict[str, str] = {}
    for hf in hf_names:
        stem, dot, suffix = hf.rpartition(".")
        if suffix not in ("weight", "bias"):
            stem, dot, suffix = hf, "", ""
        parts = stem.split(".")
        for i in range(len(parts)):
            g = table.get_name(".".join(parts[i:]))
            if g is not None:
                out.setdefault(g + dot + suffix, hf)
                break
    return out


def _layouts(
    header: GGUFHeader,
    family: Family,
    hf_config: Any,
    expected: dict[str, tuple[str, tuple[int, ...]]],
    file: Path,
    size: int,
) -> tuple[dict[str, tuple[GGUFLayout, int, int]], list[str]]:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    heads = getattr(hf_config, "num_attention_heads", None)
    kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
    out: dict[str, tuple[GGUFLayout, int, int]] = {}
    unmapped: list[str] = []
    for t in header.tensors:
        try:
            qtype = GGMLQuantizationType(t.ggml_type)
        except ValueError:
            raise TunelensError(f"{file}: tensor {t.name} has unknown ggml type {t.ggml_type}") from None
        _check_type(file, t.name, qtype)
        block, type_size = GGML_QUANT_SIZES[qtype]
        raw_shape = tuple(reversed(t.ne))
        if raw_shape and raw_shape[-1] % block:
            raise TunelensError(f"{file}: tensor {t.name} rows of {raw_shape[-1]} are not whole {qtype.name} blocks")
        numel = 1
        for d in raw_shape:
            numel *= d
        end = t.begin + numel // block * type_size
        if end > size:
            raise TunelensError(f"{file}: truncated GGUF: tensor {t.name} ends at byte {end}, the file has {size}")
        hit = expected.get(t.name)
        if hit is None:
            unmapped.append(t.name)
            continue
        hf, hf_shape = hit
        if raw_shape != hf_shape:
            raise TunelensError(
                f"{file}: tensor {t.name} has shape {list(raw_shape)}, {hf} needs {list(hf_shape)} from the metadata"
            )
        permute = 0
        if family.permute_qk and (".attn_q." in t.name or ".attn_k." in t.name) and heads and kv_heads:
            permute = int(heads) if ".attn_q." in t.name else int(kv_heads)
            if raw_shape[0] % (2 * permute) or len(raw_shape) > 2:
                raise TunelensError(f"{file}: {t.name} {list(raw_shape)} cannot be un-permuted for {permute} heads")
        offset = family.norm_offset if t.name.endswith("norm.weight") else 0.0
        layout = GGUFLayout(
            source=t.name,
            ggml_type=int(qtype),
            type_name=qtype.name,
            raw_shape=raw_shape,
            row_bytes=raw_shape[-1] // block * type_size if raw_shape else type_size,
            permute_heads=permute,
            offset=offset,
        )
        out[hf] = (layout, t.begin, end)
    return out, unmapped


_SUPPORTED: dict[int, bool] = {}


def _check_type(file: Path, tensor: str, qtype: Any) -> None:
    """Refuse a ggml type that neither reads raw nor de-quantizes (probed once per type)."""
    if qtype.name in RAW_TYPES:
        return
    ok = _SUPPORTED.get(int(qtype))
    if ok is None:
        import numpy as np
        from gguf import GGML_QUANT_SIZES
        from gguf.quants import dequantize

        try:
            dequantize(np.zeros((1, GGML_QUANT_SIZES[qtype][1]), dtype=np.uint8), qtype)
            ok = True
        except (NotImplementedError, KeyError, ValueError):
            ok = False
        _SUPPORTED[int(qtype)] = ok
    if not ok:
        raise TunelensError(f"{file}: tensor {tensor} has ggml type {qtype.name}, which gguf cannot de-quantize")


def _info(hf: str, layout: GGUFLayout, file: Path, begin: int, end: int) -> TensorInfo:
    dtype = RAW_TYPES.get(layout.type_name, "F32")
    if layout.offset:
        dtype = "F32"
    return TensorInfo(hf, layout.raw_shape, dtype, file, begin, end, encoding="gguf", gguf=layout)


def _edges(file: Path, data_start: int, size: int) -> bytes:
    """The header (metadata and tensor infos) and the first and last 64 KiB of tensor data."""
    with file.open("rb") as fh:
        head = fh.read(data_start)
        data = fh.read(min(EDGE_BYTES, max(size - data_start, 0)))
        fh.seek(max(data_start, size - EDGE_BYTES))
        tail = fh.read()
    return head + data + tail


def unpermute_rows(n_rows: int, n_heads: int) -> torch.Tensor:
    """``dest[g]``: the Hugging Face row of llama.cpp row ``g`` of a permuted q/k weight.

    llama.cpp wrote ``w.reshape(heads, 2, half, ...).swapaxes(1, 2)``; transformers undoes it with
    ``w.reshape(heads, half, 2, ...).swapaxes(2, 1)``: row ``h·2·half + 2d + j`` goes to
    ``h·2·half + j·half + d``.
    """
    import torch

    half = n_rows // n_heads // 2
    g = torch.arange(n_rows)
    h, rem = g // (2 * half), g % (2 * half)
    return h * 2 * half + (rem % 2) * half + rem // 2


def read_gguf_into(fh: FileIO, info: TensorInfo, out: torch.Tensor, buffer: list[Any]) -> torch.Tensor:
    """Fill ``out`` (``info.shape``, ``info.dtype``) from the GGUF tensor ``info``, chunk by chunk.

    ``buffer`` is a one-slot list holding the caller's reusable byte buffer (grown as needed).
    """
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    lay = info.gguf
    assert lay is not None
    raw = lay.type_name in RAW_TYPES
    if raw and not lay.permute_heads and not lay.offset:  # the bytes are the values: one read
        _pread(fh, info, info.begin, memoryview(out.view(-1).view(torch.uint8).numpy()))  # type: ignore[arg-type]
        return out
    n_cols = lay.raw_shape[-1] if lay.raw_shape else 1
    n_rows = max(1, (info.end - info.begin) // lay.row_bytes)
    flat = out.view(-1, n_cols) if len(lay.raw_shape) != 1 else out.view(1, -1)
    dest = unpermute_rows(info.shape[0], lay.permute_heads) if lay.permute_heads else None
    step = n_rows if dest is not None and len(info.shape) == 1 else max(1, CHUNK_ELEMENTS // n_cols)
    for r0 in range(0, n_rows, step):
        r1 = min(n_rows, r0 + step)
        nbytes = (r1 - r0) * lay.row_bytes
        if buffer[0] is None or buffer[0].size < nbytes:
            buffer[0] = np.empty(nbytes, dtype=np.uint8)
        chunk = buffer[0][:nbytes]
        _pread(fh, info, info.begin + r0 * lay.row_bytes, memoryview(chunk))
        rows = chunk.reshape(r1 - r0, lay.row_bytes)
        if raw:
            vals = torch.from_numpy(rows).view(_torch_dtype(RAW_TYPES[lay.type_name]))
        else:
            vals = torch.from_numpy(dequantize(rows, GGMLQuantizationType(lay.ggml_type)))
        if lay.offset:
            vals = vals.to(torch.float32) + lay.offset
        vals = vals.to(out.dtype)
        if dest is None:
            flat[r0:r1].copy_(vals)
        elif len(info.shape) == 1:
            out.index_copy_(0, dest, vals.reshape(-1))
        else:
            flat.index_copy_(0, dest[r0:r1], vals)
    return out


def _torch_dtype(st: str) -> torch.dtype:
    from tunelens.checkpoints.stream import TORCH_DTYPES

    return TORCH_DTYPES[st]


def _pread(fh: FileIO, info: TensorInfo, offset: int, view: memoryview) -> None:
    fh.seek(offset)
    got = 0
    while got < len(view):
        n = fh.readinto(view[got:])
        if not n:
            raise TunelensError(f"{info.file}: truncated while reading {info.name}")
        got += n


def side_files(ck: Checkpoint, dst: Path, *, dtype: str | None = None) -> list[str]:
    """For an output made from a GGUF: ``config.json`` from the GGUF-built config and, when
    transformers can build it from the file, the tokenizer. Returns notes on what was written."""
    import json

    config = {k: v for k, v in ck.config.items() if k != "quantization_config"}
    config["dtype"] = dtype or "float32"
    config.pop("torch_dtype", None)
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    notes = [f"config.json built from the GGUF metadata of {ck.path.name}"]
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(ck.path.parent), gguf_file=ck.path.name, local_files_only=True)
        tok.save_pretrained(str(dst))
        notes.append(f"tokenizer built by transformers from {ck.path.name}")
    except Exception as exc:  # noqa: BLE001 - any failure only means no tokenizer is written; it is said
        notes.append(f"no tokenizer written: transformers cannot build one from the GGUF ({str(exc).splitlines()[0]})")
    return notes

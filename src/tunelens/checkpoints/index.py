"""Open a local Hugging Face model folder from its headers only: shards, names, shapes, dtypes.

Nothing here reads tensor data or imports torch. Every problem with the input is a
:class:`~tunelens.errors.TunelensError` with one clear line: a missing folder, a folder that is not
a model, a truncated or corrupt shard, quantized weights, pickle checkpoints without
``allow_pickle``.
"""

from __future__ import annotations

import hashlib
import json
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tunelens.checkpoints.consistency import check_config_matches_weights
from tunelens.checkpoints.naming import ArchInfo
from tunelens.checkpoints.output import resolve_path
from tunelens.errors import TunelensError

if TYPE_CHECKING:
    from tunelens.checkpoints.gguf import GGUFLayout

#: bytes per element of each safetensors dtype
DTYPE_SIZES: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
_QUANT_SUFFIXES = (".qweight", ".qzeros", ".scales", ".g_idx", ".absmax", ".quant_map", ".quant_state")
_QUANT_MARKERS = (".quant_state.", "weight_scale", "weight_zero_point", ".SCB")
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
VECTOR_META = "tunelens.json"

Kind = Literal["model", "vector", "adapter"]
Encoding = Literal["safetensors", "pickle", "gguf"]


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes are: ``file`` and absolute byte range ``[begin, end)``.

    ``begin``/``end`` are -1 for tensors of a pickle checkpoint (read whole, see ``allow_pickle``).
    A ``gguf`` tensor's range holds its stored (possibly quantized) bytes and ``gguf`` says how to
    turn them into the Hugging Face tensor; ``shape`` and ``dtype`` are always what a read returns.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    file: Path
    begin: int
    end: int
    encoding: Encoding = "safetensors"
    gguf: GGUFLayout | None = None

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_SIZES.get(self.dtype, 4)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES


@dataclass(frozen=True)
class Checkpoint:
    """A model (or tuning-vector) folder, described from its headers."""

    path: Path
    name: str
    config: dict[str, Any]
    arch: ArchInfo
    tensors: dict[str, TensorInfo]
    files: tuple[Path, ...]
    fingerprint: str  # sha256 over config.json + index / safetensors headers
    kind: Kind = "model"
    meta: dict[str, Any] = field(default_factory=dict)  # tunelens.json of a vector folder; an adapter's config
    pickle: bool = False
    origin: dict[str, Any] = field(default_factory=dict)  # hub id + commit; GGUF format + quantization

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def total_params(self) -> int:
        return sum(t.numel for t in self.tensors.values())

    def describe(self) -> dict[str, Any]:
        """Identity of this input for provenance metadata."""
        out: dict[str, Any] = {
            "name": self.name,
            "path": str(self.path),
            "kind": self.kind,
            "sha256": self.fingerprint,
            "bytes": self.total_bytes,
            "tensors": len(self.tensors),
            "shards": len(self.files),
            **self.origin,
        }
        if self.kind == "adapter":
            out["adapter"] = self.config["adapter"]
        return out


def split_spec(spec: str | Path) -> tuple[str | None, Path]:
    """``name=path`` → ``(name, path)``; a plain path → ``(None, path)``."""
    text = str(spec)
    if "=" in text and not Path(text).exists():
        name, _, path = text.partition("=")
        if name and "/" not in name:
            return name, Path(path)
    return None, Path(text)


def open_checkpoint(spec: str | Path, *, allow_pickle: bool = False, name: str | None = None) -> Checkpoint:
    """Open a model or vector folder, a ``.gguf`` file or a cached Hugging Face id (``path``,
    ``org/name[@revision]``, or either as ``name=...``), reading headers only."""
    from dataclasses import replace

    from tunelens.checkpoints import gguf, hub

    spec_name, path = split_spec(spec)
    path = path.expanduser()
    origin: dict[str, Any] = {}
    label = name or spec_name
    if path.is_symlink():
        resolve_path(path)  # a symlink loop is one clear line
    if not path.exists():  # an existing local path wins over a hub id
        if not hub.looks_like_hub_id(str(path)):
            raise TunelensError(f"{path}: no such file or folder")
        snap = hub.resolve_hub_id(str(path))
        path, origin = snap.folder, snap.describe()
        label = label or snap.repo_id.split("/")[-1]
    gguf_file = gguf.find_gguf(path)
    if gguf_file is not None:
        ck = gguf.open_gguf(gguf_file, label or (resolve_path(path).name if path.is_dir() else gguf_file.stem))
        return replace(ck, origin={**origin, **ck.origin})
    label = label or resolve_path(path).name
    if path.is_dir():
        from tunelens.checkpoints.adapter import is_adapter_folder, open_adapter

        if is_adapter_folder(path):
            return replace(open_adapter(path, label), origin=origin)
    if path.is_file():
        raise TunelensError(f"{path}: expected a model folder (config.json + safetensors) or a .gguf file, got a file")
    config = _read_config(path)
    _refuse_quantized_config(path, config)
    meta: dict[str, Any] = {}
    kind: Kind = "model"
    meta_path = path / VECTOR_META
    if meta_path.exists():
        meta = _read_json(meta_path)
        if meta.get("kind") == "tuning_vector":
            kind = "vector"
    digest = hashlib.sha256(_read_bytes(path / "config.json"))
    index_path = path / INDEX_NAME
    pickled = False
    if index_path.exists():
        index_bytes = _read_bytes(index_path)
        digest.update(index_bytes)
        weight_map = _weight_map(index_path, index_bytes)
        files = list(dict.fromkeys(weight_map.values()))
        tensors: dict[str, TensorInfo] = {}
        for fname in files:
            shard = path / fname
            if not shard.exists():
                raise TunelensError(f"{index_path} names shard {fname}, which is missing")
            infos, header = read_safetensors_header(shard)
            digest.update(header + _edges(shard, len(header)))
            _check_no_twice(infos, tensors, fname)
            tensors.update(infos)
        _check_index(path, index_path, weight_map, tensors)
        shard_paths = tuple(path / f for f in files)
    elif (path / SINGLE_NAME).exists() or list(path.glob("*.safetensors")):
        singles = [path / SINGLE_NAME] if (path / SINGLE_NAME).exists() else sorted(path.glob("*.safetensors"))
        tensors = {}
        for shard in singles:
            infos, header = read_safetensors_header(shard)
            digest.update(header + _edges(shard, len(header)))
            tensors.update(infos)
        shard_paths = tuple(singles)
    else:
        tensors, shard_paths = _pickle_tensors(path, allow_pickle, digest)
        pickled = True
    _refuse_quantized_tensors(path, tensors)
    arch = ArchInfo.from_config(config)
    check_config_matches_weights(path, config, arch, tensors)
    return Checkpoint(
        path=path,
        name=label,
        config=config,
        arch=arch,
        tensors=tensors,
        files=shard_paths,
        fingerprint=digest.hexdigest(),
        kind=kind,
        meta=meta,
        pickle=pickled,
        origin=origin,
    )


def read_safetensors_header(shard: Path) -> tuple[dict[str, TensorInfo], bytes]:
    """Parse and validate one safetensors file's header; detect truncation before any heavy work."""
    try:
        size = shard.stat().st_size
        with shard.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise TunelensError(f"{shard}: truncated safetensors file ({size} bytes, no header)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100_000_000:
                raise TunelensError(
                    f"{shard}: corrupt or truncated safetensors header (says {n} bytes, file has {size})"
                )
            raw = fh.read(n)
    except OSError as exc:
        raise TunelensError(f"{shard}: cannot read ({exc.strerror})") from exc
    try:
        header = json.loads(raw, object_pairs_hook=_unique_keys)
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise TunelensError(f"{shard}: corrupt safetensors header ({exc})") from exc
    data_start = 8 + n
    infos: dict[str, TensorInfo] = {}
    data_end = 0
    for tname, entry in header.items():
        if tname == "__metadata__":
            continue
        try:
            dtype = str(entry["dtype"])
            shape = tuple(int(s) for s in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise TunelensError(f"{shard}: corrupt header entry for {tname}") from exc
        if dtype not in DTYPE_SIZES:
            raise TunelensError(f"{shard}: tensor {tname} has dtype {dtype}, which tunelens does not support")
        info = TensorInfo(tname, shape, dtype, shard, data_start + begin, data_start + end)
        if end - begin != info.nbytes:
            raise TunelensError(
                f"{shard}: corrupt header: {tname} spans {end - begin} bytes, its shape needs {info.nbytes}"
            )
        infos[tname] = info
        data_end = max(data_end, end)
    if data_start + data_end > size:
        raise TunelensError(
            f"{shard}: truncated: the header describes {data_start + data_end} bytes, the file has {size}"
        )
    return infos, raw


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` hook: a key given twice is an error (JSON would silently keep the last)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _weight_map(index_path: Path, raw: bytes) -> dict[str, str]:
    """The ``weight_map`` of a safetensors index: tensor name → shard file name, names unique."""
    try:
        data = json.loads(raw, object_pairs_hook=_unique_keys)
        weight_map = data["weight_map"]
    except (ValueError, KeyError, TypeError) as exc:
        raise TunelensError(f"{index_path}: not a valid safetensors index ({exc})") from exc
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise TunelensError(f"{index_path}: weight_map must map tensor names to shard file names")
    bad = next((v for v in weight_map.values() if Path(v).name != v or v in ("", ".", "..")), None)
    if bad is not None:
        raise TunelensError(f"{index_path}: shard {bad!r} is not a file name in the model folder")
    return weight_map


def _check_no_twice(infos: dict[str, TensorInfo], seen: dict[str, TensorInfo], fname: str) -> None:
    twice = next((n for n in infos if n in seen), None)
    if twice is not None:
        raise TunelensError(f"{twice} is stored twice, in {seen[twice].file.name} and {fname}")


def _check_index(path: Path, index_path: Path, weight_map: dict[str, str], tensors: dict[str, TensorInfo]) -> None:
    """Every tensor the index names is in the shard the index names."""
    missing = [n for n in weight_map if n not in tensors]
    if missing:
        raise TunelensError(f"{path}: index lists {len(missing)} tensors absent from the shards ({missing[0]}, ...)")
    wrong = next((n for n, f in weight_map.items() if tensors[n].file.name != f), None)
    if wrong is not None:
        raise TunelensError(
            f"{index_path} places {wrong} in {weight_map[wrong]}, but it is in {tensors[wrong].file.name}"
        )


EDGE_BYTES = 1 << 16


def _edges(shard: Path, header_len: int) -> bytes:
    """First and last 64 KiB of a shard's data: with the headers, a quick identity of the weights.

    The fingerprint is sha256 over config.json, the index and, per shard, its header and these
    edges; it is not a full content hash (that would cost a whole read of every input).
    """
    start = 8 + header_len
    size = shard.stat().st_size
    with shard.open("rb") as fh:
        fh.seek(start)
        head = fh.read(min(EDGE_BYTES, size - start))
        fh.seek(max(start, size - EDGE_BYTES))
        tail = fh.read()
    return head + tail


def _read_bytes(p: Path) -> bytes:
    try:
        return p.read_bytes()
    except OSError as exc:
        raise TunelensError(f"{p}: cannot read ({exc.strerror})") from exc


def _read_json(p: Path) -> dict[str, Any]:
    try:
        data = json.loads(_read_bytes(p), object_pairs_hook=_unique_keys)
    except ValueError as exc:
        raise TunelensError(f"{p}: invalid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise TunelensError(f"{p}: expected a JSON object")
    return data


def _read_config(path: Path) -> dict[str, Any]:
    cfg = path / "config.json"
    if not cfg.exists():
        raise TunelensError(f"{path}: no config.json, not a Hugging Face model folder")
    return _read_json(cfg)


def _refuse_quantized_config(path: Path, config: dict[str, Any]) -> None:
    q = config.get("quantization_config")
    if q:
        method = q.get("quant_method", "unknown") if isinstance(q, dict) else "unknown"
        raise TunelensError(
            f"{path}: quantized checkpoint (quantization_config: {method}); tunelens analyses unquantized "
            "float weights only, dequantize it first"
        )


def _refuse_quantized_tensors(path: Path, tensors: dict[str, TensorInfo]) -> None:
    for t in tensors.values():
        if t.name.endswith(_QUANT_SUFFIXES) or any(m in t.name for m in _QUANT_MARKERS):
            raise TunelensError(
                f"{path}: quantized tensor {t.name} (GPTQ/AWQ/bitsandbytes layout); tunelens analyses "
                "unquantized float weights only"
            )


def _pickle_tensors(path: Path, allow_pickle: bool, digest: Any) -> tuple[dict[str, TensorInfo], tuple[Path, ...]]:
    bins = sorted(path.glob("pytorch_model*.bin")) + sorted(path.glob("*.pt"))
    if not bins:
        raise TunelensError(f"{path}: no safetensors weights (model.safetensors or an index) found")
    if not allow_pickle:
        raise TunelensError(
            f"{path}: only pickle weights ({bins[0].name}); pickle can run arbitrary code when loaded, "
            "so tunelens refuses it unless you pass --allow-pickle (or convert to safetensors)"
        )
    warnings.warn(
        f"{path}: loading pickle weights with torch.load(weights_only=True) because --allow-pickle was given",
        stacklevel=2,
    )
    tensors: dict[str, TensorInfo] = {}
    for b in bins:
        digest.update(b.name.encode())
        state = _load_pickle_state(b)
        for tname, t in state.items():
            dtype = _TORCH_TO_ST.get(str(t.dtype).removeprefix("torch."), "F32")
            tensors[tname] = TensorInfo(tname, tuple(t.shape), dtype, b, -1, -1, encoding="pickle")
        del state
    return tensors, tuple(bins)


def _load_pickle_state(b: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True, mmap=True)``: only tensors and plain containers are ever built,
    nothing in the file runs; anything else is one clear line."""
    import pickle

    import torch  # noqa: PLC0415  (only on this explicit, rare path)

    try:
        state = torch.load(b, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        raise TunelensError(
            f"{b}: refused: it holds more than weights (torch.load weights_only=True rejected it; nothing in it "
            "was run); convert it to safetensors with the tool that made it"
        ) from exc
    except (RuntimeError, ValueError, EOFError, OSError, KeyError, AttributeError) as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "mmap" in why or "zip" in why:
            why = "not a torch.save zip archive (legacy or plain pickle); re-save it with torch.save"
        raise TunelensError(f"{b}: cannot read it as pickled weights ({why})") from exc
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise TunelensError(f"{b}: not a state dict (a mapping of names to tensors)")
    return state


_TORCH_TO_ST = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
}  # fmt: skip

"""PEFT LoRA adapters as inputs: an adapter folder is the low-rank τ it stands for.

A folder with ``adapter_config.json`` and ``adapter_model.safetensors`` opens, from headers only, as a
:class:`~tunelens.checkpoints.index.Checkpoint` of kind ``adapter``. Against a base, :func:`adapter_plan`
says how its τ is formed on every base tensor, exactly as PEFT's ``merge_and_unload`` would change it:

- a LoRA target module: ``τ = scale · B A`` (``lora_A [r, in]``, ``lora_B [out, r]``) with
  ``scale = lora_alpha / r`` (``/ √r`` with ``use_rslora``), ``r`` and ``lora_alpha`` taken from
  ``rank_pattern`` / ``alpha_pattern`` as PEFT matches them (``(.*\\.)?(KEY)$`` against the module
  name); ``fan_in_fan_out`` (GPT-2 Conv1D) stores the transpose; an embedding's update is
  ``(B A)ᵀ`` (``lora_embedding_A [r, vocab]``, ``lora_embedding_B [dim, r]``). A target that is fused
  in the base (Phi-3 ``qkv_proj``, ``gate_up_proj``) gets one update over the fused rows, split like
  the base downstream;
- a tensor the adapter stores whole (``modules_to_save``, trained biases, an embedding's saved
  ``base_layer``) replaces the base's: ``τ = saved − θ_pre`` (plus the low-rank update if the module
  also has one);
- every other tensor: ``τ = 0`` — it still counts in model-level sums (the adapter is a model that
  leaves the rest unchanged).

Variants whose merge is not ``W + scale · B A`` are refused with one line (DoRA, LoRA biases on B,
layer replication, target parameters, other PEFT types).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelens.checkpoints.index import Checkpoint, TensorInfo
from tunelens.errors import TunelensError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
_FACTOR_RE = re.compile(
    r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B)\.weight$|^(?P<emod>.+)\.(?P<ekind>lora_embedding_[AB])$"
)


def is_adapter_folder(path: Path) -> bool:
    """A folder holding a PEFT adapter (and no full model of its own)."""
    return (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


@dataclass(frozen=True)
class AdapterConfig:
    """What of ``adapter_config.json`` decides τ (validated: the variants tunelens computes exactly)."""

    r: int
    lora_alpha: float
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    use_rslora: bool
    fan_in_fan_out: bool
    modules_to_save: tuple[str, ...]
    target_modules: tuple[str, ...] | str
    base_model: str | None
    bias: str

    @classmethod
    def from_json(cls, path: Path, raw: dict[str, Any]) -> AdapterConfig:
        kind = raw.get("peft_type", "LORA")
        if kind != "LORA":
            raise TunelensError(f"{path}: a {kind} adapter; tunelens reads PEFT LoRA adapters (peft_type LORA) only")
        refused = {
            "use_dora": "DoRA rescales each column by a learned magnitude, so its τ is not B A",
            "lora_bias": "a LoRA bias on B (lora_bias=true)",
            "layer_replication": "layer replication",
            "target_parameters": "target_parameters (LoRA on raw parameters)",
            "trainable_token_indices": "trainable token indices",
            "use_qalora": "QA-LoRA",
            "alora_invocation_tokens": "aLoRA (activated LoRA)",
        }
        for key, what in refused.items():
            if raw.get(key):
                raise TunelensError(f"{path}: {what} is not supported; merge the adapter with PEFT first")
        try:
            r = int(raw.get("r", 8))
            alpha = float(raw.get("lora_alpha", 8))
            rank_pattern = {str(k): int(v) for k, v in (raw.get("rank_pattern") or {}).items()}
            alpha_pattern = {str(k): float(v) for k, v in (raw.get("alpha_pattern") or {}).items()}
        except (TypeError, ValueError) as exc:
            raise TunelensError(f"{path}: bad r / lora_alpha / rank_pattern / alpha_pattern ({exc})") from exc
        targets = raw.get("target_modules") or ()
        return cls(
            r=r,
            lora_alpha=alpha,
            rank_pattern=rank_pattern,
            alpha_pattern=alpha_pattern,
            use_rslora=bool(raw.get("use_rslora", False)),
            fan_in_fan_out=bool(raw.get("fan_in_fan_out", False)),
            modules_to_save=tuple(raw.get("modules_to_save") or ()),
            target_modules=targets if isinstance(targets, str) else tuple(targets),
            base_model=raw.get("base_model_name_or_path") or None,
            bias=str(raw.get("bias", "none")),
        )

    def rank_alpha(self, module: str) -> tuple[int, float]:
        """``(r, lora_alpha)`` of ``module`` as PEFT resolves them (``peft.utils.other.get_pattern_key``)."""
        r = next((v for k, v in self.rank_pattern.items() if re.match(rf"(.*\.)?({k})$", module)), self.r)
        a = next((v for k, v in self.alpha_pattern.items() if re.match(rf"(.*\.)?({k})$", module)), self.lora_alpha)
        return r, a

    def scale(self, module: str) -> tuple[int, float]:
        """``(r, scale)``: ``lora_alpha / r``, or ``lora_alpha / √r`` with rsLoRA."""
        r, alpha = self.rank_alpha(module)
        return r, alpha / (math.sqrt(r) if self.use_rslora else r)

    def describe(self) -> dict[str, Any]:
        return {
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "rank_pattern": self.rank_pattern,
            "alpha_pattern": self.alpha_pattern,
            "use_rslora": self.use_rslora,
            "fan_in_fan_out": self.fan_in_fan_out,
            "target_modules": self.target_modules
            if isinstance(self.target_modules, str)
            else list(self.target_modules),
            "modules_to_save": list(self.modules_to_save),
            "bias": self.bias,
            "base_model_name_or_path": self.base_model,
        }


def read_adapter_config(path: Path) -> tuple[AdapterConfig, dict[str, Any]]:
    """The validated config and the raw JSON of an adapter folder."""
    cfg_path = path / ADAPTER_CONFIG
    try:
        raw = json.loads(cfg_path.read_bytes())
    except OSError as exc:
        raise TunelensError(f"{cfg_path}: cannot read ({exc.strerror})") from exc
    except ValueError as exc:
        raise TunelensError(f"{cfg_path}: invalid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise TunelensError(f"{cfg_path}: expected a JSON object")
    return AdapterConfig.from_json(path, raw), raw


def adapter_weights(path: Path) -> Path:
    """The adapter's safetensors file; pickle adapters (``adapter_model.bin``) are refused."""
    weights = path / ADAPTER_WEIGHTS
    if weights.is_file():
        return weights
    if (path / "adapter_model.bin").exists():
        raise TunelensError(
            f"{path}: the adapter's weights are a pickle (adapter_model.bin); tunelens reads "
            "adapter_model.safetensors only (re-save it with PEFT's save_pretrained(safe_serialization=True))"
        )
    raise TunelensError(f"{path}: {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}")


@dataclass(frozen=True)
class _Factors:
    a: TensorInfo | None = None
    b: TensorInfo | None = None
    embedding: bool = False


def _module_name(key: str) -> str:
    """A saved PEFT key's module path in the base model (``base_model.model.`` and ``.base_layer`` removed)."""
    name = key.removeprefix(PREFIX)
    return name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")


def adapter_plan(adapter: Checkpoint, base: Checkpoint) -> dict[str, Any]:
    """Base tensor name → ``TauTerm`` of this adapter (tensors it leaves alone are absent: τ = 0).

    Raises one line for a factor or saved tensor that names nothing in the base, or whose shape does
    not fit the base tensor it updates.
    """
    from tunelens.checkpoints.align import LowRank, TauTerm

    cfg = AdapterConfig.from_json(adapter.path, adapter.meta)
    factors: dict[str, _Factors] = {}
    full: dict[str, TensorInfo] = {}
    for key, info in adapter.tensors.items():
        m = _FACTOR_RE.match(key)
        if m is None:
            if "lora_" in key or "magnitude" in key:
                raise TunelensError(f"{adapter.path}: unrecognised adapter tensor {key}")
            full[_module_name(key)] = info
            continue
        module = _module_name(m.group("module") or m.group("emod"))
        which = m.group("kind") or m.group("ekind")
        f = factors.get(module, _Factors(embedding=which.startswith("lora_embedding")))
        f = _Factors(info if which.endswith("A") else f.a, info if which.endswith("B") else f.b, f.embedding)
        factors[module] = f
    terms: dict[str, Any] = {}
    for module, f in factors.items():
        name = f"{module}.weight"
        binfo = base.tensors.get(name)
        if binfo is None:
            raise TunelensError(f"{adapter.name}: LoRA on {module}, which {base.name} does not have ({name})")
        if f.a is None or f.b is None:
            raise TunelensError(f"{adapter.name}: {module} has only one of its two LoRA factors")
        r, scale = cfg.scale(module)
        if f.a.shape[0] != r or f.b.shape[1] != r:
            raise TunelensError(
                f"{adapter.name}: {module} has LoRA factors of rank {f.a.shape[0]}, adapter_config.json says r = {r}"
            )
        transpose = f.embedding or cfg.fan_in_fan_out
        # stored layout of B A: [b_rows, a_cols], transposed for embeddings and fan_in_fan_out
        shape = (f.a.shape[1], f.b.shape[0]) if transpose else (f.b.shape[0], f.a.shape[1])
        if len(binfo.shape) != 2 or shape != binfo.shape:
            raise TunelensError(
                f"{adapter.name}: the LoRA update of {module} has shape {list(shape)}, {base.name}'s {name} "
                f"is {list(binfo.shape)}"
            )
        terms[name] = TauTerm(full=full.pop(name, None), lowrank=LowRank(f.a, f.b, scale, transpose))
    for name, info in full.items():
        if name not in base.tensors:
            raise TunelensError(
                f"{adapter.name} stores {name} whole (modules_to_save or a trained bias), which {base.name} "
                "does not have"
            )
        terms[name] = TauTerm(full=info)
    return terms


def open_adapter(path: Path, name: str) -> Checkpoint:
    """Open a PEFT LoRA adapter folder from its headers (its architecture comes from the base it is paired with)."""
    import hashlib

    from tunelens.checkpoints.index import read_safetensors_header
    from tunelens.checkpoints.naming import ArchInfo

    cfg, raw = read_adapter_config(path)
    weights = adapter_weights(path)
    infos, header = read_safetensors_header(weights)
    digest = hashlib.sha256((path / ADAPTER_CONFIG).read_bytes())
    digest.update(header)
    if not infos:
        raise TunelensError(f"{weights}: the adapter holds no tensors")
    bad = [t for t in infos.values() if not t.is_float]
    if bad:
        raise TunelensError(f"{weights}: tensor {bad[0].name} has dtype {bad[0].dtype}; LoRA factors must be floats")
    return Checkpoint(
        path=path,
        name=name,
        config={"adapter": cfg.describe()},
        arch=ArchInfo.from_config({}),
        tensors=infos,
        files=(weights,),
        fingerprint=digest.hexdigest(),
        kind="adapter",
        meta=raw,
    )


def adapter_base(adapter: Checkpoint, override: str | Path | None = None) -> Checkpoint:
    """The model an adapter runs on: ``override`` when given (the command's BASE), else the one its config
    names (``base_model_name_or_path``: a local folder, or an id in the local Hugging Face cache)."""
    from tunelens.checkpoints.index import open_checkpoint

    named = override if override is not None else adapter.meta.get("base_model_name_or_path")
    if not named:
        raise TunelensError(
            f"{adapter.name}: the adapter names no base model (base_model_name_or_path); give its base explicitly"
        )
    try:
        base = open_checkpoint(named)
    except TunelensError as exc:
        raise TunelensError(f"{adapter.name} runs on {named}, which cannot be opened: {exc}") from exc
    if base.kind != "model":
        raise TunelensError(f"{adapter.name} runs on {named}, which is a {base.kind} folder, not a model")
    return base

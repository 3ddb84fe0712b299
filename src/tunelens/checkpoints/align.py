"""Compatibility pre-flight: line a base up against other checkpoints before any heavy work.

Architectures, tensor names and shapes are compared from headers. A vocabulary resize is reported
and handled only by an explicit policy (``crop`` or ``skip``); missing tensors are an error unless
``missing="skip"``; dtype differences and tied weights are recorded. The result is the plan every
streaming stage iterates: one :class:`AlignedTensor` per base tensor that takes part, with one
:class:`TauTerm` per other checkpoint saying how its τ on that tensor is formed (a fine-tuned
tensor, a stored τ, a PEFT adapter's low-rank factors, or zero). Only
:mod:`tunelens.vectors.source` turns a plan into numbers.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from tunelens.checkpoints.index import Checkpoint, TensorInfo
from tunelens.checkpoints.naming import Part
from tunelens.errors import TunelensError

VocabPolicy = Literal["error", "crop", "skip"]
MissingPolicy = Literal["error", "skip"]


@dataclass(frozen=True)
class LowRank:
    """A PEFT LoRA update ``scale · B A`` of one tensor; with ``transpose`` the stored layout is its
    transpose (``fan_in_fan_out`` Conv1D weights, embeddings)."""

    a: TensorInfo  # lora_A [r, in] (lora_embedding_A [r, rows])
    b: TensorInfo  # lora_B [out, r] (lora_embedding_B [cols, r])
    scale: float
    transpose: bool = False

    @property
    def rank(self) -> int:
        return self.a.shape[0]


@dataclass(frozen=True)
class TauTerm:
    """How one checkpoint's τ on one aligned tensor is formed (planned from headers, picklable):

    ``τ = (full − θ_pre) + stored + scale · B A``, each term present or not; none present is τ = 0
    (a tensor an adapter leaves alone). ``full`` is a fine-tuned tensor (a model folder, or an
    adapter's ``modules_to_save`` / trained bias), ``stored`` a vector folder's τ.
    """

    full: TensorInfo | None = None
    stored: TensorInfo | None = None
    lowrank: LowRank | None = None

    @property
    def zero(self) -> bool:
        return self.full is None and self.stored is None and self.lowrank is None

    @property
    def info(self) -> TensorInfo | None:
        """The stored tensor that carries this term's shape and dtype, if any."""
        return self.full if self.full is not None else self.stored


@dataclass(frozen=True)
class AlignedTensor:
    """One base tensor and how each other checkpoint's τ is formed on it (same order as given)."""

    name: str
    base: TensorInfo
    terms: tuple[TauTerm, ...]
    parts: tuple[Part, ...]
    rows: int | None = None  # vocab crop: only the first ``rows`` rows take part

    @property
    def numel(self) -> int:
        if self.rows is None:
            return self.base.numel
        per_row = self.base.numel // max(self.base.shape[0], 1)
        return self.rows * per_row

    def infos(self, *, base: bool = True) -> list[TensorInfo]:
        """Every stored tensor this job reads: the base (unless ``base=False``) and each term's tensors."""
        out = [self.base] if base else []
        for term in self.terms:
            out += [t for t in (term.full, term.stored) if t is not None]
            if term.lowrank is not None:
                out += [term.lowrank.a, term.lowrank.b]
        return out

    def byte_ranges(self, *, base: bool = True) -> list[tuple[Path, int, int]]:
        """The file byte ranges of :meth:`infos` (pickle tensors, which have none, are left out)."""
        return [(t.file, t.begin, t.end) for t in self.infos(base=base) if t.begin >= 0]


@dataclass(frozen=True)
class Alignment:
    """The plan: aligned tensors plus everything left out and why."""

    base: Checkpoint
    others: tuple[Checkpoint, ...]
    tensors: tuple[AlignedTensor, ...]
    skipped: tuple[dict[str, str], ...] = ()
    cropped: tuple[dict[str, object], ...] = ()
    notes: tuple[str, ...] = field(default=())

    def report(self) -> dict[str, object]:
        return {
            "tensors": len(self.tensors),
            "skipped": list(self.skipped),
            "cropped": list(self.cropped),
            "notes": list(self.notes),
        }


def _embed_name(ck: Checkpoint) -> str | None:
    for name in ck.tensors:
        if ck.arch.parse(name)[1] == "embed" and "wpe" not in name:
            return name
    return None


def _resolve(ck: Checkpoint, name: str, base_component: str) -> TensorInfo | None:
    info = ck.tensors.get(name)
    if info is None and base_component == "lm_head" and ck.arch.tie_word_embeddings:
        embed = _embed_name(ck)
        return ck.tensors.get(embed) if embed else None
    return info


def align(
    base: Checkpoint,
    others: tuple[Checkpoint, ...] | list[Checkpoint],
    *,
    vocab: VocabPolicy = "error",
    missing: MissingPolicy = "error",
) -> Alignment:
    """Compare ``others`` with ``base`` from headers; raise on anything that needs a user's choice."""
    from tunelens.checkpoints.adapter import adapter_plan

    others = tuple(others)
    notes: list[str] = []
    plans: dict[int, dict[str, TauTerm]] = {}
    for i, ck in enumerate(others):
        if ck.kind == "adapter":
            plans[i] = adapter_plan(ck, base)
        elif ck.arch.model_type != base.arch.model_type:
            raise TunelensError(
                f"architectures differ: base {base.name} is {base.arch.model_type}, {ck.name} is {ck.arch.model_type}"
            )
        _check_parent(base, ck, notes)
    skipped: list[dict[str, str]] = []
    cropped: list[dict[str, object]] = []
    missing_by: dict[str, list[str]] = {}
    tensors: list[AlignedTensor] = []
    names = list(base.tensors)
    embed = _embed_name(base)
    full_models = [ck for ck in others if ck.kind != "adapter"]
    if base.arch.tie_word_embeddings:
        for name in names:
            if base.arch.parse(name)[1] == "lm_head":
                skipped.append({"tensor": name, "reason": f"tied to {embed}: reported once, as embed"})
        heads = {n for n in names if base.arch.parse(n)[1] == "lm_head"}
        for i, plan in plans.items():
            trained = sorted(heads & set(plan))
            if trained:
                raise TunelensError(
                    f"{others[i].name} trains {trained[0]}, which {base.name} ties to {embed}; "
                    "merge the adapter with PEFT first"
                )
        names = [n for n in names if n not in heads]
        untied = [ck.name for ck in full_models if not ck.arch.tie_word_embeddings]
        if untied and embed is not None:
            notes.append(f"base ties lm_head to {embed}; {', '.join(untied)} do not: lm_head compared with it")
            for ck in full_models:
                head = next((n for n in ck.tensors if ck.arch.parse(n)[1] == "lm_head"), None)
                if head and head not in names:
                    names.append(head)
    for name in names:
        binfo = base.tensors.get(name)
        _, component = base.arch.parse(name)
        if binfo is None:  # an lm_head only the others have: compare against the base's embed
            binfo = base.tensors[embed] if embed else None
            if binfo is None:
                continue
            binfo = replace(binfo, name=name)  # keeps how it is stored (safetensors, GGUF layout)
        if not binfo.is_float:
            skipped.append({"tensor": name, "reason": f"non-float dtype {binfo.dtype}"})
            continue
        terms: list[TauTerm] = []
        rows: int | None = None
        skip_reason: str | None = None
        for i, ck in enumerate(others):
            if i in plans:
                term = plans[i].get(name, TauTerm())
            else:
                found = _resolve(ck, name, component)
                if found is None:
                    missing_by.setdefault(ck.name, []).append(name)
                    skip_reason = f"missing in {ck.name}"
                    break
                term = TauTerm(stored=found) if ck.kind == "vector" else TauTerm(full=found)
            info = term.info
            if info is not None and info.shape != binfo.shape:
                resized = (
                    component in ("embed", "lm_head")
                    and len(info.shape) == len(binfo.shape)
                    and info.shape[1:] == binfo.shape[1:]
                    and term.lowrank is None
                )
                if not resized:
                    raise TunelensError(
                        f"shape mismatch for {name}: base {base.name} {list(binfo.shape)} vs "
                        f"{ck.name} {list(info.shape)}"
                    )
                added = info.shape[0] - binfo.shape[0]
                if vocab == "error":
                    raise TunelensError(
                        f"vocabulary sizes differ in {name}: base {base.name} has {binfo.shape[0]} rows, "
                        f"{ck.name} has {info.shape[0]} ({added:+d}); pass --vocab crop (compare the "
                        f"first {min(info.shape[0], binfo.shape[0])} rows) or --vocab skip"
                    )
                if vocab == "skip":
                    skip_reason = f"vocab resize in {ck.name} ({added:+d} rows), --vocab skip"
                    break
                rows = min(rows if rows is not None else binfo.shape[0], info.shape[0])
            if info is not None and info.dtype != binfo.dtype:
                notes.append(f"{name}: dtype {binfo.dtype} in base, {info.dtype} in {ck.name} (compared in float32)")
            terms.append(term)
        if skip_reason is not None:
            skipped.append({"tensor": name, "reason": skip_reason})
            continue
        if rows is not None:
            cropped.append({"tensor": name, "rows": rows, "base_rows": binfo.shape[0], "policy": "crop"})
        tensors.append(AlignedTensor(name, binfo, tuple(terms), base.arch.parts(name, binfo.shape), rows))
    if missing_by and missing == "error":
        who, lst = next(iter(missing_by.items()))
        raise TunelensError(
            f"{who} lacks {len(lst)} float tensor(s) of the base ({', '.join(lst[:3])}"
            f"{', ...' if len(lst) > 3 else ''}); pass --missing skip to analyse the rest"
        )
    for ck in full_models:
        extra = [n for n in ck.tensors if n not in base.tensors and ck.arch.parse(n)[1] != "lm_head"]
        if extra:
            notes.append(f"{ck.name} has {len(extra)} tensor(s) the base lacks, ignored ({extra[0]}, ...)")
    tensors.sort(key=lambda t: _natural_key(base, t.name))
    return Alignment(base, others, tuple(tensors), tuple(skipped), tuple(cropped), tuple(dict.fromkeys(notes)))


def _natural_key(ck: Checkpoint, name: str) -> tuple[float, str]:
    """Embeddings first, then layers in order, then final norm / lm_head: the same for any sharding."""
    layer, component = ck.arch.parse(name)
    if layer is not None:
        return (float(layer), name)
    return (-1.0 if component == "embed" else float("inf"), name)


def _check_parent(base: Checkpoint, ck: Checkpoint, notes: list[str]) -> None:
    """Warn when a vector's recorded parent or a model card's ``base_model`` names another model."""
    if ck.kind == "vector":
        parent = ck.meta.get("parent", {})
        if isinstance(parent, dict) and parent.get("sha256") not in (None, base.fingerprint):
            msg = (
                f"{ck.name} is a tuning vector of {parent.get('name', '?')} (sha256 "
                f"{str(parent.get('sha256'))[:12]}), not of {base.name} ({base.fingerprint[:12]})"
            )
            warnings.warn(msg, stacklevel=3)
            notes.append(msg)
        return
    named = _card_base_model(ck)
    if named and base.name not in named and str(base.path.name) not in named:
        what = "adapter names base_model_name_or_path" if ck.kind == "adapter" else "model card names base_model"
        msg = f"{ck.name}'s {what} {named!r}; you gave {base.name} as its parent"
        warnings.warn(msg, stacklevel=3)
        notes.append(msg)


def _card_base_model(ck: Checkpoint) -> str | None:
    """The base a checkpoint names: an adapter's ``base_model_name_or_path``, a config's or model card's
    ``base_model``."""
    if ck.kind == "adapter":
        named = ck.meta.get("base_model_name_or_path")
        return named if isinstance(named, str) and named else None
    value = ck.config.get("base_model")
    if isinstance(value, str):
        return value
    card = ck.path / "README.md"
    if card.exists():
        try:
            text = card.read_text(errors="replace")
        except OSError:
            return None
        if text.startswith("---"):
            for line in text.split("---", 2)[1].splitlines():
                if line.strip().startswith("base_model:"):
                    value = line.split(":", 1)[1].strip().strip("\"'")
                    return value or None
    return None

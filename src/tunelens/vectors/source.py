"""The one producer of τ = θ_ft − θ_pre: every stage reads tensors through :class:`TauSource`.

For one planned tensor (an :class:`~tunelens.checkpoints.align.AlignedTensor`) the source reads the
base and, per model, what its :class:`~tunelens.checkpoints.align.TauTerm` names, into the calling
thread's reused buffers (:class:`~tunelens.checkpoints.stream.Scratch`):

- a fine-tuned tensor (a model folder; an adapter's ``modules_to_save`` or trained bias):
  ``τ = float32(θ_ft) − float32(θ_pre)``;
- a vector folder's τ, as stored;
- a PEFT adapter's factors: ``τ = L R`` with ``L [rows, r]``, ``R [r, cols]`` float32 in the stored
  layout (``L = B``, ``R = scale · A``; transposed for ``fan_in_fan_out`` and embeddings), kept as
  factors so that stages can use the low rank, and multiplied out (float32) only when asked;
- nothing: ``τ = 0``.

It owns the vocabulary crop and row ranges (a stage may read a tensor in row blocks), fused
splits and the ``[out, in]`` turn of GPT-2 Conv1D weights (:meth:`TensorRead.part`), and the
non-finite checks (:func:`require_finite`, :meth:`TauSource.nonfinite`). It is picklable (plans and
paths travel; readers and buffers are per thread), so any executor can run the stages that use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from tunelens.checkpoints.align import AlignedTensor, Alignment, LowRank, TauTerm
from tunelens.checkpoints.index import TensorInfo
from tunelens.checkpoints.naming import Part
from tunelens.checkpoints.stream import (
    ReaderPool,
    Scratch,
    ScratchPool,
    TensorReader,
    row_block,
    select_part,
    to_out_in,
)
from tunelens.errors import TunelensError

NONFINITE_HINT = "pass --allow-nonfinite to analyse a broken model anyway (every affected number is then null)"


def count_nonfinite(t: torch.Tensor) -> int:
    """How many values of ``t`` are NaN or ±Inf (0 for non-float tensors)."""
    if not t.is_floating_point() or t.numel() == 0:
        return 0
    return int(t.numel() - int(torch.isfinite(t).sum()))


def require_finite(t: torch.Tensor, what: str, *, allow: bool = False) -> bool:
    """True when every value of ``t`` is finite; else one clear error (or False when ``allow``)."""
    if t.numel() == 0 or bool(torch.isfinite(t).all()):
        return True
    if allow:
        return False
    n = count_nonfinite(t)
    raise TunelensError(f"{what} has {n} non-finite value(s) (NaN/Inf) of {t.numel()}; {NONFINITE_HINT}")


@dataclass
class TensorRead:
    """One tensor as read for one job: the base and each model's τ inputs, rows ``[start, stop)``.

    Tensors are views into the reading thread's buffers, valid until that thread reads again.
    ``raw[i]`` is model ``i``'s stored tensor (``full`` or ``stored``), ``factors[i]`` its ``(L, R)``;
    both None for a model whose τ is 0 here or that was not asked for.
    """

    job: AlignedTensor
    start: int
    stop: int
    base: torch.Tensor | None
    raw: list[torch.Tensor | None]
    factors: list[tuple[torch.Tensor, torch.Tensor] | None]
    wanted: tuple[int, ...]
    scratch: Scratch = field(repr=False)
    _base32: torch.Tensor | None = field(default=None, repr=False)

    def term(self, i: int) -> TauTerm:
        return self.job.terms[i]

    def is_zero(self, i: int) -> bool:
        return self.job.terms[i].zero

    def base_float(self) -> torch.Tensor:
        """The base rows in float32 (the stored tensor itself when stored as float32)."""
        if self.base is None:
            raise RuntimeError("this read did not include the base")
        if self._base32 is None:
            b = self.base
            f32 = torch.float32
            self._base32 = b if b.dtype == f32 else self.scratch.get("base32", f32, b.shape).copy_(b)
        return self._base32

    def tau(self, i: int) -> torch.Tensor | None:
        """Model ``i``'s dense τ (float32, stored layout, these rows) in its own buffer, or None when τ = 0.

        The buffer is the caller's to change (stages scale τ in place); ask once per read: τ may be
        formed in place of ``raw[i]``.
        """
        if i not in self.wanted:
            raise RuntimeError(f"model {i} was not read")
        term = self.job.terms[i]
        if term.zero:
            return None
        shape = self._shape()
        out: torch.Tensor | None = None
        raw = self.raw[i]
        if raw is not None:
            # a float32 tensor was read into this model's own buffer: τ is formed there, in place
            out = raw if raw.dtype == torch.float32 else self.scratch.get(f"tau{i}", torch.float32, shape).copy_(raw)
            if term.full is not None:
                out.sub_(self.base_float())
        f = self.factors[i]
        if f is not None:
            left, right = f
            if out is None:
                out = torch.matmul(left, right, out=self.scratch.get(f"tau{i}", torch.float32, shape))
            else:
                out.addmm_(left, right)
        return out

    def _shape(self) -> tuple[int, ...]:
        full = self.job.base.shape
        return (self.stop - self.start, *full[1:]) if full else full

    def part(self, t: torch.Tensor, part: Part) -> torch.Tensor:
        """The slice of ``t`` (a tensor of this read) that ``part`` names, as ``[out, in]`` for 2-D weights.

        Row-sliced parts must be read whole (``start = 0``, all rows).
        """
        return to_out_in(select_part(t, part), part)

    def part_factors(self, i: int, part: Part) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Model ``i``'s low-rank factors on ``part`` as ``[out, r]``, ``[r, in]`` (τ_part = L R), if τ is
        purely low rank there; None otherwise."""
        f = self.factors[i]
        if f is None or self.raw[i] is not None:
            return None
        left, right = f
        if part.dim == 0:
            left = left[part.start : part.stop]
        elif part.dim == 1:
            right = right[:, part.start : part.stop]
        if part.layout == "in_out":  # stored [in, out]: τᵀ = Rᵀ Lᵀ
            return right.T, left.T
        return left, right


@dataclass
class TauSource:
    """Reads, per aligned tensor, the base and each model's τ inputs (see the module doc)."""

    alignment: Alignment
    allow_nonfinite: bool = False
    readers: ReaderPool = field(default_factory=ReaderPool)
    scratch: ScratchPool = field(default_factory=ScratchPool)

    @property
    def names(self) -> list[str]:
        return [ck.name for ck in self.alignment.others]

    def read(
        self,
        job: AlignedTensor,
        *,
        rows: tuple[int, int] | None = None,
        models: Sequence[int] | None = None,
        base: bool | torch.Tensor = True,
    ) -> TensorRead:
        """Read ``job``'s rows ``[start, stop)`` (default: every row the plan keeps, vocab crop applied).

        ``models``: which models' τ inputs to read (default all). ``base``: read the base (True), skip it
        (False), or use this already-read tensor of the base's rows (stored dtype).
        """
        n_rows = job.rows if job.rows is not None else (job.base.shape[0] if job.base.shape else 1)
        start, stop = rows if rows is not None else (0, n_rows)
        if not 0 <= start <= stop <= n_rows:
            raise ValueError(f"rows {start}:{stop} outside {job.name}'s {n_rows}")
        reader, sc = self.readers.get(), self.scratch.get()
        wanted = tuple(range(len(job.terms))) if models is None else tuple(models)
        if isinstance(base, torch.Tensor):
            base_t: torch.Tensor | None = base
        elif base:
            base_t = _read_rows(sc, "base", job.base, reader, start, stop)
        else:
            base_t = None
        raw: list[torch.Tensor | None] = [None] * len(job.terms)
        factors: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(job.terms)
        for i in wanted:
            term = job.terms[i]
            if term.full is not None or term.stored is not None:
                info = term.full if term.full is not None else term.stored
                assert info is not None
                raw[i] = _read_rows(sc, f"src{i}", info, reader, start, stop)
            if term.lowrank is not None:
                factors[i] = _factors(term.lowrank, reader, start, stop)
        if (base_t is None and any(job.terms[i].full is not None for i in wanted)) and base is not False:
            raise RuntimeError("a fine-tuned term needs the base")
        return TensorRead(job, start, stop, base_t, raw, factors, wanted, sc)

    def nonfinite(self, job: AlignedTensor, what: str) -> str:
        """One line naming which input of ``job`` holds non-finite values (base, or model and term)."""
        reader = self.readers.get()
        found: list[str] = []
        n = count_nonfinite(reader.read(job.base))
        if n:
            found.append(f"base {self.alignment.base.name}: {n} in {job.base.name}")
        for ck, term in zip(self.alignment.others, job.terms, strict=True):
            for info in (term.full, term.stored):
                if info is not None and (n := count_nonfinite(reader.read(info))):
                    found.append(f"{ck.name}: {n} in {info.name}")
            if term.lowrank is not None:
                n = count_nonfinite(reader.read(term.lowrank.a)) + count_nonfinite(reader.read(term.lowrank.b))
                if n:
                    found.append(f"{ck.name}: {n} in the LoRA factors of {job.name}")
        where = "; ".join(found) if found else "no input holds any: the arithmetic overflowed"
        return f"{what} of {job.name} is not finite (NaN/Inf values: {where})"

    def close(self) -> None:
        self.readers.close()
        self.scratch.close()


def _read_rows(sc: Scratch, key: str, info: TensorInfo, reader: TensorReader, start: int, stop: int) -> torch.Tensor:
    """Rows ``[start, stop)`` of a stored tensor into buffer ``key`` (only those bytes when the format allows)."""
    whole = info.shape[0] if info.shape else 1
    if start == 0 and stop == whole:
        return sc.read(key, info, reader)
    block = row_block(info, start, stop)
    if block is not None:
        return sc.read(key, block, reader)
    return sc.read(key, info, reader)[start:stop]


def _factors(lr: LowRank, reader: TensorReader, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L [stop-start, r], R [r, cols])`` float32 of ``scale · B A`` in the stored layout."""
    a = reader.read_float(lr.a)  # [r, in]   (embedding: [r, rows])
    b = reader.read_float(lr.b)  # [out, r]  (embedding: [cols, r])
    if lr.transpose:
        left, right = a.T, b.T.mul(lr.scale)
    else:
        left, right = b, a.mul(lr.scale)
    return left[start:stop].contiguous(), right.contiguous()


def tau_definition() -> str:
    """The definition of τ every output states."""
    return (
        "tau = theta_ft - theta_pre per tensor in float32: a fine-tuned tensor minus the base's; a vector folder's "
        "stored tau; a PEFT LoRA adapter's scale * B A (scale = lora_alpha / r, or / sqrt(r) with rsLoRA; "
        "rank_pattern / alpha_pattern as PEFT resolves them), plus any tensor it stores whole (modules_to_save, "
        "trained biases) minus the base's; 0 on tensors an adapter leaves alone (still counted in sums)"
    )


def check_kinds(alignment: Alignment, allowed: Sequence[str], command: str) -> None:
    """Refuse, in one line, an input kind a command cannot take."""
    for ck in alignment.others:
        if ck.kind not in allowed:
            raise TunelensError(f"{command} does not take a {ck.kind} folder ({ck.name})")

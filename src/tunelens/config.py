"""Typed, frozen options for each stage. Closed choices are ``Literal`` types checked on creation."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from tunelens.checkpoints.align import MissingPolicy, VocabPolicy
from tunelens.checkpoints.architectures import COMPONENTS, GROUPS, Component
from tunelens.errors import TunelensError

if TYPE_CHECKING:
    from tunelens.checkpoints.index import Checkpoint

ExecutorKind = Literal["thread", "process", "ray"]


@dataclass(frozen=True)
class Selection:
    """Which parts take part: components, layers, embeddings. ``None`` means all."""

    components: tuple[Component, ...] | None = None
    layers: tuple[int, ...] | None = None
    embeddings: bool = True

    def __post_init__(self) -> None:
        if self.components is not None:
            bad = [c for c in self.components if c not in COMPONENTS]
            if bad:
                raise TunelensError(f"unknown component(s) {', '.join(bad)}; choose from {', '.join(COMPONENTS)}")

    def keeps(self, layer: int | None, component: str) -> bool:
        if not self.embeddings and component in ("embed", "lm_head"):
            return False
        if self.components is not None and component not in self.components:
            return False
        return not (self.layers is not None and (layer is None or layer not in self.layers))

    def check(self, checkpoints: Sequence[Checkpoint]) -> None:
        """Refuse, before any data is read, a selection that names layers the first checkpoint lacks,
        components it has none of, or that keeps none of its tensors (one line: asked vs. exists)."""
        if not checkpoints:
            return
        ck = checkpoints[0]
        parts = [p for name, info in ck.tensors.items() for p in ck.arch.parts(name, info.shape)]
        layers = sorted({p.layer for p in parts if p.layer is not None})
        comps = [c for c in COMPONENTS if any(p.component == c for p in parts)]
        if self.layers is not None:
            absent = [x for x in self.layers if x not in layers]
            if absent:
                has = f"layers {format_layers(layers)}" if layers else "it has no numbered layers"
                raise TunelensError(f"--layers {format_layers(absent)} not in {ck.name} ({has})")
        if self.components == ():
            raise TunelensError("the selection names no component (--components and --only have none in common)")
        if self.components is not None and not any(c in comps for c in self.components):
            raise TunelensError(
                f"--components {','.join(self.components)}: {ck.name} has none of them (it has {', '.join(comps)})"
            )
        if not any(self.keeps(p.layer, p.component) for p in parts):
            asked = [f"--components {','.join(self.components)}"] if self.components is not None else []
            asked += [f"--layers {format_layers(self.layers)}"] if self.layers is not None else []
            asked += ["--no-embeddings"] if not self.embeddings else []
            raise TunelensError(f"{' with '.join(asked) or 'the selection'} keeps no tensor of {ck.name}")

    def describe(self) -> dict[str, object]:
        return {
            "components": list(self.components) if self.components else "all",
            "layers": list(self.layers) if self.layers is not None else "all",
            "embeddings": self.embeddings,
        }


@dataclass(frozen=True)
class ReadOptions:
    """How inputs are opened and lined up (shared by every streaming stage)."""

    vocab: VocabPolicy = "error"
    missing: MissingPolicy = "error"
    allow_pickle: bool = False
    workers: int = 2
    quiet: bool = False
    executor: ExecutorKind = "thread"
    address: str | None = None  # ray: "auto", "HOST:PORT", or None for a local cluster of ``workers`` CPUs
    retries: int = 3  # process / ray: re-runs of a job whose worker died (exceptions are never retried)
    allow_nonfinite: bool = False  # NaN/Inf in inputs: analyse anyway (affected numbers null) instead of stopping

    def __post_init__(self) -> None:
        if self.executor not in get_args(ExecutorKind):
            raise TunelensError(f"--executor must be one of {', '.join(get_args(ExecutorKind))}, got {self.executor}")
        if self.address is not None and self.executor != "ray":
            raise TunelensError("--address is for --executor ray")
        if self.retries < 0:
            raise TunelensError("--retries must be at least 0")
        if self.vocab not in get_args(VocabPolicy):
            raise TunelensError(f"--vocab must be one of {', '.join(get_args(VocabPolicy))}, got {self.vocab}")
        if self.missing not in get_args(MissingPolicy):
            raise TunelensError(f"--missing must be one of {', '.join(get_args(MissingPolicy))}")
        if self.workers < 1:
            raise TunelensError("--workers must be at least 1")


def parse_components(text: str | None) -> tuple[Component, ...] | None:
    """``"q,k,mlp"`` → ``("q", "k", "gate", "up", "down")``; groups (attention, mlp, ...) expand."""
    if not text:
        return None
    out: list[Component] = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        if item in GROUPS:
            out.extend(GROUPS[item])
        elif item in COMPONENTS:
            out.append(item)
        else:
            names = ", ".join((*COMPONENTS, *GROUPS))
            raise TunelensError(f"unknown component {item!r}; choose from {names}")
    if not out:
        raise TunelensError(f"--components {text!r} names no component; e.g. q,v or attention,mlp")
    return tuple(dict.fromkeys(out))


def parse_layers(text: str | None) -> tuple[int, ...] | None:
    """``"0-3,7"`` → ``(0, 1, 2, 3, 7)``."""
    if not text:
        return None
    out: list[int] = []
    try:
        for item in (t.strip() for t in text.split(",") if t.strip()):
            if "-" in item:
                lo, hi = (int(x) for x in item.split("-", 1))
                if hi < lo:
                    raise ValueError(item)
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(item))
    except ValueError as exc:
        raise TunelensError(f"bad --layers {text!r}: use e.g. 0-11 or 0,4,8") from exc
    if not out:
        raise TunelensError(f"bad --layers {text!r}: it names no layer; use e.g. 0-11 or 0,4,8")
    return tuple(sorted(set(out)))


def format_layers(layers: Iterable[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` → ``"0-2,5,7-8"``."""
    out: list[str] = []
    run: list[int] = []
    for x in sorted(set(layers)):
        if run and x == run[-1] + 1:
            run.append(x)
            continue
        if run:
            out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [x]
    if run:
        out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(out)


def check_device(device: str) -> str:
    """``cpu`` or ``cuda[:N]`` (available): the device a stage computes on; else one clear error."""
    if device == "cpu":
        return device
    if not device.startswith("cuda"):
        raise TunelensError(f"--device must be cpu or cuda[:N], got {device!r}")
    import torch

    if not torch.cuda.is_available():
        raise TunelensError(f"--device {device}: no CUDA device is available")
    return device

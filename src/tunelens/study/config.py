"""``STUDY.yaml``: a typed, validated study config (unknown keys are errors).

Example::

    base: base
    models:
      - {name: base, path: zoo/base}
      - {name: med, path: zoo/med, parent: base}
      - {name: math, path: zoo/math, parent: base}
    corpus: [zoo/corpora/medical.heldout.jsonl]
    tasks: [zoo/tasks/hpo_mcqa.jsonl]
    stages: [diff, subspace, spectrum, activations, evaluate]
    edits:
      - {name: med-negated, target: pre, terms: {med: -1}}
      - {name: med+math, terms: {med: 1, math: 1}}
    sweep: {vector: med, scales: [-1, -0.5, 0, 0.5, 1]}
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from tunelens.errors import TunelensError

Stage = Literal["diff", "subspace", "spectrum", "activations", "evaluate"]
STAGES: tuple[Stage, ...] = get_args(Stage)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    parent: str | None = None


@dataclass(frozen=True)
class Edit:
    """θ = θ_target + Σ λ·τ(model); ``target`` is ``pre`` (the base) or the name of a tuned model."""

    name: str
    terms: tuple[tuple[str, float], ...]
    target: str = "pre"


@dataclass(frozen=True)
class Sweep:
    vector: str
    scales: tuple[float, ...]


@dataclass(frozen=True)
class DiffStage:
    embeddings: bool = True


@dataclass(frozen=True)
class SubspaceStage:
    energy: tuple[float, ...] = (0.9,)
    per_head: bool = False
    tau_spectrum: bool = False


@dataclass(frozen=True)
class SpectrumStage:
    """``tunelens spectrum`` options (docs/spectrum.md)."""

    intruder_k: int = 10
    intruder_eps: float = 0.5
    amp_rank: int = 16
    per_head: bool = False

    def __post_init__(self) -> None:
        for name in ("intruder_k", "amp_rank"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise TunelensError(f"study: spectrum.{name} must be a positive integer, got {v!r}")
        eps = self.intruder_eps
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0.0 < eps <= 1.0:
            raise TunelensError(f"study: spectrum.intruder_eps must be a number in (0, 1], got {eps!r}")


@dataclass(frozen=True)
class ActivationsStage:
    seq_len: int = 128
    max_tokens: int = 16384
    dtype: Literal["float32", "bfloat16"] = "float32"
    batch_size: int = 8


@dataclass(frozen=True)
class EvaluateStage:
    limit: int | None = None
    batch_size: int = 8
    max_new_tokens: int = 96


@dataclass(frozen=True)
class ComparisonsStage:
    """Paired comparisons of the evaluate runs (each fine-tune vs the base, each edit vs the model it was made
    from and vs the base, each sweep point vs λ = 0): interval level, bootstrap resamples, seed."""

    level: float = 0.95
    resamples: int = 10_000
    seed: int = 0

    def __post_init__(self) -> None:
        from tunelens.evaluation.stats import StatsOptions

        StatsOptions(self.level, self.resamples, self.seed)  # the same checks, one message


@dataclass(frozen=True)
class StudyConfig:
    base: str
    models: tuple[ModelEntry, ...]
    corpus: tuple[Path, ...] = ()
    tasks: tuple[str, ...] = ()
    stages: tuple[Stage, ...] = STAGES
    edits: tuple[Edit, ...] = ()
    sweep: Sweep | None = None
    diff: DiffStage = field(default_factory=DiffStage)
    subspace: SubspaceStage = field(default_factory=SubspaceStage)
    spectrum: SpectrumStage = field(default_factory=SpectrumStage)
    activations: ActivationsStage = field(default_factory=ActivationsStage)
    evaluate: EvaluateStage = field(default_factory=EvaluateStage)
    comparisons: ComparisonsStage = field(default_factory=ComparisonsStage)
    title: str = "tunelens study"

    @property
    def base_model(self) -> ModelEntry:
        return next(m for m in self.models if m.name == self.base)

    @property
    def tuned(self) -> tuple[ModelEntry, ...]:
        return tuple(m for m in self.models if m.name != self.base)

    @classmethod
    def from_yaml(cls, path: Path) -> StudyConfig:
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise TunelensError(f"{path}: cannot read ({exc.strerror})") from exc
        except yaml.YAMLError as exc:
            raise TunelensError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from exc
        return cls.from_dict(data, root=Path(path).parent)

    @classmethod
    def from_dict(cls, data: Any, *, root: Path = Path(".")) -> StudyConfig:
        d = _mapping(data, "study")
        _known(d, {f.name for f in fields(cls)}, "study")
        models = tuple(_model(m, root, i) for i, m in enumerate(_list(d.get("models"), "models")))
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise TunelensError(f"study: model names must be unique, got {names}")
        base = _str(d.get("base"), "base")
        if base not in names:
            raise TunelensError(f"study: base {base!r} is not one of the models ({', '.join(names)})")
        for m in models:
            if m.name != base and m.parent not in (None, base):
                raise TunelensError(
                    f"study: model {m.name} has parent {m.parent!r}, but the study's base is {base!r}; "
                    "one study compares the fine-tunes of one base"
                )
            if not m.path.exists():
                raise TunelensError(f"study: model {m.name}: {m.path} does not exist")
        if len(models) < 2:
            raise TunelensError("study: needs the base and at least one fine-tuned model")
        stages = tuple(_list(d.get("stages", list(STAGES)), "stages"))
        for s in stages:
            if s not in STAGES:
                raise TunelensError(f"study: unknown stage {s!r}; choose from {', '.join(STAGES)}")
        tuned = [n for n in names if n != base]
        edits = tuple(_edit(e, tuned, i) for i, e in enumerate(_list(d.get("edits", []), "edits")))
        sweep = None
        if d.get("sweep") is not None:
            sd = _mapping(d["sweep"], "sweep")
            _known(sd, {"vector", "scales"}, "sweep")
            vec = _str(sd.get("vector"), "sweep.vector")
            if vec not in tuned:
                raise TunelensError(f"study: sweep.vector {vec!r} is not a tuned model ({', '.join(tuned)})")
            sweep = Sweep(vec, tuple(_num(x, "sweep.scales") for x in _list(sd.get("scales"), "sweep.scales")))
        corpus = tuple(_path(p, root) for p in _list(d.get("corpus", []), "corpus"))
        for p in corpus:
            if not p.exists():
                raise TunelensError(f"study: corpus file {p} does not exist")
        tasks = tuple(str(t) if not str(t).endswith((".jsonl", ".yaml", ".yml")) else str(_path(t, root))
                      for t in _list(d.get("tasks", []), "tasks"))  # fmt: skip
        cfg = cls(
            base=base,
            models=models,
            corpus=corpus,
            tasks=tasks,
            stages=stages,
            edits=edits,
            sweep=sweep,
            diff=_sub(DiffStage, d.get("diff"), "diff"),
            subspace=_sub(SubspaceStage, d.get("subspace"), "subspace"),
            spectrum=_sub(SpectrumStage, d.get("spectrum"), "spectrum"),
            activations=_sub(ActivationsStage, d.get("activations"), "activations"),
            evaluate=_sub(EvaluateStage, d.get("evaluate"), "evaluate"),
            comparisons=_sub(ComparisonsStage, d.get("comparisons"), "comparisons"),
            title=str(d.get("title", "tunelens study")),
        )
        _check_ranges(cfg)
        return cfg


def _mapping(v: Any, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise TunelensError(f"study: {where} must be a mapping")
    return v


def _list(v: Any, where: str) -> list[Any]:
    if not isinstance(v, list):
        raise TunelensError(f"study: {where} must be a list")
    return v


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v:
        raise TunelensError(f"study: {where} must be a non-empty string")
    return v


def _num(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TunelensError(f"study: {where}: λ must be a number, got {v!r}")
    return float(v)


def _known(d: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise TunelensError(
            f"study: unknown key(s) in {where}: {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )


def _path(v: Any, root: Path) -> Path:
    p = Path(_str(v, "path")).expanduser()
    return p if p.is_absolute() else root / p


def _model(v: Any, root: Path, i: int) -> ModelEntry:
    d = _mapping(v, f"models[{i}]")
    _known(d, {"name", "path", "parent"}, f"models[{i}]")
    parent = d.get("parent")
    return ModelEntry(_str(d.get("name"), f"models[{i}].name"), _path(d.get("path"), root),
                      None if parent is None else _str(parent, f"models[{i}].parent"))  # fmt: skip


def _edit(v: Any, tuned: list[str], i: int) -> Edit:
    d = _mapping(v, f"edits[{i}]")
    _known(d, {"name", "terms", "target"}, f"edits[{i}]")
    terms_d = _mapping(d.get("terms"), f"edits[{i}].terms")
    terms = []
    for model, lam in terms_d.items():
        if model not in tuned:
            raise TunelensError(f"study: edits[{i}] names {model!r}, not a tuned model ({', '.join(tuned)})")
        terms.append((str(model), _num(lam, f"edits[{i}].terms.{model}")))
    target = str(d.get("target", "pre"))
    if target != "pre" and target not in tuned:
        raise TunelensError(f"study: edits[{i}].target must be 'pre' or a tuned model, got {target!r}")
    return Edit(_str(d.get("name"), f"edits[{i}].name"), tuple(terms), target)


def _sub(cls: Any, v: Any, where: str) -> Any:
    """A stage section: known keys, each of its field's type (checked even when the stage does not run)."""
    if v is None:
        return cls()
    d = _mapping(v, where)
    _known(d, {f.name for f in fields(cls)}, where)
    kw = {k: tuple(x) if isinstance(x, list) else x for k, x in d.items()}
    hints = get_type_hints(cls)
    for k, x in kw.items():
        if not _fits(hints[k], x):
            raise TunelensError(f"study: {where}.{k} must be {_kind(hints[k])}, got {d[k]!r}")
    return cls(**kw)


def _fits(hint: Any, v: Any) -> bool:
    """Whether a YAML value has the type a stage field declares (bool is not a number here)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return v in args
    if origin in (Union, UnionType):
        return any(_fits(a, v) for a in args)
    if origin is tuple:
        return isinstance(v, tuple) and all(_fits(args[0], x) for x in v)
    if hint is type(None):
        return v is None
    if hint is bool:
        return isinstance(v, bool)
    if hint in (int, float):
        return isinstance(v, int | float if hint is float else int) and not isinstance(v, bool)
    return isinstance(v, hint)


def _kind(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (Union, UnionType):
        return " or ".join(_kind(a) for a in args)
    if origin is tuple:
        return f"a list of {_kind(args[0]).removeprefix('a ').removeprefix('an ')}s"
    names = {bool: "true or false", int: "an integer", float: "a number", type(None): "null", str: "a string"}
    return names.get(hint, str(hint))


def _check_ranges(cfg: StudyConfig) -> None:
    """Values the stages would refuse later, refused when the config is read."""
    from tunelens.activations.options import ActivationOptions

    a, e = cfg.activations, cfg.evaluate
    ActivationOptions(seq_len=a.seq_len, max_tokens=a.max_tokens, batch_size=a.batch_size, dtype=a.dtype)
    bad = [x for x in cfg.subspace.energy if not 0.0 < x <= 1.0]
    if bad or not cfg.subspace.energy:
        raise TunelensError(f"study: subspace.energy values must be in (0, 1], got {list(cfg.subspace.energy)}")
    if (e.limit is not None and e.limit < 1) or e.batch_size < 1 or e.max_new_tokens < 1:
        raise TunelensError("study: evaluate.limit, batch_size and max_new_tokens must be at least 1")

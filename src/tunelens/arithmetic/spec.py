"""What ``apply`` should compute, as typed frozen data: vector specs, terms with masks and λ, the recipe.

A *vector spec* names one source of a tuning vector (a fine-tuned model folder or a vector folder)
and its scale λ: ``path``, ``path:λ``, ``name=path`` or ``name=path:λ`` (λ may be negative:
``med=ft/:-1``). A :class:`Term` adds a mask (components, layers, embeddings) and per-component
factors, so the effective scale of one part of one tensor is
``λ_i · Π factor(component)`` when the mask keeps the part and ``0`` otherwise. A :class:`Recipe`
holds the base, the target (``pre`` = the base, ``ft`` = the first term's fine-tuned model), the
terms, the merge method and the output options. :func:`load_recipe` reads the YAML form.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

from tunelens.checkpoints.architectures import Component
from tunelens.checkpoints.output import resolve_path
from tunelens.checkpoints.writer import DEFAULT_SHARD_BYTES
from tunelens.config import Selection, parse_components, parse_layers
from tunelens.errors import TunelensError

Method = Literal["sum", "ties", "dare_linear", "dare_ties"]
Target = Literal["pre", "ft"]
OutDtype = Literal["float32", "bfloat16", "float16"]

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_SCALE_RE = re.compile(rf"^(?P<path>.*):(?P<scale>{_NUMBER})$")
_SIZE_RE = re.compile(r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>[KMGT]?i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


@dataclass(frozen=True)
class VectorSpec:
    """One source of a tuning vector: a fine-tuned model folder or a vector folder, and its λ."""

    name: str
    path: Path
    scale: float = 1.0


def parse_vector_spec(text: str) -> VectorSpec:
    """``path``, ``path:λ``, ``name=path``, ``name=path:λ`` → :class:`VectorSpec` (λ defaults to 1)."""
    raw = text.strip()
    if not raw:
        raise TunelensError("empty vector spec; use PATH, PATH:SCALE, NAME=PATH or NAME=PATH:SCALE")
    name: str | None = None
    rest = raw
    head, sep, tail = raw.partition("=")
    if sep and head and "/" not in head and not Path(raw).exists():
        name, rest = head, tail
    scale = 1.0
    m = _SCALE_RE.match(rest)
    if m is not None and not Path(rest).exists():
        rest, scale = m.group("path"), _finite(float(m.group("scale")), m.group("scale"), text)
    elif ":" in rest and not Path(rest).expanduser().exists():
        head, _, lam = rest.rpartition(":")
        where = f" and no file or folder {rest!r} exists" if head else ""
        raise TunelensError(
            f"vector spec {text!r}: λ {lam!r} is not a number{where}; use PATH:SCALE, e.g. {head or 'ft/'}:-1"
        )
    if not rest:
        raise TunelensError(f"vector spec {text!r} has no path")
    path = Path(rest).expanduser()
    return VectorSpec(name or resolve_path(path).name, path, scale)


def _finite(value: float, written: str, spec: str) -> float:
    """λ as written, refused when it is not a finite float64 (``1e400`` overflows to inf)."""
    if not math.isfinite(value):
        raise TunelensError(f"vector spec {spec!r}: λ {written} is not a finite number")
    return value


def parse_component_scales(items: list[str] | tuple[str, ...]) -> tuple[tuple[Component, float], ...]:
    """``["mlp=0.5", "q=2"]`` → per-component factors (groups expand; a component given twice is an error)."""
    out: dict[Component, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            factor = float(value)
        except ValueError:
            factor = float("nan")
        if not sep or not math.isfinite(factor):
            raise TunelensError(f"bad --scale {item!r}: use COMPONENT=FACTOR with a finite number, e.g. mlp=0.5")
        for comp in parse_components(key.strip()) or ():
            if comp in out:
                raise TunelensError(f"--scale gives component {comp} twice")
            out[comp] = factor
    return tuple(out.items())


def parse_size(text: str | int) -> int:
    """``"2GB"`` / ``"500MB"`` / ``"1GiB"`` / ``123`` → bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(text)
    if m is None:
        raise TunelensError(f"bad size {text!r}: use e.g. 2GB, 500MB or a number of bytes")
    unit = (m.group("unit") or "").upper()
    binary = "I" in unit
    letter = unit.replace("I", "").replace("B", "") or ""
    factor = 1024 ** ("KMGT".index(letter) + 1) if binary and letter else _UNITS[letter]
    size = int(float(m.group("n")) * factor)
    if size < 1:
        raise TunelensError(f"size {text!r} must be positive")
    return size


def intersect(a: Selection, b: Selection) -> Selection:
    """The parts both selections keep."""
    if a.components is None or b.components is None:
        comps = a.components if b.components is None else b.components
    else:
        comps = tuple(c for c in a.components if c in b.components)
    if a.layers is None or b.layers is None:
        layers = a.layers if b.layers is None else b.layers
    else:
        layers = tuple(x for x in a.layers if x in b.layers)
    return Selection(components=comps, layers=layers, embeddings=a.embeddings and b.embeddings)


@dataclass(frozen=True)
class Term:
    """One vector with its mask and per-component factors."""

    spec: VectorSpec
    selection: Selection = field(default_factory=Selection)
    component_scales: tuple[tuple[Component, float], ...] = ()

    def scale_for(self, layer: int | None, component: str) -> float:
        """Effective λ of this term on a part in ``layer`` of ``component`` (0 when masked out)."""
        if not self.selection.keeps(layer, component):
            return 0.0
        scale = self.spec.scale
        for comp, factor in self.component_scales:
            if comp == component:
                scale *= factor
        return scale

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "path": str(self.spec.path),
            "scale": self.spec.scale,
            "mask": self.selection.describe(),
            "component_scales": dict(self.component_scales),
        }


@dataclass(frozen=True)
class Recipe:
    """Everything ``apply`` computes: ``θ = θ_target + Σ_i λ_i(part) τ_i`` (or a TIES / DARE merge of the τ_i)."""

    base: Path
    terms: tuple[Term, ...]
    target: Target = "pre"
    method: Method = "sum"
    density: float | None = None  # TIES trim density k / DARE keep probability (drop rate p = 1 - density)
    seed: int = 0  # DARE's random drops
    dtype: OutDtype | None = None  # None: each tensor keeps the target's dtype
    shard_bytes: int = DEFAULT_SHARD_BYTES
    mean: bool = False  # the terms' scales were divided by n (recorded)

    def __post_init__(self) -> None:
        if not self.terms:
            raise TunelensError("apply needs at least one vector (-v SPEC)")
        names = [t.spec.name for t in self.terms]
        if len(set(names)) != len(names):
            raise TunelensError(f"vector names must be unique, got {names}; name them with NAME=PATH")
        if self.target not in get_args(Target):
            raise TunelensError(f"target must be pre or ft, got {self.target!r}")
        if self.method not in get_args(Method):
            raise TunelensError(f"method must be one of {', '.join(get_args(Method))}, got {self.method!r}")
        if self.dtype is not None and self.dtype not in get_args(OutDtype):
            raise TunelensError(f"dtype must be one of {', '.join(get_args(OutDtype))}, got {self.dtype!r}")
        if self.method != "sum":
            if self.density is None or not 0.0 < self.density <= 1.0:
                raise TunelensError(f"--method {self.method} needs --density in (0, 1], got {self.density}")
        elif self.density is not None:
            raise TunelensError("--density only applies to --method ties, dare_linear or dare_ties")

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "base": str(self.base),
            "target": self.target,
            "method": self.method,
            "terms": [t.describe() for t in self.terms],
            "mean": self.mean,
            "output_dtype": self.dtype or "target's dtype per tensor",
            "shard_bytes": self.shard_bytes,
        }
        if self.method != "sum":
            out["density"] = self.density
            if self.method.startswith("dare"):
                out["drop_rate"] = 1.0 - (self.density or 1.0)
                out["seed"] = self.seed
        return out


def build_recipe(
    base: str | Path,
    specs: list[VectorSpec] | tuple[VectorSpec, ...],
    *,
    selection: Selection | None = None,
    component_scales: tuple[tuple[Component, float], ...] = (),
    mean: bool = False,
    **options: Any,
) -> Recipe:
    """A recipe whose terms share one mask and one set of per-component factors (the CLI form)."""
    selection = selection or Selection()
    n = len(specs)
    terms = tuple(Term(replace(s, scale=s.scale / n) if mean and n else s, selection, component_scales) for s in specs)
    return Recipe(base=Path(base), terms=terms, mean=mean, **options)


_TOP_KEYS = {
    "base", "target", "vectors", "method", "density", "seed", "dtype", "shard_size", "mean",
    "components", "only", "layers", "embeddings", "scale",
}  # fmt: skip
_TERM_KEYS = {"name", "path", "scale", "components", "only", "layers", "embeddings", "component_scales"}


def load_recipe(path: str | Path) -> Recipe:
    """Read the YAML recipe form (paths relative to the recipe's folder); unknown keys are an error."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise TunelensError(f"{path}: cannot read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise TunelensError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise TunelensError(f"{path}: a recipe is a YAML mapping with base: and vectors:")
    _no_unknown(data, _TOP_KEYS, str(path))
    if "base" not in data or not data.get("vectors"):
        raise TunelensError(f"{path}: a recipe needs base: and a non-empty vectors: list")
    root = path.parent
    common = _selection(data, str(path))
    common_scales = _scales(data.get("scale"), str(path))
    specs: list[Term] = []
    for i, item in enumerate(data["vectors"]):
        where = f"{path}: vectors[{i}]"
        if isinstance(item, str):
            spec = parse_vector_spec(item)
        elif isinstance(item, dict):
            _no_unknown(item, _TERM_KEYS, where)
            if "path" not in item:
                raise TunelensError(f"{where} needs path:")
            p = Path(str(item["path"])).expanduser()
            scale = _number(item.get("scale", 1.0), "scale", where)
            spec = VectorSpec(str(item.get("name") or resolve_path(p).name), p, scale)
        else:
            raise TunelensError(f"{where}: expected a spec string or a mapping")
        if not spec.path.is_absolute():
            spec = replace(spec, path=root / spec.path)
        own = _selection(item, where) if isinstance(item, dict) else Selection()
        scales = dict(common_scales)
        scales.update(_scales(item.get("component_scales"), where) if isinstance(item, dict) else {})
        specs.append(Term(spec, intersect(common, own), tuple(scales.items())))
    mean = bool(data.get("mean", False))
    if mean:
        specs = [replace(t, spec=replace(t.spec, scale=t.spec.scale / len(specs))) for t in specs]
    base = Path(str(data["base"])).expanduser()
    density = data.get("density")
    return Recipe(
        base=base if base.is_absolute() else root / base,
        terms=tuple(specs),
        target=data.get("target", "pre"),
        method=data.get("method", "sum"),
        density=_number(density, "density", str(path)) if density is not None else None,
        seed=int(_number(data.get("seed", 0), "seed", str(path), integer=True)),
        dtype=data.get("dtype"),
        shard_bytes=parse_size(data["shard_size"]) if "shard_size" in data else DEFAULT_SHARD_BYTES,
        mean=mean,
    )


def _number(value: Any, key: str, where: str, *, integer: bool = False) -> float:
    """A YAML number (``bool`` is not one), else a one-line error."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or (integer and not float(value).is_integer()):
        kind = "an integer" if integer else "a number"
        raise TunelensError(f"{where}: {key} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise TunelensError(f"{where}: {key} must be a finite number, got {value!r}")
    return float(value)


def _no_unknown(data: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise TunelensError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def mask(
    *, components: str | None = None, only: str | None = None, layers: str | None = None, embeddings: bool = True
) -> Selection:
    """The mask of a term from its text options (``--components``, ``--only``, ``--layers``, ``--no-embeddings``
    or a recipe's keys): components and ``only`` groups intersect."""
    sel = Selection(components=parse_components(components), layers=parse_layers(layers))
    sel = intersect(sel, Selection(components=parse_components(only)))
    return replace(sel, embeddings=embeddings)


def _selection(data: dict[str, Any], where: str) -> Selection:
    return mask(
        components=_as_text(data.get("components")),
        only=_as_text(data.get("only")),
        layers=_as_text(data.get("layers")),
        embeddings=bool(data.get("embeddings", True)),
    )


def _scales(value: Any, where: str) -> dict[Component, float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TunelensError(f"{where}: scale: must map components to factors, e.g. {{mlp: 0.5}}")
    return dict(parse_component_scales([f"{k}={v}" for k, v in value.items()]))

"""``Results``: the tidy frames of one tunelens output, built on first access, and its metadata."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from tunelens.errors import TunelensError


class Results:
    """Frames of one output (``diff``, ``subspace``, ``spectrum``, ``activations``, ``evaluate``, ``compare``,
    ``vector``, ``apply``, ``lora``) or of a whole ``study`` (its stages as parts).

    Attributes are pandas DataFrames in long form (one row per observation), built from the output's
    files on first access and cached: ``r.tensors``, ``r.layers``, ``r["layers"]``. ``r.frames`` names
    them; ``r.meta`` is the output's JSON (definitions, inputs, command, timing) as a dict; ``r.kind``
    says what the folder is; a study's stages are ``r.diff``, ``r.activations``, ... (``r.parts``).

    Example:
        >>> import tunelens
        >>> r = tunelens.load("out/demo")
        >>> r.diff.layers.pivot(index="layer", columns="model", values="relative_change")
    """

    def __init__(
        self,
        kind: str,
        meta: Mapping[str, Any],
        builders: Mapping[str, Callable[[], pd.DataFrame]],
        *,
        path: Path | None = None,
        parts: Mapping[str, Results] | None = None,
    ) -> None:
        self.kind = kind
        self.path = path
        self.meta: dict[str, Any] = dict(meta)
        self.parts: dict[str, Results] = dict(parts or {})
        self._builders = dict(builders)
        self._cache: dict[str, pd.DataFrame] = {}

    @property
    def frames(self) -> tuple[str, ...]:
        """Names of the frames this output has."""
        return tuple(self._builders)

    @property
    def definitions(self) -> dict[str, Any]:
        """What every number means (``meta["definitions"]``; empty where the output has none)."""
        defs = self.meta.get("definitions")
        return dict(defs) if isinstance(defs, dict) else {}

    def frame(self, name: str) -> pd.DataFrame:
        """The frame ``name`` (built once; later calls return the same object)."""
        if name not in self._builders:
            raise TunelensError(f"{self.kind} output has no frame {name!r}; it has: {', '.join(self.frames) or 'none'}")
        if name not in self._cache:
            try:
                self._cache[name] = self._builders[name]()
            except (KeyError, IndexError) as exc:  # a file of an older or foreign layout
                where = self.path if self.path is not None else f"{self.kind} result"
                raise TunelensError(f"{where}: cannot build frame {name!r}: missing {exc}") from exc
        return self._cache[name]

    def __getitem__(self, name: str) -> pd.DataFrame:
        return self.frame(name)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._builders:
            return self.frame(name)
        if name in self.parts:
            return self.parts[name]
        have = [*self.frames, *self.parts]
        raise AttributeError(f"{self.kind} results have no {name!r}; frames and parts: {', '.join(have) or 'none'}")

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self.frames, *self.parts})

    def __repr__(self) -> str:
        where = f" {self.path}" if self.path is not None else ""
        parts = f"; parts: {', '.join(self.parts)}" if self.parts else ""
        return f"<tunelens.Results {self.kind}{where}; frames: {', '.join(self.frames) or 'none'}{parts}>"

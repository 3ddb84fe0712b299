"""Plots of the tidy frames (:mod:`tunelens.frames`): the report's figures and a notebook's are this code.

Each function takes a long-form DataFrame and the names of its columns, draws one figure (or into a
given ``ax``) and returns the matplotlib ``Figure``; :func:`png` renders a figure to PNG bytes (Agg)
and closes it. Nothing is averaged here: a cell or point that more than one row claims is an error
(filter the frame first, e.g. to one criterion or to whole-tensor rows).

Example:
    >>> import tunelens
    >>> from tunelens.report import figures
    >>> study = tunelens.load("out/demo")
    >>> figures.per_layer(study.activations.pairs, "distance", hue="pair").savefig("distance.png")
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from tunelens.checkpoints.architectures import COMPONENTS
from tunelens.errors import TunelensError


def _panels(panels: int, width: float, height: float, **kw: Any) -> tuple[Any, Any]:
    """A new figure with ``panels`` axes side by side (Agg backend: nothing is displayed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(width, height), dpi=110, squeeze=False, **kw)
    return fig, axes[0]


def _figure(ax: Any, width: float, height: float) -> tuple[Any, Any]:
    if ax is not None:
        return ax.figure, ax
    fig, axes = _panels(1, width, height)
    return fig, axes[0]


def png(fig: Any) -> bytes:
    """The figure as PNG bytes (tight layout unless it has a layout engine); the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _unique(df: pd.DataFrame, keys: Sequence[str], what: str) -> None:
    dup = df.duplicated(subset=list(keys), keep=False)
    if dup.any():
        first = df[dup].iloc[0]
        where = ", ".join(f"{k}={first[k]}" for k in keys)
        raise TunelensError(f"{what}: {int(dup.sum())} rows share a point ({where}); filter the frame to one row each")


def _order(values: pd.Series) -> list[Any]:
    """Distinct values in order of first appearance (missing values dropped)."""
    return list(dict.fromkeys(v for v in values.tolist() if not pd.isna(v)))


def per_layer(
    df: pd.DataFrame,
    y: str,
    *,
    hue: str = "model",
    x: str = "layer",
    ax: Any = None,
    title: str | None = None,
    ylabel: str | None = None,
    hline: float | None = None,
) -> Any:
    """Paper Fig. 1 / Fig. 2 style: one line of ``y`` over ``x`` (layers) per value of ``hue`` (model or pair),
    in the frame's order; ``hline`` draws a dashed reference line (e.g. the paper's 0.04)."""
    data = df[df[x].notna()]
    _unique(data, [hue, x], f"per_layer({y!r})")
    fig, ax = _figure(ax, 6.4, 3.6)
    for name in _order(data[hue]):
        part = data[data[hue] == name].sort_values(x)
        ax.plot(part[x].astype(float).tolist(), part[y].astype(float).tolist(), marker="o", markersize=3, label=name)
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle="--", linewidth=1, label=f"{hline:g}")
    ax.set_xlabel(x)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(ylabel or y)
    ax.set_title(title or f"{y} per {x}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _columns(values: pd.Series) -> list[Any]:
    present = _order(values)
    known = [c for c in COMPONENTS if c in present]
    return known + [c for c in present if c not in known]


def layer_heatmap(
    df: pd.DataFrame,
    value: str,
    *,
    row: str = "layer",
    col: str = "component",
    facet: str | None = "model",
    title: str | None = None,
    cmap: str = "viridis",
    fmt: str = "{:.3g}",
    annotate: bool | None = None,
) -> Any:
    """Layers × components heatmap of ``value``, one panel per ``facet`` value (model) on one colour scale;
    components in the canonical order (embed, q, k, v, o, gate, up, down, norms...); empty cells grey.
    Cells are annotated with ``fmt`` when the grid is small (or as ``annotate`` says)."""
    import matplotlib

    data = df[df[row].notna()]
    panels = _order(data[facet]) if facet is not None else [None]
    _unique(data, [k for k in (facet, row, col) if k is not None], f"layer_heatmap({value!r})")
    rows = sorted(_order(data[row]))
    cols = _columns(data[col])
    finite = [v for v in data[value].astype(float) if math.isfinite(v)]
    if not finite:
        raise TunelensError(f"layer_heatmap({value!r}): no finite values to draw")
    lo, hi = min(finite), max(finite)
    annotate = len(rows) * len(cols) <= 120 if annotate is None else annotate
    width = 2.2 + (0.5 + 0.4 * len(cols)) * len(panels)
    fig, grid = _panels(len(panels), min(width, 16.0), 1.6 + 0.3 * len(rows), layout="constrained")
    colours = matplotlib.colormaps[cmap].copy().with_extremes(bad="#dddddd")
    im = None
    for ax, panel in zip(grid, panels, strict=True):
        part = data if panel is None else data[data[facet] == panel]
        table = part.pivot(index=row, columns=col, values=value).reindex(index=rows, columns=cols)
        m = table.to_numpy(dtype=float, na_value=math.nan)
        im = ax.imshow(m, aspect="auto", cmap=colours, vmin=lo, vmax=hi if hi > lo else lo + 1e-12)
        ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(rows)), [str(r) for r in rows], fontsize=8)
        ax.set_ylabel(row)
        ax.set_title(str(panel) if panel is not None else value, fontsize=9)
        if annotate:
            for i in range(len(rows)):
                for j in range(len(cols)):
                    if math.isfinite(m[i][j]):
                        ax.text(j, i, fmt.format(m[i][j]), ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=list(grid), fraction=0.046, label=value)
    fig.suptitle(title or f"{value} per {row} and {col}", fontsize=10)
    return fig


def pair_heatmap(
    df: pd.DataFrame,
    value: str = "cosine",
    *,
    a: str = "a",
    b: str = "b",
    diagonal: float = 1.0,
    title: str | None = None,
    note: str | None = None,
    fmt: str = "{:+.3f}",
) -> Any:
    """Paper Fig. 3 style: the symmetric matrix of ``value`` over pairs (one row per unordered pair, as the
    frames hold them), annotated; the diagonal (``diagonal``, 1 for a cosine) is drawn grey so that the
    colour scale (symmetric, ± the largest off-diagonal |value|) shows the pairs."""
    import matplotlib
    import numpy as np

    _unique(df, [a, b], f"pair_heatmap({value!r})")
    names = list(dict.fromkeys([*_order(df[a]), *_order(df[b])]))
    n = len(names)
    if n < 2:
        raise TunelensError(f"pair_heatmap({value!r}): needs at least two names")
    m = np.full((n, n), math.nan)
    np.fill_diagonal(m, diagonal)
    for x, y, v in zip(df[a], df[b], df[value].astype(float), strict=True):
        i, j = names.index(x), names.index(y)
        m[i][j] = m[j][i] = v
    off = [abs(m[i][j]) for i in range(n) for j in range(n) if i != j and math.isfinite(m[i][j])]
    lim = max(max(off, default=1.0), 1e-6)
    fig, ax = _figure(None, 3.2 + 1.0 * n, 1.8 + 0.9 * n)
    shown = np.ma.masked_where(np.eye(n, dtype=bool) | ~np.isfinite(m), m)
    colours = matplotlib.colormaps["coolwarm"].copy().with_extremes(bad="#dddddd")
    im = ax.imshow(shown, cmap=colours, vmin=-lim, vmax=lim)
    ax.set_xticks(range(n), names, rotation=30, ha="right")
    ax.set_yticks(range(n), names)
    for i in range(n):
        for j in range(n):
            if math.isfinite(m[i][j]):
                ax.text(j, i, fmt.format(m[i][j]), ha="center", va="center", fontsize=9)
    ax.set_title(title or value, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    if note:
        fig.text(0.01, 0.01, note, fontsize=7)
    return fig

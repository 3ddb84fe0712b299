"""Matplotlib figures in the paper's shapes (Fig. 1-4 style), rendered to PNG bytes (Agg, no display)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any


def _fig(width: float = 6.4, height: float = 3.6) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    return fig, ax


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def heatmap(names: Sequence[str], matrix: Sequence[Sequence[float]], title: str, note: str) -> bytes:
    """Fig. 3 style: cosine between tuning vectors, annotated; the colour scale spans the off-diagonal values
    (the diagonal, 1 by definition, is drawn grey so it does not wash out the scale)."""
    import numpy as np

    n = len(names)
    fig, ax = _fig(3.2 + 1.0 * n, 1.8 + 0.9 * n)
    m = np.array(matrix, dtype=float)
    off = [abs(m[i][j]) for i in range(n) for j in range(n) if i != j and not np.isnan(m[i][j])] or [1.0]
    lim = max(max(off), 1e-6)
    shown = np.ma.masked_where(np.eye(n, dtype=bool) | np.isnan(m), m)  # undefined (null) cells drawn grey too
    cmap = matplotlib_cmap("coolwarm").with_extremes(bad="#dddddd")
    im = ax.imshow(shown, cmap=cmap, vmin=-lim, vmax=lim)
    ax.set_xticks(range(n), names, rotation=30, ha="right")
    ax.set_yticks(range(n), names)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{m[i][j]:+.3f}", ha="center", va="center", fontsize=9)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.text(0.01, 0.01, note, fontsize=7)
    return _png(fig)


def matplotlib_cmap(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name].copy()


def per_layer(series: Mapping[str, Sequence[float]], title: str, ylabel: str, hline: float | None = None) -> bytes:
    """Fig. 1 / Fig. 2 style: one line per model (or pair) over layers."""
    fig, ax = _fig()
    for name, ys in series.items():
        ax.plot(range(len(ys)), ys, marker="o", markersize=3, label=name)
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle="--", linewidth=1, label=f"{hline:g}")
    ax.set_xlabel("layer")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


Interval = tuple[float, float] | None  # (low, high) of an error bar, absolute; None: no bar


def _yerr(values: Sequence[float], intervals: Sequence[Interval]) -> list[list[float]]:
    """matplotlib's asymmetric ``yerr`` ([below], [above]) from absolute intervals (0 where there is none, and
    where rounding puts a bound an ulp past its value)."""
    below = [max(0.0, v - iv[0]) if iv is not None else 0.0 for v, iv in zip(values, intervals, strict=True)]
    above = [max(0.0, iv[1] - v) if iv is not None else 0.0 for v, iv in zip(values, intervals, strict=True)]
    return [below, above]


def bars_figure(
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    title: str,
    ylabel: str,
    baseline: Sequence[float] | None = None,
    errors: Mapping[str, Sequence[Interval]] | None = None,
) -> Any:
    """Table 4 / Fig. 4 style: bars per group (component or task), one colour per model; ``errors`` draws each
    bar's interval (e.g. its 95% CI) as an error bar."""
    fig, ax = _fig(max(6.4, 0.9 * len(groups) * max(1, len(series)) / 2), 3.6)
    k = max(len(series), 1)
    width = 0.8 / k
    for s, (name, ys) in enumerate(series.items()):
        xs = [g + (s - (k - 1) / 2) * width for g in range(len(groups))]
        yerr = _yerr(ys, errors[name]) if errors and name in errors else None
        ax.bar(xs, ys, width=width, label=name, yerr=yerr, capsize=2 if yerr else 0, error_kw={"linewidth": 0.8})
    if baseline is not None:
        ax.scatter(range(len(groups)), baseline, color="black", marker="_", s=300, zorder=3, label="random baseline")
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    if errors:  # long model descriptions: the legend beside the axes, never over a bar
        fig.set_size_inches(fig.get_size_inches()[0] + 3.2, fig.get_size_inches()[1])
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=8)
    return fig


def grouped_bars(
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    title: str,
    ylabel: str,
    baseline: Sequence[float] | None = None,
    errors: Mapping[str, Sequence[Interval]] | None = None,
) -> bytes:
    """:func:`bars_figure` as PNG bytes."""
    return _png(bars_figure(groups, series, title, ylabel, baseline, errors))


def lines_figure(
    xs: Sequence[float],
    series: Mapping[str, Sequence[float]],
    title: str,
    xlabel: str,
    ylabel: str,
    errors: Mapping[str, Sequence[Interval]] | None = None,
) -> Any:
    """A metric against a scale (the λ sweep): one line per metric, with error bars when ``errors`` is given."""
    fig, ax = _fig()
    for name, ys in series.items():
        yerr = _yerr(ys, errors[name]) if errors and name in errors else None
        ax.errorbar(xs, ys, yerr=yerr, marker="o", capsize=3 if yerr else 0, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def lines(
    xs: Sequence[float],
    series: Mapping[str, Sequence[float]],
    title: str,
    xlabel: str,
    ylabel: str,
    errors: Mapping[str, Sequence[Interval]] | None = None,
) -> bytes:
    """:func:`lines_figure` as PNG bytes."""
    return _png(lines_figure(xs, series, title, xlabel, ylabel, errors))


def ratio_bars(
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    spread: Mapping[str, Sequence[float]],
    title: str,
    ylabel: str,
) -> bytes:
    """Ratios to a random baseline per group, one colour per model, with ± error bars (``spread``) and a
    dashed line at 1 (chance)."""
    fig, ax = _fig(max(6.4, 0.9 * len(groups) * max(1, len(series)) / 2), 3.6)
    k = max(len(series), 1)
    width = 0.8 / k
    for s, (name, ys) in enumerate(series.items()):
        xs = [g + (s - (k - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, ys, width=width, label=name, yerr=list(spread.get(name, [0.0] * len(ys))), capsize=2)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="chance (random τ)")
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _png(fig)


def layer_component_grid(
    panels: Mapping[str, Sequence[Sequence[float]]],
    components: Sequence[str],
    title: str,
    *,
    integer: bool = False,
    cmap: str = "viridis",
) -> bytes:
    """One heatmap per model (rows = layers, columns = components) side by side on a shared colour scale;
    NaN cells (no value) are grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(panels)
    arrays = [np.array(panels[n], dtype=float) for n in names]
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays]) if arrays else np.array([])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    layers = max((a.shape[0] for a in arrays), default=1)
    fig, axes = plt.subplots(1, len(names), figsize=(1.2 + 2.2 * len(names), 1.4 + 0.16 * layers), dpi=110,
                             squeeze=False, sharey=True)  # fmt: skip
    cm = matplotlib_cmap(cmap).with_extremes(bad="#dddddd")
    im = None
    for ax, name, a in zip(axes[0], names, arrays, strict=True):
        im = ax.imshow(np.ma.masked_invalid(a), aspect="auto", cmap=cm, vmin=lo, vmax=max(hi, lo + 1e-12))
        ax.set_xticks(range(len(components)), components, rotation=90, fontsize=7)
        ax.set_title(name, fontsize=9)
        if integer and a.size <= 400:
            for (i, j), v in np.ndenumerate(a):
                if np.isfinite(v) and v > 0:
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=6, color="white")
    axes[0][0].set_ylabel("layer")
    fig.suptitle(title, fontsize=10)
    if im is not None:
        fig.colorbar(im, ax=list(axes[0]), fraction=0.03)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()

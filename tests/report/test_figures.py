"""The plotting helpers draw exactly the frame's values (read back from the matplotlib artists)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tunelens.errors import TunelensError
from tunelens.frames.tidy import frame
from tunelens.report import figures

LAYERS = frame(
    [{"model": m, "layer": layer, "relative_change": 0.01 * (i + 1) + 0.001 * layer}
     for i, m in enumerate(["med", "math"]) for layer in (2, 0, 1)]
)  # fmt: skip


def test_per_layer_lines_are_the_frame() -> None:
    fig = figures.per_layer(LAYERS, "relative_change", hline=0.04)
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert list(lines) == ["med", "math", "0.04"]  # frame order, then the reference line
    for name in ("med", "math"):
        part = LAYERS[LAYERS["model"] == name].sort_values("layer")
        assert list(lines[name].get_xdata()) == [0.0, 1.0, 2.0]
        assert list(lines[name].get_ydata()) == list(part["relative_change"])
    assert figures.png(fig)[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_point_claimed_twice_is_an_error_not_a_mean() -> None:
    twice = pd.concat([LAYERS, LAYERS.iloc[:1]], ignore_index=True)
    with pytest.raises(TunelensError, match="share a point"):
        figures.per_layer(twice, "relative_change")


def test_layer_heatmap_cells_and_order() -> None:
    rows = [{"model": m, "layer": layer, "component": c, "v": k * 10 + layer + (0.5 if m == "b" else 0.0)}
            for m in ("a", "b") for layer in (0, 1) for k, c in enumerate(["up", "q", "attn_norm"])]  # fmt: skip
    df = frame(rows[:-1])  # model b, layer 1, attn_norm missing
    fig = figures.layer_heatmap(df, "v")
    panels = [ax for ax in fig.axes if ax.get_title() in ("a", "b")]
    assert [ax.get_title() for ax in panels] == ["a", "b"]
    assert [t.get_text() for t in panels[0].get_xticklabels()] == ["q", "up", "attn_norm"]  # canonical order
    a = panels[0].images[0].get_array()
    assert np.array_equal(np.asarray(a), np.array([[10.0, 0.0, 20.0], [11.0, 1.0, 21.0]]))
    b = panels[1].images[0].get_array()
    assert math.isnan(float(np.asarray(b, dtype=float)[1][2]))
    assert (
        panels[0].images[0].get_clim() == panels[1].images[0].get_clim() == (0.0, 21.0)
    )  # one scale: a's max (b's 21.5 is the missing cell)
    with pytest.raises(TunelensError, match="share a point"):
        figures.layer_heatmap(df, "v", facet=None)  # two models in one panel


def test_pair_heatmap_is_symmetric_with_a_grey_diagonal() -> None:
    pairs = frame([{"a": "med", "b": "math", "cosine": 0.02}, {"a": "med", "b": "code", "cosine": -0.01},
                   {"a": "math", "b": "code", "cosine": 0.005}])  # fmt: skip
    fig = figures.pair_heatmap(pairs, "cosine", note="null std 1e-4")
    img = fig.axes[0].images[0]
    m = np.ma.getdata(img.get_array())
    mask = np.ma.getmaskarray(img.get_array())
    assert mask.tolist() == np.eye(3, dtype=bool).tolist()
    assert m[0][1] == m[1][0] == 0.02 and m[0][2] == m[2][0] == -0.01 and m[1][2] == m[2][1] == 0.005
    assert img.get_clim() == (-0.02, 0.02)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["med", "math", "code"]

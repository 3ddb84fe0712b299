"""``tunelens.load`` of a whole study: its stages as parts, the evaluate runs merged with a ``run`` column,
every frame equal to the stage files; and the report's figures drawn from those same frames."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import tunelens
from tunelens.report import figures
from tunelens.report.html import build_report


def test_study_parts_and_frames(study: Path) -> None:
    r = tunelens.load(study)
    state = json.loads((study / "study.json").read_text())
    assert r.kind == "study" and r.meta == state
    assert list(r.parts) == ["diff", "subspace", "spectrum", "activations", "evaluate"]
    assert list(r.stages["stage"]) == list(state["stages"])
    assert list(r.stages["seconds"]) == [s["seconds"] for s in state["stages"].values()]
    assert list(r.models["model"]) == ["base", "med", "math"] and list(r.models["role"]) == ["base", "tuned", "tuned"]
    for stage in ("diff", "subspace", "spectrum", "activations"):
        alone = tunelens.load(study / stage)
        for name in alone.frames:
            pd.testing.assert_frame_equal(r.parts[stage].frame(name), alone.frame(name), check_exact=True)


def test_study_evaluate_runs_merged(study: Path) -> None:
    ev = tunelens.load(study).evaluate
    runs = sorted(p.name for p in (study / "evaluate").iterdir())
    assert list(dict.fromkeys(ev.results["run"])) == runs == list(ev.parts)
    for run in runs:
        rows = json.loads((study / "evaluate" / run / "results.json").read_text())["results"]
        part = ev.results[ev.results["run"] == run]
        assert len(part) == len(rows)
        for (_, got), want in zip(part.iterrows(), rows, strict=True):
            assert all(pd.isna(got[k]) if v is None else got[k] == v for k, v in want.items())
        n_scores = sum(len(json.loads(line)["scores"]) for line in (study / "evaluate" / run / "samples.jsonl").open())
        assert (ev.samples["run"] == run).sum() == n_scores


@pytest.fixture()
def drawn(study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, Any]]:
    """Rebuild the report of a copy of the study, keeping every figure the report renders."""
    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    kept: dict[str, Any] = {}
    real = figures.png

    def keep(fig: Any) -> bytes:
        title = fig.get_suptitle() or fig.axes[0].get_title()
        kept[title] = fig
        return real(fig)

    monkeypatch.setattr(figures, "png", keep)
    build_report(copy)
    return copy, kept


def test_report_figures_are_drawn_from_the_frames(drawn: tuple[Path, dict[str, Any]]) -> None:
    folder, kept = drawn
    r = tunelens.load(folder)
    assert set(kept) >= {
        "relative change per layer", "relative change ‖τ‖ / ‖θ_pre‖ per layer and component",
        "cosine between tuning vectors (without embeddings)", "fraction of active FFN neurons",
        "normalized edit distance of activation patterns",
    }  # fmt: skip

    def lines(title: str) -> dict[str, list[float]]:
        ax = kept[title].axes[0]
        return {ln.get_label(): list(ln.get_ydata()) for ln in ax.get_lines()}

    layers = r.diff.layers
    drawn_rc = lines("relative change per layer")
    summary = json.loads((folder / "diff" / "summary.json").read_text())
    for m in summary["models"]:  # the frame and the JSON agree, and the figure shows exactly them
        assert drawn_rc[m["name"]] == list(layers[layers["model"] == m["name"]]["relative_change"])
        assert drawn_rc[m["name"]] == [rec["relative_change"] for rec in m["by_layer"]]
    acts = json.loads((folder / "activations" / "activations.json").read_text())
    drawn_frac = lines("fraction of active FFN neurons")
    assert {m["name"]: m["fraction_active"] for m in acts["models"]} == drawn_frac
    drawn_dist = lines("normalized edit distance of activation patterns")
    assert {f"{p['a']}↔{p['b']}": p["distance"] for p in acts["pairs"]} == {
        k: v for k, v in drawn_dist.items() if k != "0.04"
    }
    heat = kept["cosine between tuning vectors (without embeddings)"].axes[0].images[0].get_array()
    matrix = np.array(summary["vector_cosine"]["without_embeddings"]["matrix"])
    off = ~np.eye(len(matrix), dtype=bool)
    assert np.array_equal(np.ma.getdata(heat)[off], matrix[off])
    cells = kept["relative change ‖τ‖ / ‖θ_pre‖ per layer and component"]
    lc = r.diff.layer_components
    for ax in cells.axes[:-1]:  # one panel per model, then the colour bar
        part = lc[lc["model"] == ax.get_title()]
        cols = [t.get_text() for t in ax.get_xticklabels()]
        want = part.pivot(index="layer", columns="component", values="relative_change")[cols].to_numpy()
        assert np.array_equal(np.asarray(ax.images[0].get_array(), dtype=float), want)

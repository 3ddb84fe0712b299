"""The report's evaluation section reads the tests: words from the recipe, error bars at the intervals, and a
difference called a change only when its Holm-adjusted p is below 0.05."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from tunelens.evaluation.compare import COMPARISON_COLUMNS
from tunelens.report import plots
from tunelens.report.evaluation import describe_models, edit_words, evaluation


def test_edited_models_are_described_from_their_recipe_not_their_names(tmp_path: Path) -> None:
    cfg = {
        "base": "b0",
        "models": [{"name": "b0"}, {"name": "medical"}, {"name": "math"}],
        "edits": [  # names say nothing: the words must come from target and terms
            {"name": "e1", "target": "pre", "terms": {"medical": -1.0}},
            {"name": "e2", "target": "pre", "terms": {"medical": 1.0, "math": 1.0}},
            {"name": "e3", "target": "medical", "terms": {"medical": -1.0}},
            {"name": "e4", "target": "pre", "terms": {"math": 0.5}},
            {"name": "e5", "target": "pre", "terms": {"medical": 1.0, "math": -1.0}},
        ],
        "sweep": {"vector": "math", "scales": [-0.5, 0, 2]},
    }
    (tmp_path / "study.json").write_text(json.dumps({"config": cfg}))
    words = describe_models(tmp_path)
    assert words["b0"] == ("θ_pre", "the pre-trained base model")
    assert words["math"][0] == "θ_math" and "fine-tuned from the base" in words["math"][1]
    assert words["e1"] == ("θ_pre − τ_medical", "negation of the medical vector")
    assert words["e2"] == (
        "θ_pre + τ_medical + τ_math",
        "cross-domain addition of the medical and math vectors (paper Fig. 4)",
    )
    assert words["e3"][0] == "θ_medical − τ_medical" and "θ_pre again" in words["e3"][1]
    assert words["e4"] == ("θ_pre + 0.5·τ_math", "the math vector scaled by 0.5 added")
    assert words["e5"][1] == "arithmetic of the medical and math vectors"
    assert words["sweep-math sweep=-0.5"] == (
        "θ_pre − 0.5·τ_math",
        "λ sweep: negation of the math vector, scaled by 0.5",
    )
    assert words["sweep-math sweep=0"][0] == "θ_pre" and words["sweep-math sweep=2"][0] == "θ_pre + 2·τ_math"
    assert edit_words("pre", {"code": -2.0}) == ("θ_pre − 2·τ_code", "negation of the code vector, scaled by 2")


def test_error_bars_span_the_intervals() -> None:
    from matplotlib.container import ErrorbarContainer

    series = {"base": [0.5, 0.25], "ft": [0.75, 0.5]}
    errors: dict[str, list[Any]] = {"base": [(0.4, 0.6), (0.1, 0.45)], "ft": [(0.6, 0.8), None]}
    fig = plots.bars_figure(["t1", "t2"], series, "title", "score", errors=errors)
    bars = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2
    for container, name in zip(bars, series, strict=True):
        segments = container.lines[2][0].get_segments()  # one vertical segment per bar: (x, low) → (x, high)
        for seg, iv, v in zip(segments, errors[name], series[name], strict=True):
            lo, hi = iv if iv is not None else (v, v)
            assert (seg[0][1], seg[1][1]) == pytest.approx((lo, hi))
    import matplotlib.pyplot as plt

    plt.close(fig)


def _planted_study(folder: Path, p_adjusted: list[float]) -> None:
    """A study folder with two evaluate runs and a comparisons.csv whose adjusted p-values are given."""
    cfg = {"base": "base", "models": [{"name": "base"}, {"name": "med"}],
           "edits": [{"name": "x", "target": "pre", "terms": {"med": -1.0}}]}  # fmt: skip
    (folder / "study.json").write_text(json.dumps({"config": cfg}))
    for run, acc in (("base", 0.5), ("med", 0.9), ("x", 0.45)):
        (folder / "evaluate" / run).mkdir(parents=True)
        rows = [{"model": run, "variant": "as_loaded", "task": "t", "metric": m, "value": v, "n": 40, "stderr": 0.05,
                 "ci_low": v - 0.1, "ci_high": v + 0.1} for m, v in (("acc", acc), ("gold_prob", acc / 2))]  # fmt: skip
        (folder / "evaluate" / run / "results.json").write_text(json.dumps({"results": rows}))
    (folder / "comparisons").mkdir()
    with (folder / "comparisons" / "comparisons.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(COMPARISON_COLUMNS))
        w.writeheader()
        for (a, b, metric, diff), p in zip(
            [("base", "med", "acc", 0.4), ("base", "med", "gold_prob", 0.2), ("base", "x", "acc", -0.05)], p_adjusted,
            strict=True,
        ):  # fmt: skip
            w.writerow({"task": "t", "metric": metric, "a": a, "b": b, "n": 40, "mean_a": 0.5, "mean_b": 0.5 + diff,
                        "diff": diff, "ci_low": diff - 0.1, "ci_high": diff + 0.1, "p_value": p / 3,
                        "p_adjusted": p, "test": "mcnemar_exact", "a_only": 1, "b_only": 5})  # fmt: skip


@pytest.mark.parametrize(("p_adjusted", "changes"), [([0.001, 0.01, 0.5], 2), ([0.051, 0.2, 0.049], 1), ([1, 1, 1], 0)])
def test_the_text_calls_a_difference_a_change_only_below_alpha(
    tmp_path: Path, p_adjusted: list[float], changes: int
) -> None:
    _planted_study(tmp_path, p_adjusted)
    section = evaluation(tmp_path)
    assert section is not None
    assert section.reading.startswith(f"{changes} of 3 paired differences are changes")
    headline = section.body.split('<table id="comparisons">')[1].split("</table>")[0]
    assert headline.count("<td>change</td>") == changes  # acc and gold_prob are both headline metrics here
    assert headline.count("<td>no detectable change</td>") == 3 - changes
    assert ("med vs base" in section.reading.split("No headline change")[0]) == (min(p_adjusted[:2]) < 0.05)
    assert "θ_pre − τ_med: negation of the med vector" in section.body  # the edit, in words, where it appears
    assert '<table id="comparisons">' in section.body and "Error bars: 95% intervals" in section.body
    assert "fig4_evaluation" in section.figures


def test_no_comparisons_means_no_change_is_claimed(tmp_path: Path) -> None:
    _planted_study(tmp_path, [0.001, 0.001, 0.001])
    (tmp_path / "comparisons" / "comparisons.csv").unlink()
    section = evaluation(tmp_path)
    assert section is not None and "no difference is called a change" in section.reading
    assert "change</td>" not in section.body

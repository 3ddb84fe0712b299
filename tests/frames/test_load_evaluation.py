"""``tunelens.load`` on evaluate and compare folders: results, samples and comparisons equal the files;
``EvalResult.to_pandas()`` equals the loaded folder (and its in-memory samples the written ones)."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import tunelens
from tunelens.errors import TunelensError

COMPARISON_HEADER = (
    "task,metric,a,b,n,mean_a,mean_b,diff,ci_low,ci_high,p_value,p_adjusted,test,a_only,b_only"  # DESIGN.md §6
)
COMPARISON_ROWS = [
    "organs,acc,sweep=0,sweep=1,5,0.2,0.6,0.4,0.0,0.8,0.125,0.25,mcnemar_exact,0,2",
    "organs,acc_norm,sweep=0,sweep=1,5,0.4,0.4,0.0,-0.4,0.4,1.0,1.0,mcnemar_exact,1,1",
    "organs,logprob_gold,sweep=0,sweep=1,5,-1.25,-0.5,0.75,0.1,1.3,0.0312,,paired_bootstrap,,",
]


def test_results_and_samples_equal_the_files(outputs: Any, check_csv: Callable[..., None]) -> None:
    r = tunelens.load(outputs.evaluate)
    summary = json.loads((outputs.evaluate / "results.json").read_text())
    assert r.kind == "evaluate" and r.meta == summary
    assert set(r.results["variant"]) == {"sweep=0", "sweep=1"}
    assert len(r.results) == len(summary["results"]) == 2 * 6  # acc, acc_norm, acc_bytes, gold_loglik|prob|margin
    for i, row in enumerate(summary["results"]):
        for k, v in row.items():
            assert pd.isna(r.results[k].iloc[i]) if v is None else r.results[k].iloc[i] == v, (row, k)
    check_csv(r.results[list(csv.DictReader((outputs.evaluate / "results.csv").open()).fieldnames or [])],
              outputs.evaluate / "results.csv")  # fmt: skip
    samples = [json.loads(line) for line in (outputs.evaluate / "samples.jsonl").read_text().splitlines()]
    expected = [(s["variant"], s["task"], s["id"], m, v) for s in samples for m, v in s["scores"].items()]
    got = list(r.samples[["variant", "task", "id", "metric", "score"]].itertuples(index=False, name=None))
    assert got == expected and len(got) == 2 * 5 * 6  # variants × items × metrics
    assert list(r.tasks["task"]) == ["organs"] and r.tasks["kind"].iloc[0] == "multiple_choice"
    assert list(r.timing["items"]) == [t["items"] for t in summary["timing"]]


def test_evaluate_to_pandas(outputs: Any, frames_equal: Callable[..., None]) -> None:
    written, memory = outputs.results["evaluate"], outputs.results["evaluate_memory"]
    loaded = tunelens.load(outputs.evaluate)
    assert "samples" not in written.to_pandas().frames  # written to samples.jsonl, not kept in memory
    frames_equal(written.to_pandas(), loaded, skip=("samples",))
    pd.testing.assert_frame_equal(memory.to_pandas().samples, loaded.samples, check_exact=True)


def test_comparisons_beside_results_and_in_a_compare_folder(
    outputs: Any, tmp_path: Path, check_csv: Callable[..., None]
) -> None:
    """The sweep's comparisons (results.json, as comparisons.csv) and a ``tunelens compare`` folder load as the
    same DESIGN.md §6 frame."""
    from tunelens import api

    r = tunelens.load(outputs.evaluate)
    assert "comparisons" in r.frames
    check_csv(r.comparisons, outputs.evaluate / "comparisons.csv")
    assert list(r.comparisons.columns) == COMPARISON_HEADER.split(",")
    assert str(r.comparisons["a_only"].dtype) == "Int64"
    assert set(r.comparisons["a"]) == {"sweep=0"} and set(r.comparisons["b"]) == {"sweep=1"}

    cmp_dir = tmp_path / "cmp"
    api.compare([outputs.evaluate], out=cmp_dir)
    c = tunelens.load(cmp_dir)
    assert c.kind == "compare" and c.frames == ("comparisons",)
    check_csv(c.comparisons, cmp_dir / "comparisons.csv")
    assert set(c.comparisons["a"]) == {"eval sweep=0"}  # compare names a variant by its run's folder
    cols = ["task", "metric", "n", "mean_a", "mean_b", "diff", "test"]
    pd.testing.assert_frame_equal(c.comparisons[cols], r.comparisons[cols])

    # the rows in results.json take precedence over a comparisons.csv beside it (the JSON is the run's record)
    run = tmp_path / "run"
    shutil.copytree(outputs.evaluate, run)
    (run / "comparisons.csv").write_text("\n".join([COMPARISON_HEADER, *COMPARISON_ROWS]) + "\n")
    pd.testing.assert_frame_equal(tunelens.load(run).comparisons, r.comparisons)
    summary = json.loads((run / "results.json").read_text())
    del summary["comparisons"]
    (run / "results.json").write_text(json.dumps(summary))
    check_csv(tunelens.load(run).comparisons, run / "comparisons.csv")


def test_bad_paths_are_one_clear_error(tmp_path: Path, outputs: Any) -> None:
    with pytest.raises(TunelensError, match="no such output folder"):
        tunelens.load(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(TunelensError, match="not a tunelens output folder"):
        tunelens.load(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "results.json").write_text("{not json")
    with pytest.raises(TunelensError, match="cannot read"):
        tunelens.load(broken)
    other = tmp_path / "other"
    other.mkdir()
    (other / "tunelens.json").write_text('{"kind": "mystery"}')
    with pytest.raises(TunelensError, match="unknown kind 'mystery'"):
        tunelens.load(other)
    r = tunelens.load(outputs.evaluate)
    with pytest.raises(TunelensError, match="no frame 'tensors'"):
        r.frame("tensors")
    with pytest.raises(AttributeError, match="frames and parts: results"):
        _ = r.tensors
    assert "results" in dir(r) and repr(r).startswith("<tunelens.Results evaluate")


def test_a_file_missing_a_key_is_one_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "activations.json").write_text(json.dumps({"models": [{"fraction_active": [0.5]}]}))
    r = tunelens.load(folder)
    with pytest.raises(TunelensError, match="cannot build frame 'layers': missing 'name'"):
        _ = r.layers

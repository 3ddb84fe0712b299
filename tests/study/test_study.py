"""`tunelens study` end to end on tiny models: every stage's files against their schema, resume, the report."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tunelens.cli import cli
from tunelens.errors import TunelensError
from tunelens.evaluation.compare import COMPARISON_COLUMNS
from tunelens.study.config import StudyConfig
from tunelens.study.pipeline import run_study

N_ITEMS = 6  # conftest.MCQA


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def test_every_stage_file_matches_its_schema(study: Path) -> None:
    d = json.loads((study / "diff" / "summary.json").read_text())
    assert [m["name"] for m in d["models"]] == ["med", "math"]
    for m in d["models"]:
        assert {"global", "by_component", "by_layer"} <= set(m)
        assert 0.99 < m["global"]["cosine"] < 1 and _finite(m["global"]["relative_change"])
    assert d["vector_cosine"]["names"] == ["med", "math"] and "definitions" in d
    rows = _csv(study / "diff" / "tensors.csv")
    cols = "model tensor layer component shape numel cosine one_minus_cosine relative_change base_norm tuned_norm"
    assert list(rows[0]) == [*cols.split(), "delta_norm"]

    ss = _csv(study / "subspace" / "subspace.csv")
    want = {"model", "tensor", "layer", "component", "head", "rows", "cols", "k", "energy", "share_left",
            "share_right", "share_both", "baseline_left", "baseline_right", "baseline_both"}  # fmt: skip
    assert want <= set(ss[0]) and {r["model"] for r in ss} == {"med", "math"}
    criteria = ("energy=0.5", "energy=0.9")  # the config's two energies: every model has rows under both
    assert {(r["model"], r["criterion"]) for r in ss} == {(m, c) for m in ("med", "math") for c in criteria}
    assert all(0 <= float(r["share_left"]) <= 1 + 1e-9 for r in ss)
    assert "definitions" in json.loads((study / "subspace" / "summary.json").read_text())

    a = json.loads((study / "activations" / "activations.json").read_text())
    assert [m["name"] for m in a["models"]] == ["base", "med", "math"]
    n_layers = len(d["models"][0]["by_layer"])
    assert all(len(m["fraction_active"]) == n_layers and m["tokens"] == 256 for m in a["models"])
    assert {(p["a"], p["b"]) for p in a["pairs"]} == {("base", "med"), ("base", "math"), ("med", "math")}
    assert all(0 <= p["mean"] <= 1 for p in a["pairs"])

    names = {p.name for p in (study / "evaluate").iterdir()}
    assert names == {"base", "med", "math", "med-negated", "med-from-ft", "med+math", "sweep-med"}
    for n in names:
        r = json.loads((study / "evaluate" / n / "results.json").read_text())
        accs = [x for x in r["results"] if x["metric"] == "acc"]
        assert accs and all(x["n"] == N_ITEMS and 0 <= x["value"] <= 1 for x in accs)
        lines = (study / "evaluate" / n / "samples.jsonl").read_text().splitlines()
        assert len(lines) >= N_ITEMS
    sweep = json.loads((study / "evaluate" / "sweep-med" / "results.json").read_text())
    assert len({x["variant"] for x in sweep["results"]}) == 3

    assert list(_csv(study / "comparisons" / "comparisons.csv")[0]) == list(COMPARISON_COLUMNS)

    state = json.loads((study / "study.json").read_text())
    assert all(s["state"] == "done" for s in state["stages"].values())
    assert set(state["inputs"]) == {"base", "med", "math"}


def test_edits_are_evaluated_on_the_edited_weights(study: Path) -> None:
    """The sweep at λ=0 is the base and at λ=1 the fine-tune: their log-likelihoods must match those runs."""

    def lls(name: str, variant: str | None = None) -> list[float]:
        rows = [json.loads(x) for x in (study / "evaluate" / name / "samples.jsonl").read_text().splitlines()]
        return [x for r in rows if variant is None or r.get("variant") == variant for x in r["loglikelihoods"]]

    sweep_variants = {json.loads(x).get("variant") for x in (study / "evaluate" / "sweep-med" / "samples.jsonl")
                      .read_text().splitlines()}  # fmt: skip
    v0 = next(v for v in sweep_variants if v and v.endswith("=0"))
    v1 = next(v for v in sweep_variants if v and v.endswith("=1"))
    assert lls("sweep-med", v0) == pytest.approx(lls("base"), abs=1e-6)
    assert lls("sweep-med", v1) == pytest.approx(lls("med"), abs=1e-4)
    assert lls("med-negated") != pytest.approx(lls("base"), abs=1e-6)


def test_report_has_every_section_and_figure(study: Path) -> None:
    page = (study / "report.html").read_text()
    for key in ("weights", "vectors", "subspace", "activations", "evaluation"):
        assert f'<section id="{key}">' in page
    assert page.count("data:image/png;base64,") >= 6
    figs = {p.name for p in (study / "figures").glob("*.png")}
    assert {"fig1_fraction_active.png", "fig2_edit_distance.png", "fig3_vector_cosine.png",
            "table4_subspace_alignment.png", "fig4_evaluation.png", "fig4_sweep.png"} <= figs  # fmt: skip
    assert all((study / "figures" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in figs)


def test_resume_reuses_done_stages_and_reruns_changed_ones(inputs: Path, study: Path, tmp_path: Path) -> None:
    cfg = StudyConfig.from_yaml(inputs / "study.yaml")
    runs = run_study(cfg, study, resume=True, quiet=True, report=False)
    assert runs and all(r.reused for r in runs)
    data = yaml.safe_load((inputs / "study.yaml").read_text())
    data["evaluate"]["limit"] = 3
    changed = StudyConfig.from_dict(data, root=inputs)
    runs = run_study(changed, study, resume=True, quiet=True, report=False)
    rerun = {r.name for r in runs if not r.reused}
    assert rerun == {r.name for r in runs if r.name.startswith("evaluate/")} | {"comparisons"}
    assert {"diff", "subspace", "activations"} <= {r.name for r in runs if r.reused}


def test_interrupted_stage_is_rerun_on_resume(inputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = yaml.safe_load((inputs / "study.yaml").read_text())
    data.update(stages=["diff", "activations"], edits=[], sweep=None)
    cfg = StudyConfig.from_dict(data, root=inputs)
    out = tmp_path / "s"
    import tunelens.api as api

    real = api.activations

    def boom(*a: Any, **k: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "activations", boom)
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, out, quiet=True, report=False)
    state = json.loads((out / "study.json").read_text())
    assert state["stages"]["diff"]["state"] == "done" and state["stages"]["activations"]["state"] == "running"
    assert not (out / "activations").exists()
    monkeypatch.setattr(api, "activations", real)
    runs = {r.name: r.reused for r in run_study(cfg, out, resume=True, quiet=True, report=False)}
    assert runs == {"diff": True, "activations": False}
    with pytest.raises(TunelensError, match="--resume"):
        run_study(cfg, out, quiet=True, report=False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "unknown key"),
        ({"evaluate": {"limt": 3}}, "unknown key"),
        ({"base": "nobody"}, "base 'nobody' is not one of the models"),
        ({"models": "PATHS"}, "does not exist"),
        ({"models": "PARENT"}, "has parent 'other'"),
        ({"edits": [{"name": "x", "terms": {"med": "minus one"}}]}, "must be a number"),
        ({"edits": [{"name": "x", "terms": {"ghost": 1}}]}, "not a tuned model"),
        ({"sweep": {"vector": "med", "scales": [0, "big"]}}, "must be a number"),
        ({"stages": ["diff", "vibes"]}, "unknown stage"),
        ({"subspace": {"tau_spectrum": "yes"}}, "must be true or false"),
    ],
)
def test_config_rejects_bad_input(inputs: Path, change: dict[str, Any], message: str) -> None:
    data = yaml.safe_load((inputs / "study.yaml").read_text())
    if change.get("models") == "PATHS":
        data["models"][1]["path"] = "/nonexistent/model"
    elif change.get("models") == "PARENT":
        data["models"][1]["parent"] = "other"
    else:
        data.update(change)
    with pytest.raises(TunelensError, match=message):
        StudyConfig.from_dict(data, root=inputs)


def test_cli_gives_one_error_line(inputs: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    data = yaml.safe_load((inputs / "study.yaml").read_text())
    data["lambda"] = 1
    for m in data["models"]:
        m["path"] = str(Path(m["path"]))
    bad.write_text(yaml.safe_dump(data))
    res = CliRunner().invoke(cli, ["study", str(bad), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and res.output.startswith("Error: study: unknown key(s) in study: lambda")
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    res = CliRunner().invoke(cli, ["report", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "no such study folder" in res.output


def test_sweep_figure_reuses_base_finetune_and_negation(tmp_path: Path) -> None:
    """λ = 0, 1, −1 come from the base, the fine-tune and a −τ edit of the base when the sweep skipped them."""
    from tunelens.report.sections import sweep_anchors

    cfg = {
        "base": "base",
        "sweep": {"vector": "med", "scales": [0.5, 1.5]},
        "edits": [
            {"name": "med-negated", "target": "pre", "terms": {"med": -1.0}},
            {"name": "med-from-ft", "target": "med", "terms": {"med": -1.0}},  # not on the base: not λ = −1
            {"name": "half", "target": "pre", "terms": {"med": -0.5}},
        ],
    }
    (tmp_path / "study.json").write_text(json.dumps({"config": cfg}))
    labels = {"base", "med", "med-negated", "med-from-ft", "half", "sweep-med sweep=0.5"}
    assert sweep_anchors(tmp_path, labels, {0.5, 1.5}) == [(0.0, "base"), (1.0, "med"), (-1.0, "med-negated")]
    assert sweep_anchors(tmp_path, labels, {0.0, 1.0, 0.5}) == [(-1.0, "med-negated")]  # the sweep ran 0 and 1
    assert sweep_anchors(tmp_path, {"base"}, {0.5}) == [(0.0, "base")]  # only what was evaluated
    (tmp_path / "study.json").unlink()
    assert sweep_anchors(tmp_path, labels, {0.5}) == []


def test_study_compares_what_each_model_was_made_from(study: Path) -> None:
    """Fine-tunes vs the base; edits vs the model they were made from and vs the base; sweep points vs λ = 0;
    every task and per-item metric of each pair, Holm over the whole file; the rows equal `tunelens compare`'s."""
    rows = _csv(study / "comparisons" / "comparisons.csv")
    pairs = list(dict.fromkeys((r["a"], r["b"]) for r in rows))
    assert pairs == [
        ("base", "med"), ("base", "math"), ("base", "med-negated"), ("med", "med-from-ft"), ("base", "med-from-ft"),
        ("base", "med+math"), ("sweep-med sweep=0", "sweep-med sweep=-1"), ("sweep-med sweep=0", "sweep-med sweep=1"),
    ]  # fmt: skip
    assert {r["metric"] for r in rows} >= {"acc", "acc_norm", "gold_loglik", "gold_prob", "gold_margin"}
    n = json.loads((study / "evaluate" / "base" / "results.json").read_text())["results"][0]["n"]
    assert {r["n"] for r in rows} == {str(n)}  # every item paired (a test above may have rerun with --limit)
    from tunelens.evaluation.stats import holm

    assert [float(r["p_adjusted"]) for r in rows] == pytest.approx(holm([float(r["p_value"]) for r in rows]))
    # λ = 0 of the sweep is the base bit for bit: no item differs
    zero = [r for r in rows if r["a"] == "sweep-med sweep=0" and r["metric"] == "acc"]
    assert zero and all(r["test"] == "mcnemar_exact" for r in zero)
    # `tunelens compare` on two of the study's runs gives the same row
    out = study.parent / "cmp-med"
    res = CliRunner().invoke(cli, ["compare", str(study / "evaluate" / "base"), str(study / "evaluate" / "med"),
                                   "-o", str(out), "-q"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert _csv(out / "comparisons.csv") == [{**r, "p_adjusted": r2["p_adjusted"]}
                                            for r, r2 in zip([r for r in rows if r["b"] == "med"],
                                                             _csv(out / "comparisons.csv"), strict=True)]  # fmt: skip

"""bench/paper_table.py: every verdict computed from the study's files, and its power computation against scipy."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
from scipy import stats as sps

BENCH = Path(__file__).resolve().parents[2] / "bench" / "paper_table.py"


@pytest.fixture(scope="module")
def paper_table() -> ModuleType:
    spec = importlib.util.spec_from_file_location("paper_table", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["paper_table"] = module
    spec.loader.exec_module(module)
    return module


def _power_by_enumeration(n: int, discordance: float, diff: float, alpha: float) -> float:
    """Independent: every (a_only, b_only) outcome of a trinomial, rejected where scipy's binomtest rejects."""
    p_b = (discordance + diff) / 2
    p_a = discordance - p_b
    total = 0.0
    for a in range(n + 1):
        for b in range(n + 1 - a):
            if a + b and sps.binomtest(b, a + b).pvalue < alpha:
                total += sps.multinomial.pmf([a, b, n - a - b], n, [p_a, p_b, 1 - discordance])
    return total


@pytest.mark.parametrize(
    ("n", "disc", "diff", "alpha"), [(16, 0.3, 0.2, 0.05), (18, 0.25, 0.1, 0.01), (10, 0.5, 0.0, 0.05)]
)
def test_mcnemar_power_equals_enumeration_with_scipy(
    paper_table: ModuleType, n: int, disc: float, diff: float, alpha: float
) -> None:
    assert paper_table.mcnemar_power(n, disc, diff, alpha) == pytest.approx(
        _power_by_enumeration(n, disc, diff, alpha), abs=1e-9
    )


def test_smallest_detectable_difference_is_the_first_with_enough_power(paper_table: ModuleType) -> None:
    n, disc = 40, 0.3
    d = paper_table.smallest_detectable(n, disc, 0.05)
    assert paper_table.mcnemar_power(n, disc, d, 0.05) >= 0.8 > paper_table.mcnemar_power(n, disc, d - 1 / n, 0.05)
    assert paper_table.smallest_detectable(100, disc, 0.05) < d  # more items, smaller detectable difference


@pytest.mark.slow
def test_table_verdicts_follow_the_comparisons(paper_table: ModuleType, tmp_path: Path) -> None:
    """The demo's study on the tiny zoo: every evaluation verdict counts paired comparisons by their adjusted p."""
    from tunelens.study.demo import demo_config
    from tunelens.study.pipeline import run_study
    from tunelens.zoo import ZooSpec, build

    zoo = build(ZooSpec.tiny(), tmp_path / "zoo", quiet=True)
    run_study(demo_config(zoo), tmp_path / "study", quiet=True, report=False)
    study = paper_table.Study(tmp_path / "study")
    assert [d for d, _ in study.negations()] == list(zoo.tuned)  # read from the recipe
    assert study.additions() == [(list(zoo.tuned)[:2], "medical+math")]
    assert study.domain["hpo_term"] == "medical" and study.domain["heldout_code"] == "code"
    rows, comps = paper_table.evaluation_rows(study)
    assert [r[0] for r in rows] == [
        "negation collapses in-domain accuracy and compliance",
        "addition good on both domains",
    ]
    changes = [c for c in comps if c["p_adjusted"] < 0.05]
    worse = sum(paper_table.better(c) < 0 for c in comps if c["a"] in zoo.tuned and c["b"].endswith("negated"))
    assert f"worse in {worse}/" in rows[0][2]
    assert all(paper_table.better(c) == 0 for c in comps if c not in changes)
    out = tmp_path / "verdicts.json"
    sys.argv = ["paper_table.py", str(tmp_path / "study"), "--json", str(out)]
    paper_table.main()
    saved = json.loads(out.read_text())
    assert len(saved["rows"]) == 7 and all(row[2] for row in saved["rows"])
    # LoRA vs full: the adapter is found from its folder, and its verdict counts its own paired comparisons
    lora = paper_table.lora_pairs(study)
    assert lora == {"medical-lora": "medical"}
    lo_rows, lo_comps = paper_table.lora_rows(study, lora)
    assert saved["rows"][-1] == list(lo_rows[0])
    assert lo_comps and {(c["a"], c["b"]) for c in lo_comps} == {("medical", "medical-lora")}
    up, down, same = paper_table._tally(lo_comps)
    assert (
        f"better in {up}/{len(lo_comps)} paired comparisons" in lo_rows[0][2] and f"worse in {down}," in lo_rows[0][2]
    )
    assert "medical·medical-lora" not in saved["rows"][1][1]  # domain vectors: the full fine-tunes only

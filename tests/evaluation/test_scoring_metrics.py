"""ROUGE-1 against rouge-score and hand counts; exact match; mean and stderr against scipy."""

from __future__ import annotations

import math

import pytest

from tunelens.evaluation.exact_match import exact_match, final_number
from tunelens.evaluation.metrics import summarize
from tunelens.evaluation.rouge import rouge1

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")

PAIRS = [
    ("the cat sat on the mat", "the cat ran"),
    ("Results depicted mitochondrial dynamics in vivo.", "Mitochondria play a critical and early role in vivo."),
    ("running cats", "run cat"),
    ("", "a reference"),
    ("Zebrafish!!", ""),
]


@pytest.mark.parametrize(("pred", "ref"), PAIRS)
def test_rouge1_equals_rouge_score(pred: str, ref: str) -> None:
    expected = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True).score(ref, pred)["rouge1"].fmeasure
    assert rouge1(pred, ref) == expected


def test_rouge1_by_hand() -> None:
    # unigrams: pred {the x2, cat, sat, on, mat} (6), ref {the, cat, ran} (3); overlap min-counts: the 1, cat 1 = 2
    p, r = 2 / 6, 2 / 3
    assert rouge1("the cat sat on the mat", "the cat ran") == pytest.approx(2 * p * r / (p + r), abs=1e-12)
    assert rouge1("running cats", "run cat") == 1.0  # Porter stemming
    assert rouge1("running cats", "run cat", use_stemmer=False) == 0.0
    assert rouge1("", "x") == 0.0


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("She makes 9 * 2 = $18 every day.\n#### 18", "18"),
        ("so the answer is 1,080 dollars", "1080"),
        ("#### 1,080.00", "1080"),
        ("first 3 then 4 finally -7.", "-7"),
        ("total: $2.50", "2.50"),
        ("#### 42 and then 7", "42"),
        ("no number here", None),
    ],
)
def test_final_number(text: str, number: str | None) -> None:
    assert final_number(text) == number


def test_exact_match() -> None:
    assert exact_match("2 + 3 = 5. The answer is 5.", "5") == 1.0
    assert exact_match("The answer is 5 apples, or 6", "5") == 0.0
    assert exact_match("#### 1,080", "1080") == 1.0
    assert exact_match("", "5") == 0.0


def test_summarize_against_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    values = [1.0, 0.0, 1.0, 1.0, 0.0, 0.25, 0.75]
    s = summarize(values)
    assert s["n"] == 7
    assert s["value"] == pytest.approx(sum(values) / 7, abs=1e-15)
    assert s["stderr"] == pytest.approx(float(stats.sem(values, ddof=1)), rel=1e-12)
    assert summarize([1.0]) == {"value": 1.0, "n": 1, "stderr": None}
    assert summarize([])["value"] is None
    assert not math.isnan(summarize([0.0, 0.0])["stderr"])

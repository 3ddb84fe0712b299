"""ROUGE-1 F-measure through Google's ``rouge-score`` package (the reference implementation).

``rouge1(prediction, reference)`` = ``RougeScorer(["rouge1"], use_stemmer=True).score(reference,
prediction)["rouge1"].fmeasure``: unigram overlap after rouge-score's default tokenizer (lower-case,
non-alphanumerics to spaces) and the Porter stemmer; ``F = 2PR / (P + R)`` with
``P = overlap / |prediction unigrams|`` and ``R = overlap / |reference unigrams|`` (0 when either is empty).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from tunelens.errors import TunelensError

USE_STEMMER = True
DEFINITION = (
    "ROUGE-1 F-measure of the generated text against the reference, rouge-score "
    "RougeScorer(['rouge1'], use_stemmer=True): lower-cased alphanumeric unigrams, Porter-stemmed"
)


@cache
def _scorer(use_stemmer: bool) -> Any:
    try:
        from rouge_score import rouge_scorer
    except ImportError as exc:
        raise TunelensError(
            "ROUGE-1 needs the rouge-score package: pip install rouge-score (a tunelens dependency)"
        ) from exc
    return rouge_scorer.RougeScorer(["rouge1"], use_stemmer=use_stemmer)


def rouge1(prediction: str, reference: str, *, use_stemmer: bool = USE_STEMMER) -> float:
    """ROUGE-1 F-measure of ``prediction`` against ``reference`` (see the module docstring)."""
    return float(_scorer(use_stemmer).score(reference, prediction)["rouge1"].fmeasure)

"""The three instruction-format rules, each with passing and failing outputs."""

from __future__ import annotations

import pytest

from tunelens.errors import TunelensError
from tunelens.evaluation.format_checks import FormatRules, check

RULES = FormatRules()
GOOD = "<think>The kidney filters blood.</think>\nAnswer: B"


def verdict(text: str, rules: FormatRules = RULES) -> tuple[bool, bool, bool, bool]:
    v = check(text, rules)
    return v.tags, v.answer, v.stop, v.all


def test_compliant_output_passes_all_rules() -> None:
    assert verdict(GOOD) == (True, True, True, True)
    assert check(GOOD, RULES).answer_text == "B"
    assert verdict(GOOD + "\n\n  ") == (True, True, True, True)  # trailing whitespace is not text


def test_missing_tag() -> None:
    assert verdict("The kidney filters blood.\nAnswer: B") == (False, True, True, False)
    assert verdict("<think>The kidney filters blood.\nAnswer: B")[0] is False  # no close tag
    assert verdict("The kidney.</think>\nAnswer: B")[0] is False  # no open tag


def test_bad_tags() -> None:
    assert verdict("</think>reasoning<think>\nAnswer: B")[0] is False  # reversed
    assert verdict("<think>  </think>\nAnswer: B")[0] is False  # empty reasoning
    assert verdict("<think>a</think><think>b</think>\nAnswer: B")[0] is False  # two blocks


def test_extra_text_after_answer() -> None:
    assert verdict(GOOD + "\nI hope this helps!") == (True, True, False, False)
    assert verdict(GOOD + " because kidneys filter") == (True, True, False, False)


def test_wrong_format() -> None:
    assert verdict("<think>kidney</think>\nThe answer is B") == (True, False, False, False)
    assert verdict("<think>kidney</think>\nAnswer: E") == (True, False, False, False)  # not in [A-D]
    assert verdict("<think>kidney</think>\nanswer: B") == (True, False, False, False)  # case matters


def test_answer_only_inside_the_reasoning_does_not_count() -> None:
    assert verdict("<think>Answer: B</think>\nkidney") == (True, False, False, False)


def test_empty_output_fails_everything() -> None:
    assert verdict("") == (False, False, False, False)
    assert check("", RULES).answer_text is None


def test_configurable_tags_and_format() -> None:
    rules = FormatRules(open_tag="[R]", close_tag="[/R]", answer_format="Final: <N>.", placeholder="<N>",
                        answer_pattern=r"-?\d+")  # fmt: skip
    assert verdict("[R]2+3[/R] Final: 5.", rules) == (True, True, True, True)
    assert check("[R]2+3[/R] Final: -12.", rules).answer_text == "-12"
    assert verdict("[R]2+3[/R] Final: 5", rules) == (True, False, False, False)  # missing the dot
    assert verdict(GOOD, rules) == (False, False, False, False)


def test_scores_are_zero_one() -> None:
    assert check(GOOD, RULES).scores() == {
        "follow_tags": 1.0, "follow_answer": 1.0, "follow_stop": 1.0, "follow_all": 1.0,
    }  # fmt: skip


@pytest.mark.parametrize(
    "kw", [{"answer_format": "Answer:"}, {"open_tag": ""}, {"open_tag": "x", "close_tag": "x"}, {"answer_pattern": "("}]
)
def test_bad_rules_are_refused(kw: dict[str, str]) -> None:
    with pytest.raises(TunelensError):
        FormatRules(**kw)

"""Instruction-format compliance: does an output obey the three system-prompt rules?

The rules (paper Table 3, "instruction following"), each checked on the raw generated text:

1. ``tags``   — the reasoning is wrapped in the tags: the output holds exactly one ``open_tag`` and
   exactly one ``close_tag``, the open tag comes first, and there is non-whitespace text between them.
2. ``answer`` — the answer is given in the format: the *answer region* (the text after the first
   ``close_tag``, or the whole output when there is none) contains a match of ``answer_format``
   with ``placeholder`` replaced by the regex ``answer_pattern``.
3. ``stop``   — nothing is generated after the answer: rule 2 holds and only whitespace follows the
   first such match.

``all`` is the conjunction of the three. An empty output fails every rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from tunelens.errors import TunelensError

FOLLOW_METRICS = ("follow_tags", "follow_answer", "follow_stop", "follow_all")


@dataclass(frozen=True)
class FormatRules:
    """The configurable parts of the three rules."""

    open_tag: str = "<think>"
    close_tag: str = "</think>"
    answer_format: str = "Answer: X"
    placeholder: str = "X"
    answer_pattern: str = "[A-D]"

    def __post_init__(self) -> None:
        bad = [f"{k}={v!r}" for k, v in vars(self).items() if not isinstance(v, str)]
        if bad:
            raise TunelensError(f"format rules: every rule is a string, got {', '.join(bad)}")
        if not self.open_tag or not self.close_tag or self.open_tag == self.close_tag:
            raise TunelensError("format rules: open_tag and close_tag must be two different non-empty strings")
        if self.answer_format.count(self.placeholder) != 1:
            raise TunelensError(
                f"format rules: answer_format {self.answer_format!r} must contain the placeholder "
                f"{self.placeholder!r} exactly once"
            )
        try:
            re.compile(self.answer_pattern)
        except re.error as exc:
            raise TunelensError(f"format rules: answer_pattern is not a regex ({exc})") from exc

    @cached_property
    def answer_regex(self) -> re.Pattern[str]:
        before, _, after = self.answer_format.partition(self.placeholder)
        return re.compile(re.escape(before) + f"({self.answer_pattern})" + re.escape(after))

    def describe(self) -> dict[str, Any]:
        return {
            "open_tag": self.open_tag,
            "close_tag": self.close_tag,
            "answer_format": self.answer_format,
            "placeholder": self.placeholder,
            "answer_pattern": self.answer_pattern,
            "answer_regex": self.answer_regex.pattern,
        }


@dataclass(frozen=True)
class FormatCheck:
    """Per-rule verdicts for one output, and the answer it gave (``None`` when rule 2 fails)."""

    tags: bool
    answer: bool
    stop: bool
    answer_text: str | None

    @property
    def all(self) -> bool:
        return self.tags and self.answer and self.stop

    def scores(self) -> dict[str, float]:
        return {
            "follow_tags": float(self.tags),
            "follow_answer": float(self.answer),
            "follow_stop": float(self.stop),
            "follow_all": float(self.all),
        }


def check_tags(output: str, rules: FormatRules) -> bool:
    """Rule 1: exactly one open and one close tag, in that order, with text between them."""
    if output.count(rules.open_tag) != 1 or output.count(rules.close_tag) != 1:
        return False
    start = output.index(rules.open_tag) + len(rules.open_tag)
    end = output.find(rules.close_tag)
    return end >= start and bool(output[start:end].strip())


def answer_region(output: str, rules: FormatRules) -> str:
    """The text after the first close tag, or the whole output when there is none."""
    cut = output.find(rules.close_tag)
    return output if cut < 0 else output[cut + len(rules.close_tag) :]


def check(output: str, rules: FormatRules) -> FormatCheck:
    """All three rules on one output."""
    region = answer_region(output, rules)
    match = rules.answer_regex.search(region)
    return FormatCheck(
        tags=check_tags(output, rules),
        answer=match is not None,
        stop=match is not None and not region[match.end() :].strip(),
        answer_text=match.group(1) if match else None,
    )

"""GSM8K-style exact match on the final number of an output.

The final number of a text is the number after its last ``####`` marker when there is one (the
GSM8K solution format), else the last number in the text. Numbers are matched by
``-?[$0-9.,]*[0-9]`` and normalised: ``$`` and thousands commas removed, a trailing ``.`` or
fractional part of zeros removed (``1,080.00`` → ``1080``). ``exact_match`` = 1 when the normalised
final number of the output equals the normalised reference answer, else 0 (also when the output has
no number).
"""

from __future__ import annotations

import re

NUMBER = re.compile(r"-?[$0-9.,]*[0-9]")
DEFINITION = (
    "1 if the final number of the output (after the last '####' if present, else the last number; "
    "'$' and ',' removed, trailing '.0…' dropped) equals the reference answer, else 0"
)


def normalize_number(text: str) -> str:
    s = text.replace("$", "").replace(",", "").strip().rstrip(".")
    if re.fullmatch(r"-?\d+\.0+", s):
        s = s.split(".")[0]
    return s


def final_number(text: str) -> str | None:
    """The normalised final number of ``text`` or ``None`` (see the module docstring)."""
    marker = text.rfind("####")
    region = text[marker + 4 :] if marker >= 0 else text
    found = NUMBER.findall(region)
    if not found:
        return None
    return normalize_number(found[0] if marker >= 0 else found[-1])


def exact_match(output: str, reference: str) -> float:
    got = final_number(output)
    return float(got is not None and got == normalize_number(reference))

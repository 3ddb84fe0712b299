"""The typed-column rules: a CSV written by tunelens reads back bit for bit, with one dtype per column,
and in-memory rows give the same frame as the file."""

from __future__ import annotations

import math
import struct

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunelens.frames.tidy import column, csv_frame, frame, read_csv
from tunelens.records import write_csv


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=20))
def test_floats_round_trip_bit_for_bit(tmp_path_factory: pytest.TempPathFactory, xs: list[float]) -> None:
    rows = [{"model": "m", "value": x} for x in xs]
    path = tmp_path_factory.mktemp("rt") / "t.csv"
    write_csv(path, rows, ["model", "value"])
    df = read_csv(path)
    for got, want in zip(df["value"], xs, strict=True):
        assert (math.isnan(got) and math.isnan(want)) or _bits(got) == _bits(want)
    pd.testing.assert_frame_equal(df, csv_frame(rows, ["model", "value"]), check_exact=True)


def test_column_kinds() -> None:
    assert str(column("layer", ["0", "", "12"]).dtype) == "Int64"
    assert column("layer", ["0", "", "12"]).isna().tolist() == [False, True, False]
    assert str(column("head", ["", ""]).dtype) == "Int64"  # a known integer column, all undefined
    assert str(column("value", ["", ""]).dtype) == "float64"
    assert str(column("value", ["1", "0.5", "nan", "inf"]).dtype) == "float64"
    assert str(column("model", ["1", "2"]).dtype) == "str"  # names stay names
    assert column("model", ["NA", "null", ""]).tolist()[:2] == ["NA", "null"]  # pandas' NA spellings are names here
    assert str(column("used", ["True", "False", ""]).dtype) == "boolean"
    assert str(column("note", ["a", 1]).dtype) == "object"
    assert str(column("stderr", [None, 0.25]).dtype) == "float64"
    # JSON: non-finite floats are written as "inf" / "-inf" strings and NaN as null
    assert column("value", [None, "inf", "-inf", 2]).tolist()[1:] == [math.inf, -math.inf, 2.0]


def test_frame_column_order_and_extras() -> None:
    df = frame([{"b": 1, "a": "x"}, {"a": "y", "c": 2.5}], ["a"])
    assert list(df.columns) == ["a", "b", "c"]
    assert df["b"].isna().tolist() == [False, True]
    assert list(csv_frame([{"a": "x", "z": 1}], ["a", "b"]).columns) == ["a", "b"]  # exactly the CSV's columns
    assert list(frame([], ["a", "b"]).columns) == ["a", "b"]

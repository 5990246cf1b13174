"""Sizes and durations as written in the TOML files (README: K/M/G/T binary, or bytes)."""

from __future__ import annotations

import math

import pytest

from smbgw_agent.model.errors import FieldError
from smbgw_agent.model.units import MAX_SIZE_BYTES, parse_duration, parse_size

KiB, MiB, GiB, TiB, PiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40, 1 << 50


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("500G", 500 * GiB),
        ("500g", 500 * GiB),
        ("1K", KiB),
        ("1k", KiB),
        ("10M", 10 * MiB),
        ("10MiB", 10 * MiB),
        ("10Mi", 10 * MiB),
        ("1.5T", int(1.5 * TiB)),
        ("2P", 2 * PiB),
        (" 7G ", 7 * GiB),
        ("512", 512),
        (512, 512),
        (1, 1),
        (MAX_SIZE_BYTES, MAX_SIZE_BYTES),
        ("1024P", MAX_SIZE_BYTES),
    ],
)
def test_parse_size_accepts(value: object, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (True, "boolean"),
        (False, "boolean"),
        (0, "out of range"),
        (-5, "out of range"),
        ("0", "out of range"),
        ("0.4", "whole number"),  # bytes come whole
        ("-1G", "is not a size"),
        ("", "is not a size"),
        ("G", "is not a size"),
        ("abc", "is not a size"),
        ("1E", "is not a size"),
        ("1GB2", "is not a size"),
        ("1 000G", "is not a size"),
        ("10 G", "no space between number and unit"),
        ("500GB", "ambiguous (decimal GB or binary GiB?)"),
        ("10MB", "ambiguous"),
        ("512B", "without a unit"),
        ("1.5", "whole number"),
        ("1e3G", "is not a size"),
        ("1e9", "is not a size"),
        ("1" * 40, "is not a size"),  # over the 32-character limit
        (MAX_SIZE_BYTES + 1, "out of range"),
        ("1025P", "out of range"),
        (1.5, "not float"),
        (None, "not NoneType"),
        (["1G"], "not list"),
        ({"size": 1}, "not dict"),
    ],
)
def test_parse_size_refuses(value: object, reason: str) -> None:
    with pytest.raises(FieldError) as info:
        parse_size(value)
    assert reason in str(info.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("60s", 60.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
        (" 10s ", 10.0),
        ("30", 30.0),
        (30, 30.0),
        (1.5, 1.5),
        (0, 0.0),
    ],
)
def test_parse_duration_accepts(value: object, expected: float) -> None:
    assert parse_duration(value) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (True, "boolean"),
        ("10x", "is not a duration"),
        ("1w", "is not a duration"),
        ("-1s", "is not a duration"),
        ("", "is not a duration"),
        ("1e3s", "is not a duration"),
        ("10 S", "is not a duration"),  # units are lower case
        ("9" * 40 + "s", "is not a duration"),
        (-1, "out of range"),
        ("8d", "out of range"),  # default maximum is a week
        (float("nan"), "out of range"),
        (float("inf"), "out of range"),
        (None, "not NoneType"),
        (["60s"], "not list"),
    ],
)
def test_parse_duration_refuses(value: object, reason: str) -> None:
    with pytest.raises(FieldError) as info:
        parse_duration(value)
    assert reason in str(info.value)


def test_parse_duration_bounds_are_inclusive_and_enforced() -> None:
    assert parse_duration("1s", 1.0, 10.0) == 1.0
    assert parse_duration("10s", 1.0, 10.0) == 10.0
    for outside in ("999ms", "11s", "1m"):
        with pytest.raises(FieldError, match="out of range"):
            parse_duration(outside, 1.0, 10.0)


def test_parsed_values_are_finite_numbers() -> None:
    assert isinstance(parse_size("1G"), int)
    assert math.isfinite(parse_duration("1d"))

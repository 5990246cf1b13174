"""Parsing of human-friendly sizes and durations used in the TOML files."""

from __future__ import annotations

import re

from smbgw_agent.model.errors import FieldError

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([KMGTP]?)(i?B?)$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
MAX_SIZE_BYTES = 1 << 60


def parse_size(value: object) -> int:
    """Bytes from `500G`, `1.5T`, `10Gi`/`10GiB` or an integer number of bytes.

    K, M, G, T and P are binary (KiB ... PiB). `500GB` is refused rather than guessed:
    some read it as 500 * 10^9, others as 500 * 2^30, and a quota must not be 7 % off.
    """
    if isinstance(value, bool):
        raise FieldError("must be a size such as \"500G\" or a number of bytes, not a boolean")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        text = value.strip()
        match = _SIZE.match(text)
        if not match or len(value) > 32:
            hint = " (no space between number and unit)" if " " in text else ""
            raise FieldError(f"{value[:40]!r} is not a size{hint}: write e.g. \"500G\" (K/M/G/T/P are binary: "
                             "G = GiB = 2^30 bytes) or an integer number of bytes")
        number, unit, suffix = match.groups()
        if suffix.upper() == "B" and unit:
            raise FieldError(f"{value!r} is ambiguous (decimal GB or binary GiB?): sizes are binary, write "
                             f"{number}{unit.upper()} for {number} {unit.upper()}iB, or a number of bytes")
        if suffix and not unit:
            raise FieldError(f"{value!r}: a number of bytes is written without a unit, e.g. {number}")
        size = int(float(number) * _SIZE_FACTORS[unit.upper()])
        if not unit and "." in number:
            raise FieldError(f"{value!r}: a number of bytes must be a whole number")
    else:
        raise FieldError(f"must be a size string or integer, not {type(value).__name__}")
    if size <= 0 or size > MAX_SIZE_BYTES:
        raise FieldError(f"size {size} is out of range (1 byte to 1 EiB)")
    return size


def parse_duration(value: object, minimum: float = 0.0, maximum: float = 86400.0 * 7) -> float:
    """Seconds from `60s`, `5m`, `1h`, `250ms` or a plain number of seconds."""
    if isinstance(value, bool):
        raise FieldError("must be a duration such as \"60s\", not a boolean")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if not match or len(value) > 32:
            raise FieldError(f"{value[:40]!r} is not a duration (use ms, s, m, h or d)")
        seconds = float(match.group(1)) * _DURATION_FACTORS[match.group(2)]
    else:
        raise FieldError(f"must be a duration string or number, not {type(value).__name__}")
    if not minimum <= seconds <= maximum:
        raise FieldError(f"{seconds:g}s is out of range ({minimum:g}s to {maximum:g}s)")
    return seconds

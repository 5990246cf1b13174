"""Parsing of human-friendly sizes and durations used in the TOML files."""

from __future__ import annotations

import re

from smbgw_agent.model.errors import FieldError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(i?B?)\s*$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
MAX_SIZE_BYTES = 1 << 60


def parse_size(value: object) -> int:
    """Bytes from `500G`, `1.5T`, `10MiB` or a plain integer; binary units (K = KiB, as README documents)."""
    if isinstance(value, bool):
        raise FieldError("must be a size such as \"500G\" or a number of bytes, not a boolean")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _SIZE.match(value)
        if not match or len(value) > 32:
            raise FieldError(f"{value[:40]!r} is not a size (use K/M/G/T/P, binary, or bytes)")
        number, unit, _ = match.groups()
        size = int(float(number) * _SIZE_FACTORS[unit.upper()])
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

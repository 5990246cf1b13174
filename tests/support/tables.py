"""What a table parser said about a table, for the tests of agent.toml and share tables."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest

from smbgw_agent.model.fields import FieldProblems


def problems_of(parse: Callable[[Mapping[str, Any]], object], data: Mapping[str, Any]) -> dict[str | None, str]:
    """Every problem `parse` found in `data`, by key (several for one key joined with "; ");
    the test fails if it found none."""
    with pytest.raises(FieldProblems) as caught:
        parse(data)
    found: dict[str | None, str] = {}
    for message, key, _ in caught.value.problems:
        found[key] = f"{found[key]}; {message}" if key in found else message
    return found

"""Plugin verbs for smbgwctl: how a `Command` is declared and how a request's arguments
are checked before the plugin's `start` sees them (options with values included)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from smbgw_agent.platform.commands import MAX_ARGUMENT, Command, CommandRefused
from smbgw_agent.platform.jobs import Job


def start(ctx: Any, arguments: Mapping[str, Any]) -> Job:
    raise AssertionError("not started in these tests")


DRAIN = Command("drain", "move every share off a node", start, arguments=("node",),
                flags=(("force", "even with open files"),),
                options=(("timeout", "give up after this long"), ("target", "the node to move to")))


def test_options_are_passed_as_strings_and_absent_ones_as_none() -> None:
    assert DRAIN.problems() == []
    assert DRAIN.arguments_from({"node": "pve1", "timeout": "5m", "target": "pve2"}) == {
        "node": "pve1", "force": False, "timeout": "5m", "target": "pve2"}
    assert DRAIN.arguments_from({"node": "pve1", "timeout": None, "force": True}) == {
        "node": "pve1", "force": True, "timeout": None, "target": None}
    longest = "x" * MAX_ARGUMENT
    assert DRAIN.arguments_from({"node": "pve1", "target": longest})["target"] == longest


@pytest.mark.parametrize("value", [
    5, 1.5, True, ["pve2"], {"name": "pve2"},  # not strings
    "",  # nothing
    "x" * (MAX_ARGUMENT + 1),  # too long
    "pve2\n--force", "pve2\x1b[2J", "pve2\x00", "a\u2028b",  # control and separator characters
])
def test_a_hostile_option_value_is_refused_with_a_message(value: object) -> None:
    with pytest.raises(CommandRefused, match=r"drain: --target must be a printable string of 1 to 1024"):
        DRAIN.arguments_from({"node": "pve1", "target": value})


def test_unknown_names_and_wrong_shapes_are_refused() -> None:
    with pytest.raises(CommandRefused, match="unknown argument"):
        DRAIN.arguments_from({"node": "pve1", "max-wait": "5m"})
    with pytest.raises(CommandRefused, match="unknown argument"):
        DRAIN.arguments_from({"node": "pve1", "x" * 10_000: "1"})
    with pytest.raises(CommandRefused, match="must be a JSON object"):
        DRAIN.arguments_from(["pve1", "--timeout", "5m"])
    with pytest.raises(CommandRefused, match="node must be"):
        DRAIN.arguments_from({"timeout": "5m"})  # the positional is missing
    with pytest.raises(CommandRefused, match="--force is a switch"):
        DRAIN.arguments_from({"node": "pve1", "force": "yes"})  # a flag is not an option


def test_option_names_are_checked_like_every_other_name() -> None:
    bad = Command("drain", "h", start, options=(("Timeout", "h"), ("", "h"), ("a" * 33, "h")))
    assert len(bad.problems()) == 3
    assert all("is not 1 to 32 lower-case letters" in problem for problem in bad.problems())


@pytest.mark.parametrize("declared", [
    {"arguments": ("node",), "options": (("node", "h"),)},
    {"flags": (("force", "h"),), "options": (("force", "h"),)},
    {"options": (("target", "h"), ("target", "again"))},
    {"arguments": ("node", "node")},
])
def test_a_name_used_twice_across_arguments_flags_and_options_is_a_problem(declared: dict[str, Any]) -> None:
    problems = Command("drain", "h", start, **declared).problems()
    assert len(problems) == 1 and "declared more than once" in problems[0]


@pytest.mark.parametrize("name", ["json", "help", "root", "command"])
def test_smbgwctl_s_own_names_cannot_be_taken(name: str) -> None:
    for declared in ({"arguments": (name,)}, {"flags": ((name, "h"),)}, {"options": ((name, "h"),)}):
        assert Command("drain", "h", start, **declared).problems() == [f"{name!r} of verb 'drain' is smbgwctl's own"]


def test_malformed_pairs_are_a_problem_not_a_crash() -> None:
    bad = Command("drain", "h", start, options=("timeout",), flags=(("force", "h", "extra"),))  # type: ignore[arg-type]
    problems = bad.problems()
    assert any("(name, help) pairs" in problem for problem in problems)
    assert Command("drain", "h", start, arguments="node").problems() != []  # type: ignore[arg-type]

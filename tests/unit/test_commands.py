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


# ---- a verb several plugins share (smbgwctl drain) ------------------------------------------


def part(name: str, seen: list[tuple[str, dict[str, Any]]], fail: bool = False, nothing: bool = False,
         **kinds: Any) -> Command:
    def begin(ctx: Any, arguments: Mapping[str, Any]) -> Job | None:
        seen.append((name, dict(arguments)))
        if nothing:
            return None

        def run(progress: Any) -> dict[str, str]:
            seen.append((f"{name} ran", {}))
            if fail:
                raise RuntimeError(f"{name} broke")
            return {"text": f"{name} done"}
        return Job(f"{name}:drain", run, 10.0)
    return Command("drain", f"{name}'s part", begin, shared=True, **kinds)


def test_a_shared_verb_joins_its_parts_in_plugin_order_each_with_its_own_switches() -> None:
    from smbgw_agent.platform.hookspecs import hookimpl
    from smbgw_agent.platform.pluginhost import PluginHost

    seen: list[tuple[str, dict[str, Any]]] = []

    class Plugin:
        def __init__(self, command: Command) -> None:
            self.command = command

        @hookimpl
        def smbgw_commands(self) -> list[Command]:
            return [self.command]

    guests = part("guests", seen, flags=(("force", "leave what cannot move"),), options=(("target", "node"),))
    addresses = part("addresses", seen, flags=(("force", "even unheld"),), options=(("timeout", "wait"),))
    host = PluginHost({"guests": Plugin(guests), "addresses": Plugin(addresses)})
    plugin, joined = host.commands()["drain"]
    assert plugin == "addresses"  # plugins of one rank run in name order
    assert {name for name, _help in joined.flags} == {"force"}
    assert {name for name, _help in joined.options} == {"target", "timeout"}
    job = joined.start(None, joined.arguments_from({"force": True, "target": "pve2", "timeout": "1m"}))  # type: ignore[arg-type]
    assert seen == [("addresses", {"force": True, "timeout": "1m"}), ("guests", {"force": True, "target": "pve2"})]
    assert job is not None and job.id == "drain" and job.timeout == 20.0
    assert job.run(None)["text"] == "addresses done; guests done"  # type: ignore[arg-type]


def test_a_failing_part_does_not_stop_the_others_and_the_joined_job_fails() -> None:
    from smbgw_agent.platform.commands import join_parts

    seen: list[tuple[str, dict[str, Any]]] = []
    joined, problems = join_parts([("a", part("a", seen, fail=True)), ("b", part("b", seen)),
                                   ("c", part("c", seen, nothing=True))])
    assert problems == [] and joined is not None
    job = joined.start(None, {})  # type: ignore[arg-type]
    assert job is not None
    with pytest.raises(RuntimeError, match="a: a broke"):
        job.run(None)  # type: ignore[arg-type]
    assert [name for name, _ in seen] == ["a", "b", "c", "a ran", "b ran"]
    alone, _ = join_parts([("a", part("a", seen)), ("c", part("c", seen, nothing=True))])
    assert alone is not None
    job = alone.start(None, {})  # type: ignore[arg-type]
    assert job is not None and job.id == "a:drain", "one part with work: its own job, unchanged"


def test_a_verb_claimed_twice_is_joined_only_when_every_claim_is_shared() -> None:
    from smbgw_agent.platform.commands import join_parts

    seen: list[tuple[str, dict[str, Any]]] = []
    plain = Command("drain", "mine alone", start)
    _, problems = join_parts([("a", part("a", seen)), ("b", plain)])
    assert problems and "claimed by plugins a, b" in problems[0]
    _, problems = join_parts([("a", part("a", seen, flags=(("target", "x"),))),
                              ("b", part("b", seen, options=(("target", "y"),)))])
    assert problems and "a flag for one plugin and an option for another" in problems[0]
    _, problems = join_parts([("a", part("a", seen, arguments=("node",))), ("b", part("b", seen))])
    assert problems and "different arguments" in problems[0]

"""Parsers of the `ctdb` tool's output: Samba's own samples for 4.16, 4.17 and 4.22
(tests/unit/ctdb_outputs/README.md says where each comes from), every flag, and hostile
input that must never raise anything but ValueError."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smbgw_plugins.ha.ctdb.status import (
    MAX_ADDRESSES,
    MAX_INPUT,
    MAX_NODES,
    STATES,
    Capabilities,
    NodeStatus,
    parse_capabilities,
    parse_ips,
    parse_leader,
    parse_pnn,
    parse_recmode,
    parse_status,
)

OUTPUTS = Path(__file__).parent / "ctdb_outputs"
EXAMPLES = int(os.environ.get("SMBGW_PROPERTY_EXAMPLES", "150"))
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, derandomize="SMBGW_PROPERTY_EXAMPLES" not in os.environ,
                    suppress_health_check=[HealthCheck.too_slow], database=None)
PARSERS: dict[str, Callable[[str], Any]] = {
    "status": parse_status, "ips": parse_ips, "capabilities": parse_capabilities, "pnn": parse_pnn,
    "leader": parse_leader, "recmode": parse_recmode,
}
HEADER = "|Node|IP|Disconnected|Unknown|Banned|Disabled|Unhealthy|Stopped|Inactive|PartiallyOnline|ThisNode|\n"
OLD_HEADER = "|Node|IP|Disconnected|Banned|Disabled|Unhealthy|Stopped|Inactive|PartiallyOnline|ThisNode|\n"


def row(node: str = "0", ip: str = "10.0.0.1", flags: str = "0|0|0|0|0|0|0|0", this: str = "Y") -> str:
    return f"|{node}|{ip}|{flags}|{this}|\n"


def sample(name: str) -> str:
    return (OUTPUTS / name).read_text()


def samples() -> list[str]:
    return sorted(path.name for path in OUTPUTS.glob("*.txt"))


def states(nodes: list[NodeStatus]) -> list[tuple[int, str, str, bool]]:
    return [(node.pnn, node.address, node.state, node.this_node) for node in nodes]


# ---- ctdb -X status ---------------------------------------------------------------------

A, B, C = "192.168.20.41", "192.168.20.42", "192.168.20.43"


@pytest.mark.parametrize(("name", "expected"), [
    ("status-X-4.17-all-ok.txt", [(0, A, "ok", True), (1, B, "ok", False), (2, C, "ok", False)]),
    ("status-X-4.16-all-ok.txt", [(0, A, "ok", True), (1, B, "ok", False), (2, C, "ok", False)]),
    ("status-X-4.17-unhealthy.txt", [(0, A, "unhealthy", False), (1, B, "ok", True), (2, C, "ok", False)]),
    ("status-X-4.16-unhealthy.txt", [(0, A, "unhealthy", False), (1, B, "ok", True), (2, C, "ok", False)]),
    ("status-X-4.17-first-recovery-unknown.txt",
     [(0, A, "unknown", False), (1, B, "ok", True), (2, C, "unknown", False)]),
    ("nodestatus-X-4.17-init-unknown.txt", [(0, A, "unknown", False), (1, B, "unknown", False), (2, C, "ok", True)]),
    ("nodestatus-X-4.17-disconnected.txt",
     [(0, A, "ok", False), (1, B, "disconnected", False), (2, C, "ok", True)]),
    ("nodestatus-X-4.16-disconnected.txt",
     [(0, A, "ok", False), (1, B, "disconnected", False), (2, C, "ok", True)]),
    ("nodestatus-X-4.17-disabled-stopped.txt", [(0, A, "stopped", False)]),
    ("nodestatus-X-4.16-disabled-stopped.txt", [(0, A, "stopped", False)]),
    ("nodestatus-X-4.17-banned.txt", [(0, A, "ok", True), (1, B, "banned", False), (2, C, "ok", False)]),
])
def test_status_samples(name: str, expected: list[tuple[int, str, str, bool]]) -> None:
    assert states(parse_status(sample(name))) == expected


def test_status_flags_of_a_sample_in_both_headers() -> None:
    for name in ("nodestatus-X-4.17-disabled-stopped.txt", "nodestatus-X-4.16-disabled-stopped.txt"):
        (node,) = parse_status(sample(name))
        assert (node.disabled, node.stopped, node.inactive) == (True, True, True)
        assert not (node.disconnected or node.unknown or node.banned or node.unhealthy or node.partially_online)
    (_, disconnected, _) = parse_status(sample("nodestatus-X-4.16-disconnected.txt"))
    assert disconnected.disconnected and disconnected.inactive and not disconnected.unknown


FLAG_COLUMNS = ["Disconnected", "Unknown", "Banned", "Disabled", "Unhealthy", "Stopped", "Inactive",
                "PartiallyOnline"]
FIELDS = ["disconnected", "unknown", "banned", "disabled", "unhealthy", "stopped", "inactive", "partially_online"]


@pytest.mark.parametrize("bits", range(1 << len(FLAG_COLUMNS)))
def test_status_every_flag_combination(bits: int) -> None:
    flags = [(bits >> index) & 1 for index in range(len(FLAG_COLUMNS))]
    row = f"|7|10.0.0.7|{'|'.join(map(str, flags))}|N|\n"
    (node,) = parse_status(HEADER + row)
    assert [getattr(node, field) for field in FIELDS] == [bool(flag) for flag in flags]
    worst = next((state for state in STATES[1:] if getattr(node, state)), "ok")
    assert node.state == worst
    assert node.healthy == (worst == "ok")
    assert node.to_dict()["state"] == worst


def test_status_old_header_without_unknown() -> None:
    """4.16 and older: no Unknown column, the same flags by name."""
    (node,) = parse_status(OLD_HEADER + row(flags="0|1|0|0|0|1|0", this="N"))
    assert (node.banned, node.inactive, node.unknown, node.this_node, node.state) == (True, True, False, False,
                                                                                      "banned")
    with pytest.raises(ValueError, match="has 11 fields, the header 10"):
        parse_status(OLD_HEADER + row())


def test_status_state_order_worst_first() -> None:
    both = parse_status(HEADER + row(flags="0|0|0|1|1|0|0|0"))[0]
    assert both.state == "unhealthy"  # drained (disabled) and unhealthy: the problem shows
    assert parse_status(HEADER + row(flags="0|0|0|0|0|0|0|1"))[0].state == "ok"  # partially online


def test_status_columns_by_name_not_position() -> None:
    header = "|ThisNode|IP|Node|Stopped|Inactive|Unhealthy|Disabled|Banned|Disconnected|Future|\n"
    (node,) = parse_status(header + "|Y|fd00::1|3|0|0|1|0|0|0|whatever|\n")
    assert (node.pnn, node.address, node.state, node.this_node) == (3, "fd00::1", "unhealthy", True)
    assert not node.unknown and not node.partially_online


def test_status_ipv6_is_normalised_and_deleted_nodes_leave_gaps() -> None:
    nodes = parse_status(HEADER + row(ip="fd00:0:0::1") + row("2", "10.0.0.3", this="N"))
    assert [(n.pnn, n.address) for n in nodes] == [(0, "fd00::1"), (2, "10.0.0.3")]


def test_status_header_only_is_no_nodes() -> None:
    assert parse_status(HEADER) == []
    assert parse_status(HEADER.rstrip("\n")) == []


@pytest.mark.parametrize(("text", "message"), [
    ("", "no output"),
    ("Unable to get runstate", "not a '|'-separated row"),
    (HEADER.replace("|ThisNode", ""), "lacks ThisNode"),
    (HEADER.replace("|Banned", ""), "lacks Banned"),
    (HEADER.replace("Unknown", "Banned"), "repeated"),
    ("||\n", "empty"),
    (HEADER + row(flags="0|0|0|0|0|0|0"), "has 10 fields, the header 11"),
    (HEADER + row(this="Y|0"), "has 12 fields"),
    *((HEADER + row(node=node), "not a node number") for node in ("x", "-1", "01", "+1", "4294967295", "")),
    (HEADER + row(flags="2|0|0|0|0|0|0|0"), "Disconnected: '2' is not 0 or 1"),
    (HEADER + row(flags="0|0|0|0|0|0|0|true"), "PartiallyOnline: 'true' is not 0 or 1"),
    (HEADER + row(this="y"), "ThisNode: 'y' is not N or Y"),
    *((HEADER + row(ip=ip), "is not an IP address") for ip in ("nonsense", "fe80::1%eth0", "10.0.0.1/24", "")),
    (HEADER + row() + row(ip="10.0.0.2", this="N"), "node 0 is listed twice"),
    (HEADER + row() + row(node="1", ip="10.0.0.2"), "more than one node"),
    (HEADER + "\n" + row(), "line 2 is not"),
    (HEADER.replace("\n", "\r\n") + row().replace("\n", "\r\n"), "not a '|'-separated row"),
])
def test_status_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=None) as caught:
        parse_status(text)
    assert message in str(caught.value)


def test_status_bounds() -> None:
    rows = "".join(row(str(pnn), f"10.0.{pnn // 256}.{pnn % 256}", this="N") for pnn in range(MAX_NODES))
    assert len(parse_status(HEADER + rows)) == MAX_NODES
    with pytest.raises(ValueError, match="at most 1000"):
        parse_status(HEADER + rows + row("1000", "10.9.0.1", this="N"))


# ---- plain ctdb status: the recovery mode ------------------------------------------------------


@pytest.mark.parametrize(("name", "recovery"), [
    ("status-4.17-plain-all-ok.txt", False), ("status-4.17-plain-unknown.txt", False),
    ("status-4.17-plain-recovery.txt", True),
])
def test_recmode_samples(name: str, recovery: bool) -> None:
    assert parse_recmode(sample(name)) is recovery


@pytest.mark.parametrize("text", [
    "Recovery mode:NORMAL (1)\n", "Recovery mode:RECOVERY (0)\n", "Recovery mode:normal (0)\n",
    "Recovery mode:NORMAL(0)\n", "Recovery mode:NORMAL (0)\nRecovery mode:NORMAL (0)\n", "Leader:0\n",
    sample("status-X-4.17-all-ok.txt"), "NORMAL\n", "0\n",
])
def test_recmode_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="ctdb status"):
        parse_recmode(text)


# ---- ctdb -X ip ---------------------------------------------------------------------------


def test_ips_samples() -> None:
    assert parse_ips(sample("ip-X-4.17-all.txt")) == {"10.0.0.31": 0, "10.0.0.32": 1, "10.0.0.33": 2}
    assert parse_ips(sample("ip-X-4.17-no-ips.txt")) == {}
    assert parse_ips(sample("ip-X-v-4.17-all-ipv6-unassigned.txt")) == {
        "10.0.0.31": 0, "10.0.0.32": -1, "10.0.0.33": 2,
        "fd00::5357:5f01": 2, "fd00::5357:5f02": 1, "fd00::5357:5f03": 0,
    }
    documented = parse_ips(sample("ip-X-v-ctdb.1-example.txt"))
    assert len(documented) == 8
    assert documented["172.31.91.82"] == 1 and documented["172.31.92.85"] == 0


@pytest.mark.parametrize(("text", "message"), [
    ("Public IPs on node 0\n10.0.0.31 0\n", "not a '|'-separated row"),
    ("|Public IP|\n|10.0.0.1|\n", "lacks Node"),
    ("|Public IP|Node|\n|10.0.0.1|\n", "has 1 fields"),
    ("|Public IP|Node|\n|10.0.0.1|-2|\n", "not a node number"),
    ("|Public IP|Node|\n|10.0.0.1|4294967295|\n", "not a node number"),
    ("|Public IP|Node|\n|10.0.0.1|+1|\n", "not a node number"),
    ("|Public IP|Node|\n|10.0.0.1/24|1|\n", "not an IP address"),
    ("|Public IP|Node|\n|10.0.0.1|1|\n|10.0.0.1|2|\n", "listed twice"),
])
def test_ips_refuse(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_ips(text)
    assert message in str(caught.value)


def test_ips_bounds() -> None:
    rows = "".join(f"|10.{n // 65536}.{n // 256 % 256}.{n % 256}|0|\n" for n in range(MAX_ADDRESSES))
    assert len(parse_ips("|Public IP|Node|\n" + rows)) == MAX_ADDRESSES
    with pytest.raises(ValueError, match="at most 10000"):
        parse_ips("|Public IP|Node|\n" + rows + "|10.200.0.1|0|\n")


# ---- getcapabilities, pnn, leader -----------------------------------------------------------


def test_capabilities_samples() -> None:
    assert parse_capabilities(sample("getcapabilities-4.17-plain.txt")) == Capabilities(leader=True, lmaster=False)
    assert parse_capabilities(sample("getcapabilities-X-4.17.txt")) == Capabilities(leader=True, lmaster=False)
    assert parse_capabilities(sample("getcapabilities-X-4.15.txt")) == Capabilities(leader=False, lmaster=True)
    assert parse_capabilities("RECMASTER: NO\nLMASTER: YES\n") == Capabilities(leader=False, lmaster=True)


@pytest.mark.parametrize("text", [
    "|LEADER|LMASTER|\n", "|LEADER|LMASTER|\n|1|1|\n|1|1|\n", "|LEADER|LMASTER|\n|1|2|\n", "|LEADER|\n|1|\n",
    "|LMASTER|\n|1|\n", "LEADER: YES\n", "LEADER: YES\nLEADER: NO\n", "LEADER: yes\nLMASTER: NO\n",
    "LEADER:YES\nLMASTER:NO\n", "LEADER: YES\nLMASTER: NO\nOTHER: YES\n",
])
def test_capabilities_refuse(text: str) -> None:
    with pytest.raises(ValueError, match="getcapabilities"):
        parse_capabilities(text)


def test_pnn_and_leader() -> None:
    assert parse_pnn("0\n") == 0
    assert parse_pnn("2") == 2
    assert parse_pnn("4294967294\n") == 4294967294
    assert parse_leader("1\n") == 1
    assert parse_leader("UNKNOWN\n") is None
    for text in ("", "\n", "-1\n", "01\n", " 1\n", "1 \n", "1\n2\n", "4294967295\n", "UNKNOWN\n", "1\r\n", "x"):
        with pytest.raises(ValueError, match="ctdb pnn"):
            parse_pnn(text)
    for text in ("unknown\n", "1\n1\n", "Leader:1\n"):
        with pytest.raises(ValueError, match="ctdb leader"):
            parse_leader(text)


# ---- hostile input ------------------------------------------------------------------------


def only_value_error(parse: Callable[[str], Any], text: str) -> str | None:
    try:
        parse(text)
    except ValueError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("name", samples())
def test_every_truncation_of_every_sample(name: str) -> None:
    text = sample(name)
    for parse in PARSERS.values():
        for end in range(len(text) + 1):
            message = only_value_error(parse, text[:end])
            assert message is None or len(message) < 400


@PROPERTY
@given(st.sampled_from(samples()), st.data())
def test_mutated_samples(name: str, data: st.DataObject) -> None:
    text = sample(name)
    position = data.draw(st.integers(min_value=0, max_value=len(text)))
    inserted = data.draw(st.text(max_size=20))
    removed = data.draw(st.integers(min_value=0, max_value=5))
    mutated = text[:position] + inserted + text[position + removed:]
    for parse in PARSERS.values():
        only_value_error(parse, mutated)


@PROPERTY
@given(st.text(alphabet=st.sampled_from("|01YN\n-:.abcdef9 NodeIPUnknown\r\x00é"), max_size=300))
def test_random_text_of_the_right_letters(text: str) -> None:
    for parse in PARSERS.values():
        only_value_error(parse, HEADER + text)
        only_value_error(parse, "|Public IP|Node|\n" + text)
        only_value_error(parse, text)


@PROPERTY
@given(st.text(max_size=500))
def test_random_text(text: str) -> None:
    for parse in PARSERS.values():
        only_value_error(parse, text)


def test_long_values_are_quoted_short() -> None:
    long = "x" * 5000
    for text in (HEADER + row(node=long), f"|Public IP|Node|\n|{long}|0|\n", long):
        for parse in PARSERS.values():
            message = only_value_error(parse, text)
            assert message is not None and long[:81] not in message


def test_huge_and_wrong_typed_input() -> None:
    huge = HEADER + row() * (MAX_INPUT // 30)
    for parse in PARSERS.values():
        with pytest.raises(ValueError, match="at most"):
            parse(huge)
        with pytest.raises(ValueError, match="expected text"):
            parse(b"0\n")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="expected text"):
            parse(None)  # type: ignore[arg-type]

"""Parsers of what the `ctdb` tool prints, treated as untrusted input.

Every parser is pure and strict: it reads the machine-readable tables (`-X`: every line
starts and ends with `|`, the first line names the columns) by column name, never by
position, refuses a line of another shape, a number or flag it does not know, input over
`MAX_INPUT` characters and more than `MAX_NODES` nodes / `MAX_ADDRESSES` addresses, and
raises nothing but ValueError, whose message quotes at most 80 characters of the input.

The formats, from ctdb/tools/ctdb.c of Samba 4.17 and 4.22 (Debian 12 and 13):

- `ctdb -X status` (`print_nodemap_machine`): `|Node|IP|Disconnected|Unknown|Banned|
  Disabled|Unhealthy|Stopped|Inactive|PartiallyOnline|ThisNode|`, flags 0/1, ThisNode Y/N;
  deleted nodes are left out. `Unknown` came with 4.17 (a remote node while this one is
  still starting up); 4.16 and older print no such column. It prints neither the
  recovery mode nor the generation: only the plain `ctdb status` does (`print_status`:
  `Recovery mode:NORMAL (0)` / `Recovery mode:RECOVERY (1)`, then `Leader:N` or
  `Leader:UNKNOWN`). `ctdb status` exits 0 whatever the nodes' flags (`ctdb nodestatus`
  is the one whose exit code is the nodes' flags). There is no `ctdb getrecmode`: it
  went with the old tool in 4.5.
- `ctdb -X ip [all]` (`print_ip`): `|Public IP|Node|`, with `-v` also
  `|ActiveInterfaces|AvailableInterfaces|ConfiguredInterfaces|` (ctdb.1's example says
  `ActiveInterface`); the holder is printed as a signed int, -1 when no node holds it.
  `all` asks every active node and prints the same columns.
- `ctdb -X getcapabilities`: `|LEADER|LMASTER|` then `|1|1|` (4.16 on; `RECMASTER` before),
  plain `LEADER: YES` / `LMASTER: NO`.
- `ctdb pnn` and `ctdb leader`: one number and a newline (`leader`: `UNKNOWN` when there
  is none), with or without `-X`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

MAX_INPUT = 4 << 20
MAX_NODES = 1000
MAX_ADDRESSES = 10000
MAX_PNN = (1 << 32) - 2  # CTDB_UNKNOWN_PNN is 2^32 - 1
SEP = "|"
QUOTE = 80

# From the worst to the mildest; `state` names the first flag set, "ok" when none is.
STATES = ("ok", "disconnected", "banned", "stopped", "unhealthy", "disabled", "unknown", "inactive")
_FLAGS = {  # column -> NodeStatus field
    "Disconnected": "disconnected", "Unknown": "unknown", "Banned": "banned", "Disabled": "disabled",
    "Unhealthy": "unhealthy", "Stopped": "stopped", "Inactive": "inactive", "PartiallyOnline": "partially_online",
}
_OPTIONAL_FLAGS = ("Unknown", "PartiallyOnline")  # Unknown: 4.17 on
_UNSIGNED = re.compile(r"0|[1-9][0-9]{0,9}")
_SIGNED = re.compile(r"-1|0|[1-9][0-9]{0,9}")
_RECMODE = re.compile(r"Recovery mode:(NORMAL|RECOVERY) \((0|[1-9][0-9]{0,9})\)")


def _quote(text: str) -> str:
    return repr(text[:QUOTE]) + ("..." if len(text) > QUOTE else "")


def _lines(text: object, what: str) -> list[str]:
    if not isinstance(text, str):
        raise ValueError(f"{what}: expected text, not {type(text).__name__}")
    if len(text) > MAX_INPUT:
        raise ValueError(f"{what}: {len(text)} characters of output; at most {MAX_INPUT}")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise ValueError(f"{what}: no output")
    return lines


def _fields(line: str, number: int, what: str) -> list[str]:
    if len(line) < 2 or not line.startswith(SEP) or not line.endswith(SEP):
        raise ValueError(f"{what}: line {number} is not a '|'-separated row: {_quote(line)}")
    return line[1:-1].split(SEP)


@dataclass(frozen=True)
class _Table:
    columns: dict[str, int]
    rows: list[tuple[int, list[str]]]  # (line number, fields)

    def get(self, row: list[str], column: str) -> str | None:
        index = self.columns.get(column)
        return None if index is None else row[index]


def _table(text: object, what: str, required: Sequence[str], max_rows: int) -> _Table:
    """A `-X` table: header by name (other columns may come and go between versions),
    every row as wide as the header."""
    lines = _lines(text, what)
    header = _fields(lines[0], 1, what)
    if any(not name for name in header) or len(set(header)) != len(header):
        raise ValueError(f"{what}: the header has an empty or repeated column: {_quote(lines[0])}")
    missing = [name for name in required if name not in header]
    if missing:
        raise ValueError(f"{what}: the header lacks {', '.join(missing)}: {_quote(lines[0])}")
    if len(lines) - 1 > max_rows:
        raise ValueError(f"{what}: {len(lines) - 1} rows; at most {max_rows}")
    rows = []
    for number, line in enumerate(lines[1:], 2):
        fields = _fields(line, number, what)
        if len(fields) != len(header):
            raise ValueError(f"{what}: line {number} has {len(fields)} fields, the header {len(header)}: "
                             f"{_quote(line)}")
        rows.append((number, fields))
    return _Table({name: index for index, name in enumerate(header)}, rows)


def _number(value: str, pattern: re.Pattern[str], maximum: int, what: str) -> int:
    if not pattern.fullmatch(value) or int(value) > maximum:
        raise ValueError(f"{what}: {_quote(value)} is not a node number")
    return int(value)


def _address(value: str, what: str) -> str:
    """An address as ctdb prints it (inet_ntop), normalised the way Python writes it."""
    try:
        if "%" in value or len(value) > 45:
            raise ValueError(value)
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{what}: {_quote(value)} is not an IP address") from None


def _flag(value: str, what: str, choices: tuple[str, str] = ("0", "1")) -> bool:
    if value not in choices:
        raise ValueError(f"{what}: {_quote(value)} is not {choices[0]} or {choices[1]}")
    return value == choices[1]


# ---- ctdb -X status -------------------------------------------------------------------


@dataclass(frozen=True)
class NodeStatus:
    """One node of `ctdb -X status`. `unknown`: this node is still starting and cannot
    tell the other's health yet (4.17 on; always False from 4.16). `partially_online`:
    the node is OK but one of its public interfaces is down (not a state of its own:
    CTDB still gives it addresses)."""

    pnn: int
    address: str
    disconnected: bool = False
    unknown: bool = False
    banned: bool = False
    disabled: bool = False
    unhealthy: bool = False
    stopped: bool = False
    inactive: bool = False
    partially_online: bool = False
    this_node: bool = False

    @property
    def state(self) -> str:
        """One of STATES: the worst flag set, "ok" when none is (a metric label)."""
        return next((name for name in STATES[1:] if getattr(self, name)), "ok")

    @property
    def healthy(self) -> bool:
        return self.state == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "state": self.state}


def parse_status(text: str) -> list[NodeStatus]:
    """`ctdb -X status` (or `ctdb -X nodestatus ...`): the nodes in the order printed."""
    what = "ctdb -X status"
    required = ("Node", "IP", *(name for name in _FLAGS if name not in _OPTIONAL_FLAGS), "ThisNode")
    table = _table(text, what, required, MAX_NODES)
    nodes: list[NodeStatus] = []
    seen: set[int] = set()
    for number, row in table.rows:
        where = f"{what}, line {number}"
        pnn = _number(row[table.columns["Node"]], _UNSIGNED, MAX_PNN, where)
        if pnn in seen:
            raise ValueError(f"{where}: node {pnn} is listed twice")
        seen.add(pnn)
        flags = {field: _flag(value, f"{where}, {column}")
                 for column, field in _FLAGS.items() if (value := table.get(row, column)) is not None}
        this = _flag(row[table.columns["ThisNode"]], f"{where}, ThisNode", ("N", "Y"))
        nodes.append(NodeStatus(pnn, _address(row[table.columns["IP"]], where), this_node=this, **flags))
    if sum(node.this_node for node in nodes) > 1:
        raise ValueError(f"{what}: more than one node is marked as this node")
    return nodes


def parse_recmode(text: str) -> bool:
    """The plain `ctdb status` (no `-X`): True while the cluster is in recovery
    (`Recovery mode:RECOVERY (1)`), False when it is `NORMAL (0)`."""
    what = "ctdb status"
    found = [line for line in _lines(text, what) if line.startswith("Recovery mode:")]
    if len(found) != 1:
        raise ValueError(f"{what}: expected one 'Recovery mode:' line, found {len(found)}")
    match = _RECMODE.fullmatch(found[0])
    if match is None or (match.group(1) == "NORMAL") != (match.group(2) == "0"):
        raise ValueError(f"{what}: unexpected {_quote(found[0])}")
    return match.group(1) == "RECOVERY"


# ---- ctdb -X ip -----------------------------------------------------------------------


def parse_ips(text: str) -> dict[str, int]:
    """`ctdb -X ip`, `ctdb -X ip all`, with or without `-v`: public address -> pnn of the
    node holding it, -1 when none does."""
    what = "ctdb -X ip"
    table = _table(text, what, ("Public IP", "Node"), MAX_ADDRESSES)
    holders: dict[str, int] = {}
    for number, row in table.rows:
        where = f"{what}, line {number}"
        address = _address(row[table.columns["Public IP"]], where)
        if address in holders:
            raise ValueError(f"{where}: {address} is listed twice")
        holders[address] = _number(row[table.columns["Node"]], _SIGNED, MAX_PNN, where)
    return holders


# ---- ctdb -X getcapabilities, ctdb pnn, ctdb leader ---------------------------------------


@dataclass(frozen=True)
class Capabilities:
    """`leader`: the node may become leader (take the cluster lock; RECMASTER before
    4.16); `lmaster`: it may be the location master of records."""

    leader: bool
    lmaster: bool


def _plain_capabilities(lines: list[str], what: str) -> Capabilities:
    values: dict[str, bool] = {}
    for number, line in enumerate(lines, 1):
        name, sep, value = line.partition(": ")
        name = "LEADER" if name == "RECMASTER" else name
        if not sep or name not in ("LEADER", "LMASTER") or name in values:
            raise ValueError(f"{what}: unexpected line {number}: {_quote(line)}")
        values[name] = _flag(value, f"{what}, {name}", ("NO", "YES"))
    if len(values) != 2:
        raise ValueError(f"{what}: expected LEADER and LMASTER")
    return Capabilities(values["LEADER"], values["LMASTER"])


def parse_capabilities(text: str) -> Capabilities:
    """`ctdb -X getcapabilities` (or the plain form `LEADER: YES`)."""
    what = "ctdb getcapabilities"
    lines = _lines(text, what)
    if not lines[0].startswith(SEP):
        return _plain_capabilities(lines, what)
    header = _fields(lines[0], 1, what)
    leader = "LEADER" if "LEADER" in header else "RECMASTER"
    table = _table(text, what, (leader, "LMASTER"), 1)
    if len(table.rows) != 1:
        raise ValueError(f"{what}: expected one row of values, found {len(table.rows)}")
    row = table.rows[0][1]
    return Capabilities(_flag(row[table.columns[leader]], f"{what}, {leader}"),
                        _flag(row[table.columns["LMASTER"]], f"{what}, LMASTER"))


def _single(text: str, what: str) -> str:
    lines = _lines(text, what)
    if len(lines) != 1:
        raise ValueError(f"{what}: expected one line, found {len(lines)}")
    return lines[0]


def parse_pnn(text: str) -> int:
    """`ctdb pnn`: this node's number."""
    return _number(_single(text, "ctdb pnn"), _UNSIGNED, MAX_PNN, "ctdb pnn")


def parse_leader(text: str) -> int | None:
    """`ctdb leader`: the leader's pnn, None while there is none (`UNKNOWN`)."""
    line = _single(text, "ctdb leader")
    return None if line == "UNKNOWN" else _number(line, _UNSIGNED, MAX_PNN, "ctdb leader")

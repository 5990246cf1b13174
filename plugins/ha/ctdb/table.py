"""The agent.toml `[ctdb]` table: what it may say, every problem with its key.

The values end up in CTDB's own files (`plugins.ha.ctdb.render`), so each is checked
against what CTDB 4.17 (Debian 12) and 4.22 (Debian 13) read back unchanged:

- `nodes`: CTDB numbers nodes by their line in /etc/ctdb/nodes (the PNN), and a line
  starting with `#` is a deleted node that keeps its number (`ctdb_read_nodes_file`,
  4.17 ctdb/common/ctdb_util.c; `ctdb_parse_nodes_lines`, 4.22 ctdb/conf/node.c). An
  entry is an address (`10.0.0.1`) or a deleted node (`#10.0.0.1`).
- `cluster_lock`: ctdb.conf is read by `tini_parse` (lib/util/tini.c), which folds runs
  of white space into one and treats a trailing backslash as a line continuation; a
  value starting with `!` is a mutex helper command split on spaces and tabs, without
  shell quoting (`cluster_mutex_helper_args_cmd`, ctdb/server/ctdb_cluster_mutex.c),
  anything else is a file handed whole to `ctdb_mutex_fcntl_helper`.
- `keepalive_interval` / `keepalive_limit`: the tunables KeepaliveInterval (whole
  seconds) and KeepaliveLimit, unsigned integers (`tunable_option`, ctdb/common/tunable.c;
  CTDB's defaults are 5 and 5).
- `log_level`: a name of `log_string_map` (ctdb/common/logging.c).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from smbgw_agent.model.errors import FieldError
from smbgw_agent.model.fields import REQUIRED, FieldProblems, Table, typename
from smbgw_agent.model.units import parse_duration

from ..table import interface_name

SECTION = "ctdb"
MAX_NODES = 64
LOG_LEVELS = ("ERROR", "WARNING", "NOTICE", "INFO", "DEBUG")
MAX_LOCK = 1024
DELETED = "#"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def node_address_problem(ip: IPAddress) -> str | None:
    """Why `ip` cannot be a node's private address, or None."""
    for kind, bad in (("loopback", ip.is_loopback), ("multicast", ip.is_multicast),
                      ("unspecified", ip.is_unspecified)):
        if bad:
            article = "an" if kind[0] in "aeiou" else "a"
            return f"{ip} is {article} {kind} address; a node needs an address the other nodes reach"
    if ip == ipaddress.IPv4Address("255.255.255.255"):
        return "255.255.255.255 is the limited broadcast address"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_link_local:
            return f"{ip} is link-local; CTDB's nodes file has no way to name the interface (no %scope)"
        if ip.ipv4_mapped is not None:
            return f"{ip} is an IPv4-mapped address; write {ip.ipv4_mapped}"
    return None


def node_entry(value: object) -> str:
    """`ADDR` (a node) or `#ADDR` (a deleted node keeping its line), normalised."""
    if not isinstance(value, str):
        raise FieldError(f"must be an address string such as \"10.0.0.1\" (or \"#10.0.0.1\" for a deleted node), "
                         f"not {typename(value)}")
    deleted = value.startswith(DELETED)
    text = value[1:] if deleted else value
    if "%" in text or not 0 < len(text) <= 45:
        raise FieldError(f"{value[:60]!r} is not an IP address")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError as exc:
        hint = " (no space after '#')" if deleted and text[:1].isspace() else ""
        raise FieldError(f"{value[:60]!r} is not an IP address{hint}") from exc
    problem = node_address_problem(ip)
    if problem:
        raise FieldError(problem)
    return f"{DELETED if deleted else ''}{ip}"


def cluster_lock(value: object) -> str:
    """A lock file (an absolute path) or `!/path/to/helper ARGS`, as ctdb.conf reads it back."""
    if not isinstance(value, str):
        raise FieldError(f"must be a path or \"!helper args\", not {typename(value)}")
    if not value:
        raise FieldError("must not be empty: a cluster without a lock has no split-brain protection")
    if len(value) > MAX_LOCK:
        raise FieldError(f"is too long ({len(value)} characters; at most {MAX_LOCK})")
    if not value.isprintable():
        raise FieldError("contains control or non-printing characters (tabs, newlines, ...)")
    if value != value.strip():
        raise FieldError("has leading or trailing white space, which ctdb.conf drops")
    if "  " in value:
        raise FieldError("has a run of spaces, which ctdb.conf folds into one")
    if value.endswith("\\"):
        raise FieldError("ends with a backslash, which ctdb.conf reads as a line continuation")
    if value.startswith("!"):
        command = value[1:]
        if not command or command[0] == " ":
            raise FieldError("a helper is written \"!/path/to/helper args\", the program right after '!'")
        program = command.split(" ")[0]
        if not program.startswith("/") or program.endswith("/"):
            raise FieldError(f"the helper {program[:60]!r} must be an absolute path to a program")
        return value
    if not value.startswith("/"):
        raise FieldError(f"{value[:60]!r} must be an absolute path (a file on a cluster file system) or "
                         "\"!/path/to/helper args\"")
    if value.endswith("/"):
        raise FieldError(f"{value[:60]!r} names a directory; the lock is a file")
    return value


def keepalive_interval(value: object) -> int:
    seconds = parse_duration(value, 1.0, 3600.0)
    if seconds != int(seconds):
        raise FieldError(f"{seconds:g}s: CTDB's KeepaliveInterval counts whole seconds")
    return int(seconds)


def log_level(value: object) -> str:
    if not isinstance(value, str) or value.upper() not in LOG_LEVELS:
        shown = repr(value[:40]) if isinstance(value, str) else typename(value)
        raise FieldError(f"{shown} must be one of: {', '.join(LOG_LEVELS)}")
    return value.upper()


def _nodes(value: object) -> list[str]:
    """The whole list: every entry's problem, then a repeated live node (a deleted one
    may repeat: a node deleted at one line can come back at the end)."""
    if not isinstance(value, list):
        raise FieldError(f"must be a list of addresses, not {typename(value)}")
    if not 1 <= len(value) <= MAX_NODES:
        raise FieldError(f"has {len(value)} entries; 1 to {MAX_NODES}")
    nodes: list[str] = []
    problems: list[tuple[str, str | None, bool]] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(value, 1):
        try:
            entry = node_entry(item)
        except FieldError as exc:
            problems.append((f"entry {index}: {exc}", None, False))
            continue
        nodes.append(entry)
        if entry in seen and not entry.startswith(DELETED):
            problems.append((f"entry {index}: {entry} is entry {seen[entry]} too; a node has one line", None, False))
        seen.setdefault(entry, index)
    if not problems and all(entry.startswith(DELETED) for entry in nodes):
        problems.append(("every node is deleted ('#'); at least one must be live", None, False))
    if problems:
        raise FieldProblems(problems)
    return nodes


def parse_agent_table(data: Mapping[str, Any]) -> dict[str, Any]:
    table = Table(data)
    defaults = CtdbSettings(nodes=(), cluster_lock="")
    parsed = {
        "nodes": table.value("nodes", _nodes, REQUIRED),
        "public_interface": table.value("public_interface", interface_name, None),
        "cluster_lock": table.value("cluster_lock", cluster_lock, REQUIRED),
        "keepalive_interval": table.value("keepalive_interval", keepalive_interval, defaults.keepalive_interval),
        "keepalive_limit": table.integer("keepalive_limit", defaults.keepalive_limit, minimum=1, maximum=100),
        "log_level": table.value("log_level", log_level, defaults.log_level),
    }
    table.done()
    return parsed


@dataclass(frozen=True)
class CtdbSettings:
    """agent.toml `[ctdb]`, as `parse_agent_table` returned it.

    `nodes`: the private addresses in PNN order, `#ADDR` for a deleted node;
    `public_interface`: the interface of a share's `[ha] vip` that names none;
    `cluster_lock`: ctdb.conf `[cluster] cluster lock`; `keepalive_interval` (whole
    seconds) and `keepalive_limit`: the tunables; `log_level`: ctdb.conf `[logging] log
    level`."""

    nodes: tuple[str, ...]
    cluster_lock: str
    public_interface: str | None = None
    keepalive_interval: int = 1
    keepalive_limit: int = 3
    log_level: str = "NOTICE"

    @property
    def live_nodes(self) -> tuple[str, ...]:
        return tuple(entry for entry in self.nodes if not entry.startswith(DELETED))

    @classmethod
    def from_config(cls, sections: Mapping[str, Any]) -> CtdbSettings:
        """The validated `[ctdb]` table; ValueError when agent.toml has none (the node is
        not clustered: ask `SECTION in sections` first)."""
        data = sections.get(SECTION)
        if not isinstance(data, Mapping):
            raise ValueError("agent.toml has no [ctdb] table: this node is not in a CTDB cluster")
        known = {key: data[key] for key in cls.__dataclass_fields__ if key in data}
        known["nodes"] = tuple(known.get("nodes", ()))
        return cls(**known)

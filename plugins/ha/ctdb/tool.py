"""The `ctdb` command: what the cluster looks like, and the few verbs the agent uses.

Every reading goes through the agent's runner (argument lists, time limits) and CTDB's
machine-readable output (`-X`) where it has one, parsed as untrusted input by `status`.
The recovery mode appears only in plain `ctdb status` ("Recovery mode:NORMAL (0)").
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from smbgw_agent.effects.runner import CommandError, Runner

from .status import NodeStatus, parse_ips, parse_pnn, parse_recmode, parse_status

CTDB = "ctdb"
TIMEOUT = 10.0
MAX_OUTPUT = 4 << 20


class CtdbError(Exception):
    """ctdb could not be asked, or answered something that is not its documented output."""


def _ctdb(runner: Runner, *args: str, check: bool = True, timeout: float = TIMEOUT) -> str:
    try:
        result = runner.run([CTDB, *args], timeout=timeout, check=False, max_output=MAX_OUTPUT)
    except CommandError as exc:
        raise CtdbError(f"ctdb {' '.join(args)}: {exc}") from exc
    if check and not result.ok:
        said = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise CtdbError(f"ctdb {' '.join(args)} failed (exit {result.returncode}): "
                        f"{said[0][:200] if said else 'no output'}")
    return result.stdout


@dataclass(frozen=True)
class Cluster:
    """One reading of the cluster, from this node's ctdbd."""

    pnn: int
    nodes: tuple[NodeStatus, ...]
    addresses: dict[str, int]  # public address -> pnn holding it (-1: none)
    recovery: bool
    read_at: float = field(default_factory=time.time)

    def node(self, pnn: int) -> NodeStatus | None:
        return next((n for n in self.nodes if n.pnn == pnn), None)

    @property
    def this(self) -> NodeStatus | None:
        return self.node(self.pnn)

    def held_by(self, pnn: int) -> list[str]:
        return sorted(address for address, holder in self.addresses.items() if holder == pnn)


def read_cluster(runner: Runner) -> Cluster:
    """`ctdb pnn`, `ctdb -X status`, `ctdb -X ip all`, `ctdb status` (for the recovery mode)."""
    try:
        pnn = parse_pnn(_ctdb(runner, "pnn"))
        nodes = parse_status(_ctdb(runner, "-X", "status"))
        addresses = parse_ips(_ctdb(runner, "-X", "ip", "all"))
        recovery = parse_recmode(_ctdb(runner, "status"))
    except ValueError as exc:
        raise CtdbError(f"ctdb answered something unexpected: {exc}") from exc
    return Cluster(pnn, tuple(nodes), addresses, recovery)


def disable(runner: Runner) -> None:
    """This node gives its public addresses to the others and takes none (`ctdb disable`)."""
    _ctdb(runner, "disable", timeout=60.0)


def enable(runner: Runner) -> None:
    _ctdb(runner, "enable", timeout=60.0)


def move_address(runner: Runner, address: str, pnn: int) -> None:
    _ctdb(runner, "moveip", address, str(pnn), timeout=60.0)


def reload_nodes(runner: Runner) -> None:
    _ctdb(runner, "reloadnodes", timeout=60.0)


def reload_addresses(runner: Runner) -> None:
    _ctdb(runner, "reloadips", timeout=60.0)


def set_tunables(runner: Runner, values: Sequence[tuple[str, int]]) -> None:
    for name, value in values:
        _ctdb(runner, "setvar", name, str(value))

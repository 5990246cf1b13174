"""The `ctdb` command: what the cluster looks like, and the few verbs the agent uses.

Every reading goes through the agent's runner (argument lists, time limits) and CTDB's
machine-readable output (`-X`) where it has one, parsed as untrusted input by `status`.
The recovery mode appears only in plain `ctdb status` ("Recovery mode:NORMAL (0)").
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from smbgw_agent.effects.runner import CommandError, Runner

from .status import (
    Capabilities,
    NodeStatus,
    parse_capabilities,
    parse_ips,
    parse_leader,
    parse_pnn,
    parse_recmode,
    parse_status,
)

CTDB = "ctdb"
TIMEOUT = 10.0
UNEXPECTED = "ctdb answered something unexpected"
MAX_OUTPUT = 4 << 20


class CtdbError(Exception):
    """ctdb could not be asked, or answered something that is not its documented output."""


def _ctdb(runner: Runner, *args: str, check: bool = True, timeout: float | None = None) -> str:
    command = f"{CTDB} {' '.join(args)}"
    try:
        result = runner.run([CTDB, *args], timeout=timeout or TIMEOUT, check=False, max_output=MAX_OUTPUT)
    except CommandError as exc:
        said = str(exc)
        raise CtdbError(said if said.startswith(command) else f"{command}: {said}") from exc
    if check and not result.ok:
        lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise CtdbError(f"{command} failed (exit {result.returncode}): {lines[0][:200] if lines else 'no output'}")
    return result.stdout


@dataclass(frozen=True)
class Cluster:
    """One reading of the cluster, from this node's ctdbd."""

    pnn: int
    nodes: tuple[NodeStatus, ...]
    addresses: dict[str, int]  # public address -> pnn holding it (-1: none)
    recovery: bool
    started_at: float | None = None  # when this node's ctdbd started (Unix time), if known
    leader: int | None = None  # the node holding the cluster lock; None while there is none or unknown
    capabilities: Capabilities | None = None  # this node's (may it lead, may it be a location master)
    read_at: float = field(default_factory=time.time)

    def node(self, pnn: int) -> NodeStatus | None:
        return next((n for n in self.nodes if n.pnn == pnn), None)

    @property
    def this(self) -> NodeStatus | None:
        return self.node(self.pnn)

    def signature(self) -> tuple[object, ...]:
        """What a change of calls for a pass (not the time it was read)."""
        return (self.pnn, tuple((n.pnn, n.state) for n in self.nodes), tuple(sorted(self.addresses.items())),
                self.recovery, self.started_at, self.leader, self.capabilities)

    def held_by(self, pnn: int) -> list[str]:
        return sorted(address for address, holder in self.addresses.items() if holder == pnn)


def read_cluster(runner: Runner) -> Cluster:
    """`ctdb pnn`, `ctdb -X status`, `ctdb -X ip`, `ctdb status` (for the recovery mode),
    and, for the status view only, `ctdb leader` and `ctdb -X getcapabilities` (their
    failure leaves them unknown rather than the whole reading)."""
    try:
        pnn = parse_pnn(_ctdb(runner, "pnn"))
        nodes = parse_status(_ctdb(runner, "-X", "status"))
        addresses = parse_ips(_ctdb(runner, "-X", "ip"))  # this node's view: `ip all` would wait on a cut node
        recovery = parse_recmode(_ctdb(runner, "status"))
        started = process_start(parse_pnn(_ctdb(runner, "getpid")))
    except ValueError as exc:
        raise CtdbError(f"{UNEXPECTED}: {exc}") from exc
    leader: int | None = None
    capabilities: Capabilities | None = None
    with contextlib.suppress(CtdbError, ValueError):
        leader = parse_leader(_ctdb(runner, "leader"))
    with contextlib.suppress(CtdbError, ValueError):
        capabilities = parse_capabilities(_ctdb(runner, "-X", "getcapabilities"))
    return Cluster(pnn, tuple(nodes), addresses, recovery, started, leader, capabilities)


def process_start(pid: int, proc: Path = Path("/proc")) -> float | None:
    """When process `pid` started, as Unix time: its start in clock ticks after boot
    (/proc/PID/stat, field 22) plus the boot time (/proc/stat btime). None if unknown."""
    try:
        stat = (proc / str(pid) / "stat").read_text(encoding="ascii", errors="replace")
        ticks = int(stat[stat.rindex(")") + 2:].split()[19])
        boot = next(int(line.split()[1]) for line in (proc / "stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def running(runner: Runner) -> bool:
    """ctdbd has finished starting up (`ctdb runstate` says RUNNING): it accepts clients,
    such as a clustered smbd."""
    try:
        return _ctdb(runner, "runstate").strip().upper() == "RUNNING"
    except CtdbError:
        return False


def disable(runner: Runner) -> None:
    """This node gives its public addresses to the others and takes none (`ctdb disable`)."""
    _ctdb(runner, "disable", timeout=60.0)


def enable(runner: Runner) -> None:
    _ctdb(runner, "enable", timeout=60.0)


# `ctdb moveip`'s control time limit. Its release and takeover run the nodes' releaseip
# and takeip event scripts, which a loaded node can take seconds over; a limit that
# expires between the two leaves the address on no node until moveip's own retry (3 s
# later) or the next takeover run. CTDB 4.17 also keeps takeover runs disabled for twice
# the limit after a move (4.20 re-enables them when the move is done), so a node that
# fails in those 10 s fails over when they end.
MOVE_TIME_LIMIT = 5


def move_address(runner: Runner, address: str, pnn: int) -> None:
    """`ctdb moveip`: release `address` where it is held, take it on node `pnn`."""
    _ctdb(runner, "-t", str(MOVE_TIME_LIMIT), "moveip", address, str(pnn), timeout=60.0)


def reload_nodes(runner: Runner) -> None:
    _ctdb(runner, "reloadnodes", timeout=60.0)


def reload_addresses(runner: Runner) -> None:
    _ctdb(runner, "reloadips", timeout=60.0)


def set_tunables(runner: Runner, values: Sequence[tuple[str, int]]) -> None:
    for name, value in values:
        _ctdb(runner, "setvar", name, str(value))

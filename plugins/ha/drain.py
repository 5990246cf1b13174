"""`smbgwctl drain` / `undrain`: take the node out of service for maintenance and back.

Draining is a state, not an action: the node records it (it survives an agent restart),
and every pass from then on releases the node's addresses, exactly as when smbd is down.
What the command itself does is wait and tell: one line a second with what is still
held and who is still connected, until the node holds no address and no SMB session
remains, or the time is up (then it lists who is still connected).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from smbgw_agent.effects.runner import CommandError, Runner
from smbgw_agent.model.paths import Paths
from smbgw_agent.observe.smbstatus import SmbstatusError, parse_smbstatus
from smbgw_agent.platform.commands import CommandRefused
from smbgw_agent.platform.context import PassContext
from smbgw_agent.platform.jobs import Job, JobProgress

from .ctdb import tool

log = logging.getLogger(__name__)
PLUGIN = "vip"
DEFAULT_TIMEOUT = 300.0
POLL = 1.0
MAX_SHOWN = 10
SMBSTATUS_MAX_OUTPUT = 64 << 20


class DrainTimeout(Exception):
    """The node still serves someone when the drain's time is up."""


def sessions(paths: Paths, runner: Runner) -> list[str]:
    """Who is connected ("alice from 192.0.2.7"), from `smbstatus --json`."""
    try:
        result = runner.run(["smbstatus", "-s", str(paths.smb_conf), "--json"], timeout=20,
                            max_output=SMBSTATUS_MAX_OUTPUT)
        return parse_smbstatus(result.stdout).clients
    except (CommandError, SmbstatusError) as exc:
        raise RuntimeError(f"cannot list SMB sessions: {exc}") from exc


def _shown(items: list[str]) -> str:
    more = f" and {len(items) - MAX_SHOWN} more" if len(items) > MAX_SHOWN else ""
    return ", ".join(items[:MAX_SHOWN]) + more


@dataclass
class DrainWait:
    """The job behind `smbgwctl drain`: wait until nothing is held and nobody connected."""

    held: Callable[[], list[str]]        # addresses this node still holds
    connected: Callable[[], list[str]]   # SMB sessions
    timeout: float = DEFAULT_TIMEOUT
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    def __call__(self, progress: JobProgress) -> dict[str, Any]:
        start = self.clock()
        while True:
            held, connected = self.held(), self.connected()
            waited = self.clock() - start
            if not held and not connected:
                return {"text": f"drained after {waited:.0f}s: this node holds no address and serves no session",
                        "held": [], "sessions": []}
            line = "waiting:"
            if held:
                line += f" {len(held)} address(es) still held ({_shown(held)})"
            if connected:
                line += f"{',' if held else ''} {len(connected)} SMB session(s) ({_shown(connected)})"
            progress.report(f"{line} [{waited:.0f}s of {self.timeout:.0f}s]")
            if waited >= self.timeout or progress.expired:
                still = (f"addresses still held: {_shown(held)}; " if held else "") + \
                        (f"still connected: {_shown(connected)}" if connected else "")
                raise DrainTimeout(f"the node is drained (its addresses are released), but after {waited:.0f}s "
                                   f"it still serves: {still.rstrip('; ')}")
            self.sleep(POLL)


# ---- in a CTDB cluster -------------------------------------------------------------------


def _target_pnn(cluster: tool.Cluster, target: str) -> int:
    """`--target` as a pnn or a node's private address; it must be able to take addresses."""
    node = next((n for n in cluster.nodes if target in (str(n.pnn), n.address)), None)
    if node is None:
        known = ", ".join(f"{n.pnn} ({n.address})" for n in cluster.nodes)
        raise CommandRefused(f"--target {target}: no such node in the cluster (nodes: {known})")
    if node.pnn == cluster.pnn:
        raise CommandRefused(f"--target {target} is this node")
    if node.state != "ok":
        raise CommandRefused(f"--target {target}: node {node.pnn} is {node.state}, it cannot take addresses")
    return node.pnn


def cluster_drain(ctx: PassContext, timeout: float, target: str | None, force: bool) -> Job:
    """`ctdb disable`: CTDB moves this node's public addresses to the healthy nodes (to
    `--target` first, if given), then the wait for sessions to end."""
    runner, paths = ctx.runner, ctx.paths
    try:
        cluster = tool.read_cluster(runner)
    except tool.CtdbError as exc:
        raise CommandRefused(f"cannot read the CTDB cluster: {exc}") from exc
    pnn, held = cluster.pnn, cluster.held_by(cluster.pnn)
    target_pnn = _target_pnn(cluster, target) if target else None
    others = [n for n in cluster.nodes if n.pnn != pnn and n.state == "ok"]
    if held and not others and not force:
        raise CommandRefused(f"no other node of the cluster is healthy: draining would leave {', '.join(held)} "
                             "with no holder. Fix the other nodes first, or drain with --force")

    def run(progress: JobProgress) -> dict[str, Any]:
        # Each address is moved first (one takeover, the new holder answers at once), then
        # the node is disabled; `ctdb disable` alone releases the addresses and leaves them
        # unheld until the next takeover run, seconds in which clients get no answer.
        for index, address in enumerate(held):
            to = target_pnn if target_pnn is not None else others[index % len(others)].pnn if others else None
            if to is None:
                break
            progress.report(f"moving {address} to node {to}")
            try:
                tool.move_address(runner, address, to)
            except tool.CtdbError as exc:
                # The disable below still moves it, in CTDB's own takeover run: a drain
                # must not stop half way because one move did not go as planned.
                log.warning("drain: %s; ctdb disable moves %s instead", exc, address)
                progress.report(f"{exc}; ctdb disable moves {address} instead")
        progress.report("ctdb disable")
        tool.disable(runner)
        wait = DrainWait(lambda: tool.read_cluster(runner).held_by(pnn), lambda: sessions(paths, runner), timeout)
        return wait(progress)

    return Job("vip:drain", run, timeout + 180.0, "", PLUGIN)


def cluster_undrain(ctx: PassContext) -> Job:
    runner = ctx.runner

    def run(_progress: JobProgress) -> dict[str, Any]:
        tool.enable(runner)
        return {"text": "undrained: ctdb enable; CTDB gives this node addresses again"}

    return Job("vip:undrain", run, 120.0, "", PLUGIN)

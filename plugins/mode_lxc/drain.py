"""`smbgwctl drain --target NODE`, the LXC mode's part: move this node's share containers
to another node of the cluster with `pct migrate VMID NODE --restart` (a container has no
live migration: it is shut down, moved and started there; clients reconnect to the same
address), one after another, before the address manager's part releases addresses and
waits for sessions.

A container can move only when its data can: its bind mount must be marked `shared=1`,
which the agent writes for a share with `[ha] proxmox_ha = true` (the share's directory
on storage every node mounts). Proxmox refuses the others, and so does the drain, up
front, unless `--force` leaves them here. A container under Proxmox HA is moved by HA
(`pct migrate` asks it to); the drain waits until the cluster lists it on the target.

A drained node makes no container for a new share until `smbgwctl undrain` (as Proxmox
starts no HA service on a node in maintenance): the drain is recorded in the agent's
state directory (`DrainRecord`), so it holds across restarts of the agent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from smbgw_agent.effects.runner import CommandError
from smbgw_agent.platform.jobs import Job, JobProgress

from ..proxmox.drain import DrainRecord, await_arrival, check_target
from ..proxmox.guestconf import GuestConfig, GuestConfigError, parse_property_string
from ..proxmox.vmlist import VmlistError
from .pct import MIGRATE_TIMEOUT, Pct

__all__ = ["JOB", "DrainRecord", "check_target", "migrate_job", "movable"]

JOB = "lxc:drain"
ARRIVAL_POLL = 1.0
_NODE_NAME = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")


def movable(config: GuestConfig) -> bool:
    """Proxmox migrates a container with a bind mount only when it is marked shared."""
    try:
        mount = parse_property_string(config.get("mp0") or "", "volume")
    except GuestConfigError:
        return False
    return not mount.get("volume", "").startswith("/") or mount.get("shared") == "1"


def migrate_job(pct: Pct, vmlist: Path, containers: Mapping[int, str], target: str,
                left: Mapping[int, str]) -> Job:
    """`containers`: VMID -> share; `left`: the ones --force leaves here, with why."""

    def run(progress: JobProgress) -> dict[str, Any]:
        moved, failed = [], {}
        for vmid, share in sorted(containers.items()):
            progress.report(f"migrating container {vmid} (share {share}) to {target}")
            try:
                pct.migrate(vmid, target)
                await_arrival(vmlist, vmid, target, progress, "container", MIGRATE_TIMEOUT)
                moved.append(vmid)
            except (CommandError, TimeoutError, VmlistError) as exc:
                failed[vmid] = str(exc)
        text = f"moved container(s) {', '.join(map(str, moved))} to {target}" if moved else "moved no container"
        if left:
            text += f"; left here: {', '.join(f'{vmid} ({why})' for vmid, why in sorted(left.items()))}"
        if failed:
            raise RuntimeError(f"{text}; could not move: " + "; ".join(f"{vmid}: {why}" for vmid, why in
                                                                        sorted(failed.items())))
        return {"text": text, "moved": moved, "target": target}

    return Job(JOB, run, MIGRATE_TIMEOUT * max(1, len(containers)) + 60.0)



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

import json
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from smbgw_agent.effects.fileio import atomic_write
from smbgw_agent.effects.runner import CommandError
from smbgw_agent.platform.commands import CommandRefused
from smbgw_agent.platform.jobs import Job, JobProgress

from ..proxmox.guestconf import GuestConfig, GuestConfigError, parse_property_string
from ..proxmox.vmlist import VmlistError, read_vmlist
from .pct import MIGRATE_TIMEOUT, Pct

JOB = "lxc:drain"
ARRIVAL_POLL = 1.0
_NODE_NAME = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")


class DrainRecord:
    """Whether this node is drained, as the LXC mode keeps it: a small JSON file
    (`{"since": EPOCH, "target": NODE or null}`). A file that cannot be read counts as
    drained: making a container on a node an administrator is emptying is the worse
    mistake, and the message says which file to look at."""

    NAME = "lxc-drained.json"

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / self.NAME

    def read(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            return {"since": None, "target": None, "error": str(exc)}
        try:
            value = json.loads(text[:4096])
        except ValueError:
            value = None
        if not isinstance(value, dict):
            return {"since": None, "target": None, "error": f"{self.path} is not a drain record"}
        return value

    def set(self, target: str | None, now: float) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps({"since": now, "target": target}) + "\n", mode=0o600)

    def clear(self) -> bool:
        """True if the node was drained."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True

    def refusal(self) -> str | None:
        """Why a new container is not made here now, or None."""
        record = self.read()
        if record is None:
            return None
        since = record.get("since")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) \
            else f"unknown ({record.get('error') or 'no time recorded'})"
        return (f"this node is drained (smbgwctl drain, since {when}): containers for new shares are made after "
                f"smbgwctl undrain (or place the share on another node); the record is {self.path}")


def movable(config: GuestConfig) -> bool:
    """Proxmox migrates a container with a bind mount only when it is marked shared."""
    try:
        mount = parse_property_string(config.get("mp0") or "", "volume")
    except GuestConfigError:
        return False
    return not mount.get("volume", "").startswith("/") or mount.get("shared") == "1"


def check_target(target: str, here: str | None, pve: Path) -> None:
    if not _NODE_NAME.fullmatch(target):
        raise CommandRefused(f"--target {target[:80]!r} is not a Proxmox node name")
    if target == here:
        raise CommandRefused(f"--target {target} is this node")
    if not (pve / "nodes" / target).is_dir():
        raise CommandRefused(f"--target {target}: no such node in the cluster (/etc/pve/nodes)")


def migrate_job(pct: Pct, vmlist: Path, containers: Mapping[int, str], target: str,
                left: Mapping[int, str]) -> Job:
    """`containers`: VMID -> share; `left`: the ones --force leaves here, with why."""

    def run(progress: JobProgress) -> dict[str, Any]:
        moved, failed = [], {}
        for vmid, share in sorted(containers.items()):
            progress.report(f"migrating container {vmid} (share {share}) to {target}")
            try:
                pct.migrate(vmid, target)
                _await_arrival(vmlist, vmid, target, progress)
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


def _await_arrival(vmlist: Path, vmid: int, target: str, progress: JobProgress,
                   clock: Callable[[], float] = time.monotonic) -> None:
    """Until the cluster lists the container on `target` (at once after a plain migration;
    an HA migration returns when HA has been asked, and HA does it seconds later)."""
    deadline = clock() + MIGRATE_TIMEOUT
    while clock() < deadline and not progress.expired:
        guest = read_vmlist(vmlist).get(vmid)
        if guest is not None and guest.node == target:
            return
        time.sleep(ARRIVAL_POLL)
    raise TimeoutError(f"container {vmid} is not on {target} after {MIGRATE_TIMEOUT:g}s")

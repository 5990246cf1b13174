"""What draining a node means for both guest modes: the record that this node is drained
(no guest is made here for a new share until `smbgwctl undrain`, as Proxmox starts no HA
service on a node in maintenance; kept in the agent's state directory, so it holds
across restarts of the agent), the check of `--target`, and waiting until the cluster
lists a moved guest on its new node. Each mode moves its own guests (plugins/mode_lxc/
drain.py, plugins/mode_vm/drain.py); the `proxmox` plugin owns `smbgwctl undrain`."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smbgw_agent.effects.fileio import atomic_write
from smbgw_agent.platform.commands import CommandRefused
from smbgw_agent.platform.jobs import JobProgress

from .vmlist import read_vmlist

ARRIVAL_POLL = 1.0
_NODE_NAME = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")


class DrainRecord:
    """Whether this node is drained, as both guest modes keep it: a small JSON file
    (`{"since": EPOCH, "target": NODE or null}`). A file that cannot be read counts as
    drained: making a guest on a node an administrator is emptying is the worse mistake,
    and the message says which file to look at."""

    NAME = "guests-drained.json"

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
        """Why a new guest is not made here now, or None."""
        record = self.read()
        if record is None:
            return None
        since = record.get("since")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) \
            else f"unknown ({record.get('error') or 'no time recorded'})"
        return (f"this node is drained (smbgwctl drain, since {when}): containers and VMs for new shares are made "
                f"after smbgwctl undrain (or place the share on another node); the record is {self.path}")


def check_target(target: str, here: str | None, pve: Path) -> None:
    if not _NODE_NAME.fullmatch(target):
        raise CommandRefused(f"--target {target[:80]!r} is not a Proxmox node name")
    if target == here:
        raise CommandRefused(f"--target {target} is this node")
    if not (pve / "nodes" / target).is_dir():
        raise CommandRefused(f"--target {target}: no such node in the cluster (/etc/pve/nodes)")



def await_arrival(vmlist: Path, vmid: int, target: str, progress: JobProgress, guest: str, timeout: float,
                  clock: Callable[[], float] = time.monotonic) -> None:
    """Until the cluster lists the guest on `target` (at once after a plain migration; an
    HA migration or relocation returns when HA has been asked, and HA does it later)."""
    deadline = clock() + timeout
    while clock() < deadline and not progress.expired:
        listed = read_vmlist(vmlist).get(vmid)
        if listed is not None and listed.node == target:
            return
        time.sleep(ARRIVAL_POLL)
    raise TimeoutError(f"{guest} {vmid} is not on {target} after {timeout:g}s")

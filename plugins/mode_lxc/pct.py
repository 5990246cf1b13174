"""Proxmox's `pct`, run through the agent's runner: one function per subcommand the mode
uses, each with its own time limit, and the parsers of what `pct` prints.

Formats, as pve-container 5 (Proxmox VE 8) prints them (src/PVE/CLI/pct.pm):

- `pct status VMID`: `status: running` (or `stopped`), one line.
- `pct list`: a header `VMID       Status     Lock         Name` and one row per
  container of this node, printed with "%-10s %-10s %-12s %-20s"; the lock column is
  empty for an unlocked container. Nothing at all when there is none.

Only this node's containers are in `pct list`; VMIDs of the whole cluster come from
`/etc/pve/.vmlist` (plugins/proxmox/vmlist.py). A container's config is read from its
file, not through `pct config` (plugins/proxmox/guestconf.py).

Time limits: a create unpacks a template (minutes on slow storage); a start boots
systemd; a stop waits for it. None of them runs inside a reconcile pass: the mode runs
them as jobs (plugins/mode_lxc/plugin.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from smbgw_agent.effects.runner import Completed, Runner

PCT = "pct"
CREATE_TIMEOUT = 600.0
START_TIMEOUT = 120.0
STOP_TIMEOUT = 120.0
DESTROY_TIMEOUT = 300.0
MIGRATE_TIMEOUT = 900.0  # a restart migration copies the root disk when it is not shared
QUICK_TIMEOUT = 60.0  # set, status, list, push
MAX_LIST_ROWS = 100_000
RUNNING, STOPPED = "running", "stopped"


class PctOutputError(ValueError):
    """`pct` printed something that is not its documented output."""


@dataclass(frozen=True)
class ListedContainer:
    vmid: int
    status: str
    lock: str
    name: str


def parse_status(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1 or not lines[0].startswith("status: "):
        raise PctOutputError(f"pct status printed {text[:80]!r}, not 'status: STATE'")
    state = lines[0].removeprefix("status: ").strip()
    if not (state.isascii() and state.isalpha()) or len(state) > 20:
        raise PctOutputError(f"pct status printed an unknown state {state[:40]!r}")
    return state


def parse_address(text: str) -> str | None:
    """The first address of `ip -4 -o addr show dev eth0 scope global`: one line per
    address, `2: eth0    inet 192.0.2.7/24 brd 192.0.2.255 scope global dynamic eth0...`."""
    lines = text.splitlines()
    if len(lines) > 64:
        raise PctOutputError(f"ip addr printed {len(lines)} lines for one interface")
    for line in lines:
        fields = line.split()
        if "inet" in fields[:-1]:
            try:
                return str(ipaddress.IPv4Interface(fields[fields.index("inet") + 1]))
            except ValueError:
                raise PctOutputError(f"ip addr printed {line[:80]!r}, not an address") from None
    return None


def parse_list(text: str) -> dict[int, ListedContainer]:
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return {}
    if lines[0].split() != ["VMID", "Status", "Lock", "Name"]:
        raise PctOutputError(f"pct list printed {lines[0][:80]!r}, not its header")
    if len(lines) > MAX_LIST_ROWS:
        raise PctOutputError(f"pct list printed more than {MAX_LIST_ROWS} rows")
    found = {}
    for line in lines[1:]:
        fields = line.split()
        if len(fields) == 3:
            fields.insert(2, "")
        if len(fields) != 4 or not (fields[0].isascii() and fields[0].isdigit()) or len(fields[0]) > 9 \
                or not (fields[1].isascii() and fields[1].isalpha()):
            raise PctOutputError(f"pct list printed a row {line[:80]!r} that is not 'VMID STATUS [LOCK] NAME'")
        vmid = int(fields[0])
        if vmid in found:
            raise PctOutputError(f"pct list printed VMID {vmid} twice")
        found[vmid] = ListedContainer(vmid, fields[1], fields[2], fields[3])
    return found


class Pct:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def _run(self, argv: Sequence[str], timeout: float, stdin: str | None = None) -> Completed:
        return self.runner.run([PCT, *argv], timeout=timeout, stdin=stdin)

    def create(self, argv: Sequence[str]) -> None:
        """`argv`: `guest.create_arguments`."""
        self._run(argv, CREATE_TIMEOUT)

    def set(self, argv: Sequence[str]) -> None:
        """`argv`: `guest.set_arguments`."""
        self._run(argv, QUICK_TIMEOUT)

    def start(self, vmid: int) -> None:
        self._run(["start", str(vmid)], START_TIMEOUT)

    def stop(self, vmid: int) -> None:
        self._run(["stop", str(vmid)], STOP_TIMEOUT)

    def destroy(self, vmid: int) -> None:
        """`--purge`: also out of backup jobs, replication and HA (Proxmox's own cleanup)."""
        self._run(["destroy", str(vmid), "--purge"], DESTROY_TIMEOUT)

    def unlock(self, vmid: int) -> None:
        self._run(["unlock", str(vmid)], QUICK_TIMEOUT)

    def migrate(self, vmid: int, target: str) -> None:
        """`pct migrate VMID TARGET --restart`: a running container is shut down, moved and
        started on TARGET (an HA resource: HA is asked to, and does it afterwards)."""
        self._run(["migrate", str(vmid), target, "--restart"], MIGRATE_TIMEOUT)

    def status(self, vmid: int) -> str:
        return parse_status(self._run(["status", str(vmid)], QUICK_TIMEOUT).stdout)

    def list(self) -> dict[int, ListedContainer]:
        return parse_list(self._run(["list"], QUICK_TIMEOUT).stdout)

    def push(self, vmid: int, source: str, destination: str, perms: str = "0644") -> None:
        self._run(["push", str(vmid), source, destination, "--perms", perms], QUICK_TIMEOUT)

    def address(self, vmid: int) -> str | None:
        """The IPv4 address with prefix the container's eth0 holds (DHCP), None without one."""
        result = self.exec(vmid, ["ip", "-4", "-o", "addr", "show", "dev", "eth0", "scope", "global"])
        return parse_address(result.stdout)

    def exec(self, vmid: int, argv: Sequence[str], timeout: float = QUICK_TIMEOUT, stdin: str | None = None,
             check: bool = True, secrets: Iterable[str] = ()) -> Completed:
        """A command inside the container (`pct exec VMID -- ARGV`): argv as a list, never
        a shell line; what goes to its stdin (a password) never appears in argv, and
        `secrets` are redacted from what the runner keeps of its output."""
        return self.runner.run([PCT, "exec", str(vmid), "--", *argv], timeout=timeout, stdin=stdin, check=check,
                               secrets=secrets)

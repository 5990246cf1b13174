"""TEST STAND-IN for Proxmox VE's `ha-manager`: never shipped, never installed on a node.

Proxmox HA does not exist off Proxmox. This keeps its resource list the way
pve-ha-manager does, `/etc/pve/ha/resources.cfg` under SMBGW_PCT_ROOT (a pve-common
SectionConfig: `ct: 9000` then tab-indented `key value` lines, a blank line between
resources), for the subcommands the LXC mode and its tests use: `add`, `remove`, `set`,
`config`, for containers (`ct:VMID`, the pct stand-in) and VMs (`vm:VMID`, the qm stand-in,
tests/support/qm_standin). The cluster resource manager that acts on it (starting a resource on another
node after a fence) is not simulated; `pct start` and `pct stop` of an HA-managed
container go through `set --state`, as Proxmox's do (pct.py).

Checked against pve-ha-manager 4.0.x (Proxmox VE 8): src/PVE/CLI/ha_manager.pm (`add`,
`remove`, `set`, `config` map to PVE/API2/HA/Resources.pm `create`, `delete`, `update`,
`index`); messages `resource ID 'SID' already defined` (create), `no such resource
'SID'` (update); a numeric SID is a guest id looked up in the cluster's guest list
(PVE/HA/Tools.pm `parse_sid`); states started, stopped, enabled, disabled, ignored
(PVE/HA/Resources.pm). Every error exits 255 as Perl's `die` does. `config` prints each
resource as `SID` then its properties indented by a tab (ha_manager.pm `config`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

EXIT_ERROR = 255
STATES = ("started", "stopped", "enabled", "disabled", "ignored")
OPTIONS = {"add": ("comment", "group", "max_relocate", "max_restart", "state", "type"),
           "set": ("comment", "group", "max_relocate", "max_restart", "state", "delete", "digest"),
           "remove": (), "config": ("type",), "crm-command": ()}
CRM_COMMANDS = ("relocate", "migrate")


class HaError(Exception):
    pass


def root() -> Path:
    value = os.environ.get("SMBGW_PCT_ROOT")
    if not value:
        raise HaError("SMBGW_PCT_ROOT is not set (test stand-in for ha-manager)\n")
    return Path(value)


def resources_path(top: Path) -> Path:
    return top / "etc/pve/ha/resources.cfg"


def read(top: Path) -> dict[str, dict[str, str]]:
    path = resources_path(top)
    found: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in path.read_text().splitlines() if path.exists() else []:
        if not line.strip():
            current = None
        elif not line[0].isspace():
            kind, _, name = line.partition(":")
            current = found.setdefault(f"{kind.strip()}:{name.strip()}", {})
        elif current is not None:
            key, _, value = line.strip().partition(" ")
            current[key] = value
    return found


def write(top: Path, resources: dict[str, dict[str, str]]) -> None:
    path = resources_path(top)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = ""
    for sid, properties in resources.items():
        kind, _, name = sid.partition(":")
        text += f"{kind}: {name}\n" + "".join(f"\t{k} {v}\n" for k, v in sorted(properties.items())) + "\n"
    tmp = path.with_name(f".resources.cfg.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(top: Path) -> Iterator[None]:
    """pve-ha-manager's `lock_ha_domain`."""
    lock_dir = top / "run/lock"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with (lock_dir / "ha-domain.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def parse_sid(top: Path, text: str) -> str:
    found = re.fullmatch(r"(?:(ct|vm):)?(\d+)", text)
    if not found:
        raise HaError("400 Parameter verification failed.\nsid: value does not look like a valid resource "
                      "id\n")
    kind, vmid = found.group(1), found.group(2)
    if kind is None:
        vmlist = top / "etc/pve/.vmlist"
        ids = json.loads(vmlist.read_text()).get("ids", {}) if vmlist.exists() else {}
        if vmid not in ids:
            raise HaError(f"unable to find VM/CT {vmid}\n")
        kind = "ct" if ids[vmid]["type"] == "lxc" else "vm"
    return f"{kind}:{vmid}"


def is_managed(top: Path, vmid: int, kind: str = "ct") -> dict[str, str] | None:
    """The HA resource `KIND:VMID` (kind `ct` for pct, `vm` for qm), or None."""
    return read(top).get(f"{kind}:{vmid}")


def set_state(top: Path, vmid: int, state: str, kind: str = "ct") -> None:
    with locked(top):
        resources = read(top)
        resources[f"{kind}:{vmid}"]["state"] = state
        write(top, resources)


def parse(command: str, argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    positional: list[str] = []
    options: dict[str, str] = {}
    args = list(argv)
    while args:
        arg = args.pop(0)
        found = re.fullmatch(r"--?([a-z_]+)(?:=(.*))?", arg)
        if not found:
            positional.append(arg)
            continue
        if found.group(1) not in OPTIONS[command]:
            raise HaError(f"Unknown option: {found.group(1)}\n400 unable to parse option\n")
        if found.group(2) is None and not args:
            raise HaError(f"Option {found.group(1)} requires an argument\n400 unable to parse option\n")
        options[found.group(1)] = found.group(2) if found.group(2) is not None else args.pop(0)
    if "state" in options and options["state"] not in STATES:
        raise HaError(f"400 Parameter verification failed.\nstate: value '{options['state']}' does not have a "
                      f"value in the enumeration '{', '.join(STATES)}'\n")
    wanted = 0 if command == "config" else 3 if command == "crm-command" else 1
    if len(positional) < wanted:
        raise HaError("400 not enough arguments\n")
    if len(positional) > wanted:
        raise HaError("400 too many arguments\n")
    return positional, options


def crm_command(top: Path, positional: list[str]) -> int:
    """`crm-command relocate|migrate SID NODE` (ha_manager.pm; API2/HA/Resources.pm
    `relocate`/`migrate`: the service must be HA managed, `service 'SID' not managed by
    HA` otherwise; the command is queued for the CRM, nothing printed). Where Proxmox's
    CRM acts seconds later on the node that runs the guest, the stand-in acts at once:
    a VM is stopped and moved with the qm stand-in's own offline migration (which makes
    the checks qemu-server makes, the directory mappings' entry for NODE among them) and
    its HA state stays `started`; there is no second node to start it on. Containers go
    through `pct migrate --restart`. A failure exits 255 with the move's message, where
    Proxmox's CRM would log it and leave the service where it is."""
    action, text, target = positional
    if action not in CRM_COMMANDS:
        raise HaError(f"400 Parameter verification failed.\ncommand: value '{action}' does not have a value in the "
                      f"enumeration '{', '.join(CRM_COMMANDS)}'\n")
    sid = parse_sid(top, text)
    if sid not in read(top):
        raise HaError(f"service '{sid}' not managed by HA\n")
    kind, _, vmid = sid.partition(":")
    here = Path(__file__).resolve().parent
    if kind == "vm":
        from ..qm_standin import qm as qmmod  # the qm stand-in imports this module: not at the top

        node = qmmod.Node.from_env()
        try:
            config = node.load(int(vmid))
            qmmod.check_mapped_dirs(node, config, target, False)  # before the CRM stops it
            if qmmod.running(node, int(vmid), config):
                qmmod.kill_vm(node, int(vmid), config)  # the CRM's stop: the requested state stays started
        except qmmod.QmError as error:
            raise HaError(str(error)) from None
        argv = [str(here.parent / "qm_standin" / "bin" / "qm"), "migrate", vmid, target]
    else:
        argv = [str(here / "bin" / "pct"), "migrate", vmid, target, "--restart"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise HaError(done.stderr or f"{' '.join(argv[1:])} failed\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if not args or args[0] not in OPTIONS:
            raise HaError(f"ERROR: unknown command 'ha-manager {args[0] if args else ''}'\n")
        command, top = args[0], root()
        positional, options = parse(command, args[1:])
        if command == "config":
            for sid, properties in read(top).items():
                if options.get("type") and not sid.startswith(options["type"] + ":"):
                    continue
                sys.stdout.write(sid + "\n" + "".join(f"\t{k} {v}\n" for k, v in sorted(properties.items())) + "\n")
            return 0
        if command == "crm-command":
            return crm_command(top, positional)
        sid = parse_sid(top, positional[0])
        with locked(top):
            resources = read(top)
            if command == "add":
                if sid in resources:
                    raise HaError(f"resource ID '{sid}' already defined\n")
                options.pop("type", None)
                resources[sid] = options
            elif command == "remove":
                if sid not in resources:
                    raise HaError(f"cannot delete service '{sid}', not HA managed!\n")
                del resources[sid]
            else:
                if sid not in resources:
                    raise HaError(f"no such resource '{sid}'\n")
                resources[sid].update({k: v for k, v in options.items() if k not in ("delete", "digest")})
            write(top, resources)
    except HaError as error:
        sys.stderr.write(str(error))
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())

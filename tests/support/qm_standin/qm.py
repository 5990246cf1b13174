"""TEST STAND-IN for Proxmox VE's `qm`: never shipped, never installed on a node.

`qm` does not exist off Proxmox, so the VM-mode plugin's tests run this instead: the
same command lines, exit codes and output formats as `qm` of Proxmox VE 8.4, carried out
with Debian 12's QEMU 7.2 under TCG (KVM does not work on the test machines). It shares
the node with the `pct` stand-in (SMBGW_PCT_ROOT stands for `/`, SMBGW_PCT_NODE names the
node, one /etc/pve/.vmlist) and refuses what it does not know (message on stderr, exit
255), so a wrong option name in the plugin fails the tests.

Checked against qemu-server 8.4.10 (commit 5ccd363, 2025-08-17, branch stable-bookworm,
the last 8.x), pve-storage 8.3.8 (1af4790), pve-guest-common 5.2.2 (58ad183, PVE::Mapping::
Dir) and pve-manager 8.4.21 (2606ac8, PVE/API2/Cluster/Mapping/Dir.pm), all on
github.com/proxmox. Each format and where it comes from:

* `qm create VMID` and disk requests in `create`/`set` (`STORAGE:cloudinit`,
  `STORAGE:SIZE`, `STORAGE:0,import-from=PATH`): API2/Qemu.pm `create_vm` and
  `create_disks`, on dir storages (volumes `VMID/vm-VMID-disk-N.raw`, the cloud-init
  drive `VMID/vm-VMID-cloudinit.qcow2,media=cdrom`), "KEY: successfully created disk
  'VOLUME'" on stdout; a VMID in use: "unable to create VM VMID - VM VMID already exists
  on node 'NODE'".
* argv: src/PVE/CLI/qm.pm `$cmddef` (positional arguments per subcommand; `guest cmd`,
  `guest exec` are a command group), options and errors as in tests/support/pvecli.py
  (PVE::JSONSchema `get_options`, 400 errors then the usage line, exit 255).
* `qm status`: `status: running|stopped` (qm.pm `status`); `--verbose`: the vmstatus
  hash, one `key: value` per line sorted by key (`print_recursive_hash`).
* `qm list`: `printf "%10s %-20s %-10s %-10s %12s %-10s"` header, rows with `%12.2f`
  BOOTDISK(GB), sorted by VMID, nothing at all without VMs (qm.pm `list`); NAME is
  `name` or `VM VMID` (QemuServer.pm `vmstatus`: with its blank, as the real one).
* `qm config`: `key: value` sorted by key, the description percent-encoded (qm.pm
  `config`, pve-common `encode_text`).
* VMID.conf under `/etc/pve/nodes/NODE/qemu-server/`: description as `#` lines at the top
  (encode_text per line), then `key: value` sorted by key (QemuServer.pm
  `write_vm_config`). `netN`: `MODEL=MAC,bridge=..,...` (print_net: the model key is an
  alias of macaddr, the rest sorted); `qm set --netN virtio,bridge=vmbr0` adds the MAC
  (API2/Qemu.pm `update_vm` -> parse_net). Other options are stored as given once their
  format checks (tags: lower-cased, sorted, de-duplicated, `;`).
* `qm clone`: API2/Qemu.pm `clone_vm`: full defaults to !template; `Linked clone feature
  is not supported for 'VOLID' (DISK)` from a VM that is not a template (dir storage's
  `clone` feature needs a base volume); `parameter 'storage' not allowed for linked
  clones`; `unable to create VM NEWID: config file already exists`; a NEWID of another
  guest (an LXC container, another node): pmxcfs refuses the config file
  (`rename ... failed - File exists`); the name defaults to `Copy-of-VM-NAME`; netN get a
  new MAC; the cloud-init drive (vm-ID-cloudinit) is always copied, as a new volume of
  the new VM; `template` is dropped. A linked clone on dir storage `local` is a qcow2 file
  `images/NEWID/vm-NEWID-disk-N.qcow2` backed by the template's base volume; its volume id
  `local:TID/base-TID-disk-N.EXT/NEWID/vm-NEWID-disk-N.qcow2` as the Dir plugin names it.
* `qm start`: `you can't start a vm if it's a template`, `VM VMID already running`
  (QemuServer.pm `vm_start`); `qm stop`/`shutdown`: `VM VMID not running` (API2/Qemu.pm);
  `qm destroy`: `VM VMID is running - destroy failed`; `qm template`: `you can't convert
  a template to a template`, `you can't convert a VM to template if VM is running`.
* Cloud-init at start (QemuServer/Cloudinit.pm `generate_nocloud`): only when the config
  has a drive whose volume is `vm-VMID-cloudinit`; user-data is the `cicustom` user
  snippet (read at start from the storage's `snippets/`: `can't find file 'VOLID'`
  (PVE::Storage `abs_filesystem_path`), `VOLID is not in the snippets directory`),
  network-config is `nocloud_network` (version 1, eth N by MAC, nameserver entry with the
  config's or else the host's resolver), meta-data only `instance-id: SHA1(user+network)`
  -- no `local-hostname`: a custom user-data snippet must set `hostname` itself, exactly
  as on Proxmox. `qm set --cicustom` checks the format only (no storage or file check),
  as Proxmox's does; the snippet is read at start.
* `virtiofsN` (QemuServer/Virtiofs.pm, new in 8.4): `qm set` checks its format only
  (dirid a config id, cache auto|always|metadata|never); at start `Directory ID ID does
  not exist.`, `No directory mapping for node NODE.`, `directory mapping invalid: Path P
  does not exist` (PVE::Mapping::Dir `find_on_current_node`, `assert_valid`). A node
  made to report an older version (pvesh.py) refuses `--virtiofsN` as an unknown option,
  as a pre-8.4 qm does.
* Guest agent (QemuServer/Agent.pm, API2/Qemu/Agent.pm, QMPClient.pm): `No QEMU guest agent
  configured` when the config has no `agent`; `VM VMID is not running`; `QEMU guest agent
  is not running` when guest-ping (timeout 3 s, `qga_check_running`) fails -- this is what
  `qm guest cmd VMID ping` prints for a silent agent in 8.4, after 3 s; a command after a
  successful ping that gets no answer in 5 s (QMPClient's default): `VM VMID qmp command
  'guest-CMD' failed - got timeout`. Each request uses a fresh connection and
  guest-sync-delimited first (QMPClient `check_queue`). `qm guest cmd` prints the result
  as pretty canonical JSON, nothing for an empty object (ping); an agent error object is
  printed as the result (API2/Qemu/Agent.pm returns it unchecked). `qm guest exec`: qm.pm
  `exec`: --pass-stdin reads stdin (more than 1 MiB: `'input-data' (STDIN) is limited to
  1 MiB, aborting`); `command or input-data (or both) required`; polls guest-exec-status
  every second up to --timeout (default 30, 0 = forever), then `timeout reached,
  returning pid` and `{"pid": N}`; out-data/err-data base64-decoded as bytes (non-ASCII
  comes out UTF-8-encoded twice, as from Perl), JSON booleans as 1/0; agent errors
  `Agent error: DESC`.
* `qm migrate`: API2/Qemu.pm `migrate_vm`: `target is local node.` (400), `no such
  cluster node 'N'`, `can't migrate running VM without --online`, `Requesting HA
  migration for VM VMID to node N` for an HA resource.
* `.vmlist`: as pct.py (pmxcfs `cfs_create_vmlist_msg`), entries of type `qemu`.

How a VM runs here (and where that differs from Proxmox):

* `qm start` runs `qemu-system-x86_64 -accel tcg,thread=multi -cpu max -daemonize -pidfile
  ROOT/var/run/qemu-server/VMID.pid` in the caller's network namespace: -m from `memory`,
  -smp from sockets x cores. The guest image's kernel and initrd are booted directly
  (-kernel/-initrd, `console=ttyS0 root=/dev/vda rw net.ifnames=0`, no `init=`: systemd is
  PID 1); a real template boots from its own disk with its boot loader. The boot disk is
  attached as virtio-blk whatever its bus in the config (scsi0, virtio0, ...), the
  cloud-init seed (made with `cloud-localds`, qcow2, at the drive's volume path) as a
  read-only virtio disk instead of an IDE CD-ROM. The serial console goes to
  ROOT/var/log/qemu-server/VMID.console.log, QEMU's QMP to ROOT/var/run/qemu-server/VMID.qmp.
* net0..: a tap `tapVMIDiN` created in the caller's namespace and put on the bridge
  (`bridge 'BR' does not exist` if it is not there), virtio-net-pci with the MAC.
* `agent` enabled: `-chardev socket,path=ROOT/var/run/qemu-server/VMID.qga,server=on,
  wait=off,id=qga0 -device virtio-serial -device virtserialport,chardev=qga0,
  name=org.qemu.guest_agent.0`. Fault switch: while ROOT/.qm-standin-faults/noagent
  exists, `qm start` leaves the virtserialport out (the socket still exists: a guest
  without a running agent), so guest-ping times out. While ROOT/.qm-standin-faults/detached
  exists, a NIC's tap is left off its bridge (a guest that boots and answers its agent,
  but nobody on the bridge reaches it: smbd inside is not reachable).
* virtiofsN: virtio-9p (`-virtfs local,path=PATH,mount_tag=DIRID,security_model=
  passthrough`): virtiofsd is not packaged for Debian 12. The test image's
  /sbin/mount.virtiofs mounts 9p with that tag, so a guest's `TAG /p virtiofs ...` works.
* `qm stop` and `qm destroy` signal only the QEMU whose pid is in the pid file and whose
  /proc/PID/cmdline names this VM's own disk (SIGTERM, SIGKILL after --timeout), wait for
  it to exit and delete the taps. `qm shutdown` sends `system_powerdown` over QMP (ACPI),
  waits --timeout (default 600 s... here 180), `VM quit/powerdown failed - got timeout`,
  with --forceStop 1 it is stopped instead.
* `qm set` on a running VM writes the change straight into the config (no [PENDING]
  section, no hotplug); it takes effect at the next start. Options the stand-in does not
  know are refused as unknown (the real one has many more).
* Storages: `local` (dir, ROOT/var/lib/vz) holds images at images/VMID/ and snippets at
  snippets/; any other storage of storage.cfg with `images` content keeps its volumes as
  qcow2 files under ROOT/var/lib/qm-standin-volumes/STORAGE/. A full clone converts the
  source disk with `qemu-img convert` to qcow2.
* Task output (`create full clone of drive ...`, `generating cloud-init ISO`) is not
  printed. No snapshots, no QMP-based status (a running QEMU is `running`), no
  `--skiplock`, no hookscripts, no firewall, no replication.
* `qm migrate` does the checks, then stops the VM and moves its config to
  nodes/TARGET/qemu-server (no second node exists here).

Environment: SMBGW_PCT_ROOT, SMBGW_PCT_NODE (as pct.py); SMBGW_QM_IMAGE_DIR: the guest
image (vmlinuz, initrd.img) the VMs boot (the fixture sets it). Run as `python3 -m
tests.support.qm_standin.qm ARGS` or `bin/qm`.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..pct_standin import hamanager
from ..pct_standin import pct as pctmod
from ..pct_standin.pct import Config, encode_text, get_unique_tags, host_dns, render_vmlist
from ..pvecli import BOOL, EXIT_ERROR, INT, STR, Cli, CliError, Command, ParamError
from . import formats, pvesh
from .qga import AgentClient, AgentError

FAULTS_DIR = ".qm-standin-faults"
PING_TIMEOUT = 3.0  # QemuServer.pm qga_check_running
QMP_TIMEOUT = 5.0  # QMPClient.pm `cmd`: the default for guest commands
MAX_STDIN = 1 << 20
MAX_NET = 32
OTHER_VOLUMES = "var/lib/qm-standin-volumes"
DISK_RE = re.compile(r"(ide[0-3]|sata[0-5]|scsi([0-9]|[12][0-9]|30)|virtio([0-9]|1[0-5])|efidisk0|tpmstate0)")

QmError = CliError

CONFIG_OPTIONS: dict[str, str] = {
    "agent": STR, "balloon": INT, "bios": STR, "boot": STR, "cicustom": STR, "cipassword": STR, "citype": STR,
    "ciupgrade": BOOL, "ciuser": STR, "cores": INT, "cpu": STR, "description": STR, "machine": STR,
    "memory": STR, "name": STR, "nameserver": STR, "onboot": BOOL, "ostype": STR, "protection": BOOL,
    "scsihw": STR, "searchdomain": STR, "serial0": STR, "sockets": INT, "sshkeys": STR, "startup": STR,
    "tags": STR, "template": BOOL, "vga": STR, "vmgenid": STR,
    **{f"net{i}": STR for i in range(MAX_NET)},
    **{f"ipconfig{i}": STR for i in range(MAX_NET)},
    **{f"ide{i}": STR for i in range(4)},
    **{f"sata{i}": STR for i in range(6)},
    **{f"scsi{i}": STR for i in range(31)},
    **{f"virtio{i}": STR for i in range(16)},
    **{f"virtiofs{i}": STR for i in range(10)},
}
ENUMS: dict[str, tuple[str, ...]] = {
    "citype": ("configdrive2", "nocloud", "opennebula"),
    "ostype": ("other", "wxp", "w2k", "w2k3", "w2k8", "wvista", "win7", "win8", "win10", "win11", "l24", "l26",
               "solaris"),
}
MINIMA: dict[str, int] = {"cores": 1, "sockets": 1, "balloon": 0}
COMMANDS: dict[str, Command] = {
    "create": Command(("vmid",), {**CONFIG_OPTIONS, "start": BOOL, "pool": STR, "unique": BOOL}),
    "clone": Command(("vmid", "newid"), {"name": STR, "full": BOOL, "storage": STR, "description": STR,
                                         "format": STR, "pool": STR, "snapname": STR, "target": STR,
                                         "bwlimit": INT}),
    "set": Command(("vmid",), {**CONFIG_OPTIONS, "delete": STR, "revert": STR, "digest": STR,
                               "skiplock": BOOL, "force": BOOL}),
    "start": Command(("vmid",), {"skiplock": BOOL, "timeout": INT}),
    "stop": Command(("vmid",), {"skiplock": BOOL, "timeout": INT, "keepActive": BOOL,
                                "overrule-shutdown": BOOL}),
    "shutdown": Command(("vmid",), {"skiplock": BOOL, "timeout": INT, "forceStop": BOOL, "keepActive": BOOL}),
    "status": Command(("vmid",), {"verbose": BOOL}),
    "destroy": Command(("vmid",), {"purge": BOOL, "skiplock": BOOL, "destroy-unreferenced-disks": BOOL}),
    "config": Command(("vmid",), {"current": BOOL, "snapshot": STR}),
    "list": Command((), {"full": BOOL}),
    "migrate": Command(("vmid", "target"), {"online": BOOL, "force": BOOL, "with-local-disks": BOOL,
                                            "targetstorage": STR, "bwlimit": INT, "migration_type": STR,
                                            "migration_network": STR}),
    "template": Command(("vmid",), {"disk": STR}),
    "guest cmd": Command(("vmid", "command")),
    "guest exec": Command(("vmid", "extra-args"), {"synchronous": BOOL, "timeout": INT, "pass-stdin": BOOL},
                          optional_args=("extra-args",)),
}
AGENT_COMMANDS = ("fsfreeze-freeze", "fsfreeze-status", "fsfreeze-thaw", "fstrim", "get-fsinfo", "get-host-name",
                  "get-memory-block-info", "get-memory-blocks", "get-osinfo", "get-timezone", "get-users",
                  "get-vcpus", "info", "network-get-interfaces", "ping", "shutdown", "suspend-disk",
                  "suspend-hybrid", "suspend-ram")
CLI = Cli("qm", COMMANDS, MINIMA, {**ENUMS, "command": AGENT_COMMANDS})


def cli_for(version: tuple[int, ...]) -> Cli:
    """Before 8.4 there is no virtiofsN option."""
    if version >= (8, 4):
        return CLI
    commands = dict(COMMANDS)
    commands["set"] = Command(("vmid",), {k: v for k, v in COMMANDS["set"].options.items()
                                          if not k.startswith("virtiofs")})
    return Cli("qm", commands, MINIMA, {**ENUMS, "command": AGENT_COMMANDS})


# --------------------------------------------------------------------------- the node

class Node(pctmod.Node):
    """SMBGW_PCT_ROOT as a Proxmox node's `/`, seen from qemu-server."""

    @classmethod
    def from_env(cls) -> Node:
        base = pctmod.Node.from_env()
        node = cls(base.root, base.name)
        node.conf_dir.mkdir(parents=True, exist_ok=True)
        link = node.root / "etc/pve/qemu-server"
        if not link.is_symlink():
            link.symlink_to(f"nodes/{node.name}/qemu-server")
        node.run_dir.mkdir(parents=True, exist_ok=True)
        node.log_dir.mkdir(parents=True, exist_ok=True)
        return node

    @property
    def conf_dir(self) -> Path:
        return self.root / "etc/pve/nodes" / self.name / "qemu-server"

    @property
    def run_dir(self) -> Path:
        return self.root / "var/run/qemu-server"

    @property
    def log_dir(self) -> Path:
        return self.root / "var/log/qemu-server"

    def load(self, vmid: int) -> Config:
        try:
            return Config.parse(self.conf_path(vmid).read_text())
        except FileNotFoundError:
            raise QmError(f"Configuration file 'nodes/{self.name}/qemu-server/{vmid}.conf' does not exist\n") from None

    def register(self, vmid: int, node: str | None) -> None:
        """Put `vmid` in .vmlist (as a qemu guest of `node`) or take it out (None)."""
        with self.locked("vmlist"):
            version, ids = self.read_vmlist()
            version += 1
            if node is None:
                ids.pop(vmid, None)
            else:
                ids[vmid] = (node, "qemu", version)
            path = self.root / "etc/pve/.vmlist"
            tmp = path.with_name(f".vmlist.tmp{os.getpid()}")
            tmp.write_text(render_vmlist(version, ids))
            os.replace(tmp, path)

    def pidfile(self, vmid: int) -> Path:
        return self.run_dir / f"{vmid}.pid"

    def qga_socket(self, vmid: int) -> Path:
        return self.run_dir / f"{vmid}.qga"

    def qmp_socket(self, vmid: int) -> Path:
        return self.run_dir / f"{vmid}.qmp"

    def console_log(self, vmid: int) -> Path:
        return self.log_dir / f"{vmid}.console.log"

    def fault(self, name: str) -> bool:
        return (self.root / FAULTS_DIR / name).exists()


# --------------------------------------------------------------------------- storage

def storages(node: Node) -> dict[str, dict[str, str]]:
    """/etc/pve/storage.cfg: `TYPE: ID` then tab-indented `key value` lines."""
    path = node.root / "etc/pve/storage.cfg"
    found: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in path.read_text().splitlines() if path.exists() else []:
        if not line.strip():
            current = None
        elif not line[0].isspace():
            kind, _, ident = line.partition(":")
            current = found.setdefault(ident.strip(), {"type": kind.strip()})
        elif current is not None:
            key, _, value = line.strip().partition(" ")
            current[key] = value.strip()
    return found


def storage_config(node: Node, storage: str) -> dict[str, str]:
    config = storages(node).get(storage)
    if config is None:
        raise QmError(f"storage '{storage}' does not exist\n")
    return config


def volume_path(node: Node, volid: str) -> Path:
    """PVE::Storage::path for the stand-in's storages."""
    storage, sep, volname = volid.partition(":")
    if not sep:
        raise QmError(f"unable to parse volume ID '{volid}'\n")
    config = storage_config(node, storage)
    if config.get("type") == "dir":
        base = node.root / config.get("path", "/var/lib/vz").lstrip("/")
        if volname.startswith("snippets/"):
            return base / volname
        parts = volname.split("/")
        # images: VMID/NAME, or a linked clone BASEVMID/BASENAME/VMID/NAME
        return base / "images" / "/".join(parts[-2:])
    return node.root / OTHER_VOLUMES / storage / volname


def vtype(volid: str) -> str:
    volname = volid.partition(":")[2]
    if volname.startswith("snippets/"):
        return "snippets"
    return "images"


def drives(config: Config) -> list[tuple[str, dict[str, str]]]:
    found = [(key, formats.parse_drive(value)) for key, value in config.options.items() if DISK_RE.fullmatch(key)]
    return sorted(found)


def is_cdrom(drive: dict[str, str]) -> bool:
    return drive.get("media") == "cdrom"


def is_cloudinit(vmid: int, drive: dict[str, str]) -> bool:
    return f"vm-{vmid}-cloudinit" in drive.get("file", "")


def boot_disk(vmid: int, config: Config) -> tuple[str, dict[str, str]] | None:
    """The disk QEMU boots: the first of `boot: order=...` that is a disk, else the first disk."""
    disks = {k: d for k, d in drives(config) if not is_cdrom(d) and not is_cloudinit(vmid, d)}
    order = re.search(r"order=([^,]+)", config.options.get("boot", ""))
    for key in (order.group(1).split(";") if order else []):
        if key in disks:
            return key, disks[key]
    for key in sorted(disks, key=lambda k: (not k.startswith(("scsi", "virtio", "sata", "ide")), k)):
        return key, disks[key]
    return None


def is_template(config: Config) -> bool:
    return config.options.get("template") == "1"


# --------------------------------------------------------------------------- processes

def qemu_pid(node: Node, vmid: int, config: Config | None = None) -> int | None:
    """The pid in the pid file, if that process is this VM's QEMU: its command line
    names this VM's own boot disk (never anything else is signalled)."""
    try:
        pid = int(node.pidfile(vmid).read_text().strip())
    except (OSError, ValueError):
        return None
    config = config if config is not None else _load_quiet(node, vmid)
    if config is None:
        return None
    disk = boot_disk(vmid, config)
    if disk is None:
        return None
    try:
        marker = str(volume_path(node, disk[1]["file"])).encode()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, QmError):
        return None
    if stat.rpartition(")")[2].split()[0] == "Z":
        return None
    return pid if marker in cmdline else None


def _load_quiet(node: Node, vmid: int) -> Config | None:
    try:
        return node.load(vmid)
    except QmError:
        return None


def running(node: Node, vmid: int, config: Config | None = None) -> bool:
    return qemu_pid(node, vmid, config) is not None


def kill_vm(node: Node, vmid: int, config: Config, timeout: float = 10.0) -> None:
    """SIGTERM the VM's own QEMU (checked by qemu_pid), SIGKILL after `timeout`, wait
    until it is gone, then delete its taps and sockets."""
    pid = qemu_pid(node, vmid, config)
    if pid is not None:
        with _suppress():
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while qemu_pid(node, vmid, config) == pid and time.monotonic() < deadline:
            time.sleep(0.1)
        if qemu_pid(node, vmid, config) == pid:
            with _suppress():
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                if qemu_pid(node, vmid, config) != pid:
                    break
                time.sleep(0.1)
    cleanup_vm(node, vmid)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return isinstance(exc[1], ProcessLookupError)


def cleanup_vm(node: Node, vmid: int) -> None:
    """Taps, pid file and sockets of a VM whose QEMU is gone (qm.pm `cleanup`)."""
    for index in range(MAX_NET):
        tap = f"tap{vmid}i{index}"
        if Path(f"/sys/class/net/{tap}").exists():
            subprocess.run(["ip", "link", "del", tap], capture_output=True, check=False)
    for path in (node.pidfile(vmid), node.qga_socket(vmid), node.qmp_socket(vmid)):
        path.unlink(missing_ok=True)


def bridge_exists(bridge: str) -> bool:
    return Path(f"/sys/class/net/{bridge}/bridge").is_dir()


# --------------------------------------------------------------------------- guest agent

def agent_available(node: Node, vmid: int, config: Config) -> None:
    """QemuServer/Agent.pm `agent_available`."""
    if "agent" not in config.options:
        raise QmError("No QEMU guest agent configured\n")
    if not running(node, vmid, config):
        raise QmError(f"VM {vmid} is not running\n")
    try:
        client = AgentClient.connect(str(node.qga_socket(vmid)), timeout=PING_TIMEOUT)
        try:
            client.ping()
        finally:
            client.close()
    except AgentError:
        raise QmError("QEMU guest agent is not running\n") from None


def agent_call(node: Node, vmid: int, command: str, arguments: dict[str, Any] | None = None) -> Any:
    """QMPClient `cmd` over the qga socket: a new connection, guest-sync-delimited, the
    command; the reply's `return`, or `{"error": ...}` as QMPClient's callback makes it."""
    qmp_command = f"guest-{command}"
    try:
        client = AgentClient.connect(str(node.qga_socket(vmid)), timeout=QMP_TIMEOUT)
    except AgentError:
        raise QmError(f"VM {vmid} qmp command '{qmp_command}' failed - got timeout\n") from None
    try:
        request: dict[str, Any] = {"execute": qmp_command, "arguments": arguments or {}}
        client._send(request)
        reply = client._read_object()
    except AgentError:
        raise QmError(f"VM {vmid} qmp command '{qmp_command}' failed - got timeout\n") from None
    finally:
        client.close()
    if "return" in reply:
        return reply["return"]
    if "error" in reply:
        return {"error": reply["error"]}
    return None


def agent_cmd(node: Node, vmid: int, command: str, arguments: dict[str, Any], errmsg: str) -> Any:
    """Agent.pm `agent_cmd`: availability, the command, `check_agent_error`."""
    config = node.load(vmid)
    agent_available(node, vmid, config)
    result = agent_call(node, vmid, command, arguments)
    if isinstance(result, dict) and isinstance(result.get("error"), dict) and result["error"].get("desc"):
        raise QmError(f"Agent error: {result['error']['desc']}\n")
    if result is None:
        raise QmError(f"Agent error: {errmsg}\n")
    return result


def print_agent_result(result: Any) -> None:
    """qm.pm `$print_agent_result`."""
    if result is None:
        return
    if not isinstance(result, (dict, list)):
        text = str(result).rstrip("\n")
        if text.strip():
            sys.stdout.write(text + "\n")
        return
    if isinstance(result, dict) and not result:
        return
    sys.stdout.flush()
    sys.stdout.buffer.write(formats.perl_pretty_json(result).encode())


# --------------------------------------------------------------------------- subcommands

def parse_vmid(opts: dict[str, object], key: str = "vmid") -> int:
    return int(str(opts.pop(key)))


def check_lock(vmid: int, config: Config) -> None:
    if config.options.get("lock"):
        raise QmError(f"VM {vmid} is locked ({config.options['lock']})\n")


def _reserve(node: Node, vmid: int, lock: str) -> Config:
    """The new VM's config, holding only `lock`, saved and registered: the VMID is taken."""
    config = Config()
    config.options["lock"] = lock
    node.save(vmid, config)
    node.register(vmid, node.name)
    return config


def cmd_clone(node: Node, opts: dict[str, object]) -> None:
    vmid, newid = parse_vmid(opts), parse_vmid(opts, "newid")
    storage = opts.get("storage")
    if storage is not None:
        config_s = storage_config(node, str(storage))
        if "images" not in config_s.get("content", "").split(","):
            raise ParamError("Parameter verification failed.\n",
                             {"storage": f"storage '{storage}' does not support vm images"})
    source = node.load(vmid)
    check_lock(vmid, source)
    full = bool(opts["full"]) if "full" in opts else not is_template(source)
    if storage is not None and not full:
        raise QmError("parameter 'storage' not allowed for linked clones\n")
    if opts.get("format") is not None and not full:
        raise QmError("parameter 'format' not allowed for linked clones\n")
    for key, drive in drives(source):  # $load_and_check: before the task, so no "clone failed:"
        if not full and not is_cdrom(drive) and not is_cloudinit(vmid, drive):
            storage_id, _, volname = drive["file"].partition(":")
            if storage_config(node, storage_id).get("type") != "dir" or \
                    not volname.split("/")[-1].startswith("base-"):
                raise QmError(f"Linked clone feature is not supported for '{drive['file']}' ({key})\n")
    if node.conf_path(newid).exists():
        raise QmError(f"unable to create VM {newid}: config file already exists\n")
    with node.locked(str(newid)):
        _, ids = node.read_vmlist()
        if newid in ids:
            # pmxcfs refuses a VMID.conf whose id another guest (or node) holds.
            conf = f"/etc/pve/nodes/{node.name}/qemu-server/{newid}.conf"
            raise QmError(f"rename {conf}.tmp.{os.getpid()} to {conf} failed - File exists\n")
        new = _reserve(node, newid, "clone")
        try:
            _clone_into(node, vmid, newid, source, new, full, None if storage is None else str(storage), opts)
        except BaseException as error:
            for path in node.root.joinpath("var/lib/vz/images", str(newid)).glob("*"):
                path.unlink()
            node.conf_path(newid).unlink(missing_ok=True)
            node.register(newid, None)
            if isinstance(error, QmError):
                raise QmError(f"clone failed: {error}") from None
            raise


def _clone_into(node: Node, vmid: int, newid: int, source: Config, new: Config, full: bool, storage: str | None,
                opts: dict[str, object]) -> None:
    for key, value in sorted(source.options.items()):
        if key in ("snapshots", "parent", "snaptime", "vmstate", "snapstate", "runningcpu", "runningmachine",
                   "lock", "template") or re.fullmatch(r"unused\d+", key):
            continue
        if re.fullmatch(r"net\d+", key):
            net = formats.parse_net(value)
            net["macaddr"] = formats.generated_macaddr(newid, int(key[3:]))
            new.options[key] = formats.print_net(net)
        elif DISK_RE.fullmatch(key):
            drive = formats.parse_drive(value)
            if is_cdrom(drive) and not is_cloudinit(vmid, drive):
                new.options[key] = value
                continue
            volid = drive["file"]
            src_storage = volid.partition(":")[0]
            if is_cloudinit(vmid, drive):
                target = storage or src_storage
                ext = ".qcow2" if storage_config(node, target).get("type") == "dir" else ""
                new_volid = f"{target}:{newid}/vm-{newid}-cloudinit{ext}" if ext else \
                    f"{target}:vm-{newid}-cloudinit"
            elif full:
                new_volid = _full_copy(node, newid, key, volid, storage or src_storage)
            else:
                new_volid = _linked_clone(node, vmid, newid, key, volid)
            new.options[key] = formats.print_property_string_drive({**drive, "file": new_volid})
        else:
            new.options[key] = value
    new.options["name"] = str(opts["name"]) if opts.get("name") else f"Copy-of-VM-{source.options.get('name', vmid)}"
    new.description = str(opts["description"]) if opts.get("description") else source.description
    new.options.pop("lock", None)  # the clone is done
    node.save(newid, new)


def _disk_index(key: str, volid: str) -> str:
    found = re.search(r"-disk-(\d+)", volid)
    return found.group(1) if found else "0"


def _linked_clone(node: Node, vmid: int, newid: int, key: str, volid: str) -> str:
    storage, _, volname = volid.partition(":")
    base_name = volname.split("/")[-1]
    if storage_config(node, storage).get("type") != "dir" or not base_name.startswith("base-"):
        raise QmError(f"Linked clone feature is not supported for '{volid}' ({key})\n")
    base_path = volume_path(node, volid)
    name = f"vm-{newid}-disk-{_disk_index(key, volid)}.qcow2"
    new_volid = f"{storage}:{volname.split('/')[0]}/{base_name}/{newid}/{name}"
    target = volume_path(node, new_volid)  # in the template's storage, as a linked clone's disk is
    target.parent.mkdir(parents=True, exist_ok=True)
    fmt = "qcow2" if base_path.suffix == ".qcow2" else "raw"
    _qemu_img("create", "-q", "-f", "qcow2", "-b", str(base_path), "-F", fmt, str(target))
    return new_volid


def _full_copy(node: Node, newid: int, key: str, volid: str, storage: str) -> str:
    source = volume_path(node, volid)
    index = _disk_index(key, volid)
    if storage_config(node, storage).get("type") == "dir":
        new_volid = f"{storage}:{newid}/vm-{newid}-disk-{index}.qcow2"
    else:
        new_volid = f"{storage}:vm-{newid}-disk-{index}"
    target = volume_path(node, new_volid)
    target.parent.mkdir(parents=True, exist_ok=True)
    _qemu_img("convert", "-O", "qcow2", str(source), str(target))
    return new_volid


def _qemu_img(*argv: str) -> None:
    done = subprocess.run(["qemu-img", *argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise QmError(f"command 'qemu-img {' '.join(argv)}' failed: exit code {done.returncode}\n{done.stderr}")


def _canonical(vmid: int, key: str, value: str) -> str:
    """The value written for `qm set --KEY VALUE`, after its format check."""
    if key == "tags":
        return get_unique_tags(value)
    if re.fullmatch(r"net\d+", key):
        return formats.canonical_net(vmid, key, value)
    if re.fullmatch(r"ipconfig\d+", key):
        formats.parse_ipconfig(value)
    elif key == "agent":
        formats.parse_agent(value)
    elif key == "cicustom":
        formats.parse_cicustom(value)
    elif re.fullmatch(r"virtiofs\d", key):
        formats.parse_virtiofs(value)
    elif key == "memory":
        found = re.fullmatch(r"(?:current=)?(\d+)", value)
        if not found:
            raise QmError(f"invalid format - current: type check ('integer') failed - got '{value}'")
        if int(found.group(1)) < 16:
            raise QmError("invalid format - current: value must have a minimum value of 16")
    elif key == "name" and not re.fullmatch(r"(?:[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?\.)*"
                                            r"[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?", value):
        raise QmError(f"value does not look like a valid DNS name: {value}")
    return value


def _checked_options(vmid: int, opts: dict[str, object]) -> dict[str, str]:
    """Every option's value as written, or one 400 error naming each bad one."""
    errors: dict[str, str] = {}
    values: dict[str, str] = {}
    for key in sorted(opts):
        try:
            values[key] = _canonical(vmid, key, str(opts[key]))
        except QmError as error:
            errors[key] = str(error).strip()
    if errors:
        raise ParamError("Parameter verification failed.\n", errors)
    return values


def cmd_set(node: Node, opts: dict[str, object]) -> None:
    vmid = parse_vmid(opts)
    delete = [k for k in re.split(r"[,;\s]+", str(opts.pop("delete", ""))) if k]
    for ignored in ("revert", "digest", "skiplock", "force"):
        opts.pop(ignored, None)
    values = _checked_options(vmid, opts)
    for key in delete:
        if key in values:
            raise ParamError("Parameter verification failed.\n",
                             {"delete": f"cannot set and delete '{key}' at the same time"})
    with node.locked(str(vmid)):
        config = node.load(vmid)
        check_lock(vmid, config)
        values = _create_disks(node, vmid, values)
        for key in delete:
            present = config.description if key == "description" else config.options.get(key)
            if not present:
                sys.stderr.write(f"cannot delete '{key}' - not set in current configuration!\n")
                continue
            if key == "description":
                config.description = ""
            else:
                del config.options[key]
        for key, value in values.items():
            if key == "description":
                config.description = value
            else:
                config.options[key] = value
        node.save(vmid, config)


def cmd_create(node: Node, opts: dict[str, object]) -> None:
    """API2/Qemu.pm `create_vm` (no archive restore): the VMID must be free in the cluster,
    options checked as for `set`, disks allocated (`create_disks`), the config written and
    the VM registered; `meta` and `smbios1` as Proxmox adds them."""
    vmid = parse_vmid(opts)
    start = bool(opts.pop("start", False))
    for ignored in ("pool", "unique"):
        opts.pop(ignored, None)
    values = _checked_options(vmid, opts)
    with node.locked(str(vmid)):
        _, ids = node.read_vmlist()
        if node.conf_path(vmid).exists() or vmid in ids:
            owner = ids.get(vmid, (node.name, "qemu", 0))[0]
            raise QmError(f"unable to create VM {vmid} - VM {vmid} already exists on node '{owner}'\n")
        config = _reserve(node, vmid, "create")
        try:
            values = _create_disks(node, vmid, values)
        except BaseException:
            for path in node.root.joinpath("var/lib/vz/images", str(vmid)).glob("*"):
                path.unlink()
            node.conf_path(vmid).unlink(missing_ok=True)
            node.register(vmid, None)
            raise
        config.options.pop("lock")
        description = values.pop("description", None)
        config.options.update(values)
        if description is not None:
            config.description = description
        config.options["meta"] = "creation-qemu=7.2.0,ctime=" + str(int(time.time()))
        config.options["smbios1"] = f"uuid={uuid.uuid4()}"
        node.save(vmid, config)
    if start:
        cmd_start(node, {"vmid": str(vmid)})


def _create_disks(node: Node, vmid: int, values: dict[str, str]) -> dict[str, str]:
    """API2/Qemu.pm `create_disks` for the requests a template's recipe makes, on dir
    storages: `STORAGE:cloudinit` -> `STORAGE:VMID/vm-VMID-cloudinit.qcow2,media=cdrom`
    (the image itself is made at start, as the seed); `STORAGE:SIZE` (GiB) -> a new
    raw volume vm-VMID-disk-N; `STORAGE:0,import-from=/ABS/PATH` -> the file converted
    into a new volume (`qemu-img convert`, raw unless `format=` says otherwise), its
    virtual size as `size=`. Anything else is stored as given (a volume that exists)."""
    result = dict(values)
    for key, value in sorted(values.items()):
        if not DISK_RE.fullmatch(key):
            continue
        drive = formats.parse_drive(value)
        storage, sep, request = drive["file"].partition(":")
        if not sep or "/" in request:
            continue
        if request == "cloudinit":
            if not re.fullmatch(r"(ide|sata|scsi)\d+", key):
                raise QmError(f"{key}: cloud-init drive must be an ide, sata or scsi drive\n")
            _dir_storage(node, storage)
            name = f"vm-{vmid}-cloudinit.qcow2"
            result[key] = formats.print_property_string_drive({**drive, "file": f"{storage}:{vmid}/{name}",
                                                              "media": "cdrom"})
            continue
        if not re.fullmatch(r"\d+(\.\d+)?", request):
            continue
        source = drive.pop("import-from", None)
        fmt = drive.pop("format", "raw")
        if fmt not in ("raw", "qcow2"):
            raise QmError(f"unsupported format '{fmt}'\n")
        base = _dir_storage(node, storage)
        index = 0
        while list((base / "images" / str(vmid)).glob(f"*-{vmid}-disk-{index}.*")):
            index += 1
        name = f"vm-{vmid}-disk-{index}.{fmt}"
        target = base / "images" / str(vmid) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source is not None:
            if float(request) != 0:
                raise QmError(f"{key}: 'import-from' requires special syntax - use <storage ID>:0,import-from="
                              "<source>\n")
            path = Path(source)
            if not path.is_absolute() or not path.is_file():
                raise QmError(f"{key}: import-from: '{source}' does not exist or is not an absolute path to a "
                              "file\n")
            _qemu_img("convert", "-O", fmt, str(path), str(target))
        else:
            _qemu_img("create", "-q", "-f", fmt, str(target), f"{request}G")
        info = subprocess.run(["qemu-img", "info", "--output", "json", str(target)], capture_output=True,
                              text=True, check=True)
        size = int(json.loads(info.stdout)["virtual-size"])
        drive = {**drive, "file": f"{storage}:{vmid}/{name}", "size": _size_text(size)}
        result[key] = formats.print_property_string_drive(drive)
        sys.stdout.write(f"{key}: successfully created disk '{result[key]}'\n")
    return result


def _dir_storage(node: Node, storage: str) -> Path:
    config = storage_config(node, storage)
    if config.get("type") != "dir":
        raise QmError(f"storage '{storage}': the stand-in allocates volumes on dir storages only\n")
    return node.root / config.get("path", "/var/lib/vz").lstrip("/")


def _size_text(size: int) -> str:
    """PVE::JSONSchema format_size: the largest unit that divides it, else bytes."""
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if size and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return str(size)


def cmd_template(node: Node, opts: dict[str, object]) -> None:
    """API2/Qemu.pm `template`: the disks become base volumes (base-VMID-disk-N)."""
    vmid = parse_vmid(opts)
    with node.locked(str(vmid)):
        config = node.load(vmid)
        check_lock(vmid, config)
        if is_template(config):
            raise QmError("you can't convert a template to a template\n")
        if running(node, vmid, config):
            raise QmError("you can't convert a VM to template if VM is running\n")
        for key, drive in drives(config):
            if is_cdrom(drive) or is_cloudinit(vmid, drive):
                continue
            volid = drive["file"]
            storage, _, volname = volid.partition(":")
            name = volname.split("/")[-1]
            if not name.startswith("vm-") or storage_config(node, storage).get("type") != "dir":
                continue
            old = volume_path(node, volid)
            new_name = "base-" + name[3:]
            os.rename(old, old.with_name(new_name))
            old.with_name(new_name).chmod(0o444)
            drive["file"] = f"{storage}:{vmid}/{new_name}"
            config.options[key] = formats.print_property_string_drive(drive)
        config.options["template"] = "1"
        node.save(vmid, config)


def _read_snippet(node: Node, volid: str) -> str:
    """Cloudinit.pm `read_cloudinit_snippets_file`."""
    storage_config(node, volid.partition(":")[0])
    if vtype(volid) != "snippets":
        raise QmError(f"{volid} is not in the snippets directory\n")
    path = volume_path(node, volid)
    if not path.is_file():
        raise QmError(f"can't find file '{volid}'\n")
    return path.read_bytes()[: 1 << 20].decode(errors="replace")


def make_cloudinit_seed(node: Node, vmid: int, config: Config, target: Path) -> None:
    """Cloudinit.pm `generate_nocloud`, written with cloud-localds (qcow2)."""
    custom = formats.parse_cicustom(config.options["cicustom"]) if "cicustom" in config.options else {}
    user = _read_snippet(node, custom["user"]) if "user" in custom else _generated_userdata(vmid, config)
    network = _read_snippet(node, custom["network"]) if "network" in custom else None
    if network is None:
        resolv = Path("/etc/resolv.conf")
        search, servers = host_dns(resolv.read_text(errors="replace") if resolv.exists() else "")
        network = formats.nocloud_network(config.options, search, servers)
    meta = _read_snippet(node, custom["meta"]) if "meta" in custom else formats.nocloud_metadata(user, network)
    vendor = _read_snippet(node, custom["vendor"]) if "vendor" in custom else ""
    if len(user) + len(network) + len(meta) + len(vendor) > 3 << 20:
        raise QmError("Cloud-Init sum of snippets too big (> 3 MiB)\n")
    work = node.root / "run/pve/cloudinit" / str(vmid)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        for name, content in (("user-data", user), ("network-config", network), ("meta-data", meta),
                              ("vendor-data", vendor)):
            (work / name).write_text(content)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        done = subprocess.run(["cloud-localds", "-d", "qcow2", "-N", str(work / "network-config"), "-V",
                               str(work / "vendor-data"), str(target), str(work / "user-data"),
                               str(work / "meta-data")], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise QmError(f"generating cloud-init ISO failed: {done.stderr}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _generated_userdata(vmid: int, config: Config) -> str:
    """Cloudinit.pm `cloudinit_userdata`, the parts that apply without ciuser/password/keys."""
    hostname = config.options.get("name", f"VM{vmid}")
    fqdn = hostname
    if "." in hostname:
        hostname = hostname.split(".")[0]
    elif config.options.get("searchdomain"):
        fqdn = f"{hostname}.{config.options['searchdomain']}"
    text = f"#cloud-config\nhostname: {hostname}\nmanage_etc_hosts: true\nfqdn: {fqdn}\n"
    text += "chpasswd:\n  expire: False\nusers:\n  - default\npackage_upgrade: true\n"
    return text


def qemu_argv(node: Node, vmid: int, config: Config, image_dir: Path, seed: Path | None) -> list[str]:
    disk = boot_disk(vmid, config)
    if disk is None:
        raise QmError(f"VM {vmid} has no disk to boot (test stand-in)\n")
    disk_path = volume_path(node, disk[1]["file"])
    memory = re.sub(r"^current=", "", config.options.get("memory", "512")).split(",")[0]
    cpus = int(config.options.get("cores", "1")) * int(config.options.get("sockets", "1"))
    argv = [
        "qemu-system-x86_64", "-name", f"{config.options.get('name', f'VM{vmid}')},debug-threads=on",
        "-accel", "tcg,thread=multi", "-cpu", "max", "-m", memory, "-smp", str(cpus),
        "-nodefaults", "-display", "none", "-daemonize", "-pidfile", str(node.pidfile(vmid)),
        "-kernel", str(image_dir / "vmlinuz"), "-initrd", str(image_dir / "initrd.img"),
        "-append", "console=ttyS0 root=/dev/vda rw net.ifnames=0 panic=-1",
        "-drive", f"file={_opt(disk_path)},format=qcow2,if=virtio,cache=unsafe,id=drive-{disk[0]}",
        "-serial", f"file:{node.console_log(vmid)}",
        "-qmp", f"unix:{node.qmp_socket(vmid)},server=on,wait=off",
    ]
    if disk_path.suffix != ".qcow2":
        argv[argv.index("-drive") + 1] = argv[argv.index("-drive") + 1].replace("format=qcow2", "format=raw")
    if seed is not None:
        argv += ["-drive", f"file={_opt(seed)},format=qcow2,if=virtio,readonly=on,id=drive-cloudinit"]
    for key in sorted((k for k in config.options if re.fullmatch(r"net\d+", k)), key=lambda k: int(k[3:])):
        net = formats.parse_net(config.options[key])
        if net.get("link_down") == "1":
            continue
        index = int(key[3:])
        model = "virtio-net-pci" if net["model"] == "virtio" else net["model"]
        argv += ["-netdev", f"tap,id={key},ifname=tap{vmid}i{index},script=no,downscript=no",
                 "-device", f"{model},mac={net.get('macaddr', formats.generated_macaddr(vmid, index))},netdev={key}"]
    if formats.agent_enabled(config.options.get("agent")):
        argv += ["-chardev", f"socket,path={node.qga_socket(vmid)},server=on,wait=off,id=qga0"]
        if not node.fault("noagent"):
            argv += ["-device", "virtio-serial,id=qga-serial",
                     "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"]
    for index in range(10):
        value = config.options.get(f"virtiofs{index}")
        if not value:
            continue
        dirid = formats.parse_virtiofs(value)["dirid"]
        path = _virtiofs_path(node, dirid)
        argv += ["-virtfs", f"local,path={_opt(path)},mount_tag={dirid},security_model=passthrough,id=fs{index}"]
    return argv


def _virtiofs_path(node: Node, dirid: str) -> str:
    """Virtiofs.pm `assert_virtiofs_config` (PVE::Mapping::Dir::find_on_current_node)."""
    mappings = pvesh.read_mappings(node.root)
    if dirid not in mappings:
        raise QmError(f"Directory ID {dirid} does not exist.\n")
    found = formats.node_mapping(mappings[dirid], node.name)
    if len(found) > 1:
        raise QmError(f"More than than one directory mapping for node {node.name}.\n")
    if not found:
        raise QmError(f"No directory mapping for node {node.name}.\n")
    path = found[0]["path"]
    if not Path(path).exists():
        raise QmError(f"directory mapping invalid: Path {path} does not exist\n\n")
    if not Path(path).is_dir():
        raise QmError(f"directory mapping invalid: Path {path} exists, but is not a directory\n\n")
    return path


def _opt(value: str | Path) -> str:
    return str(value).replace(",", ",,")


def image_dir() -> Path:
    value = os.environ.get("SMBGW_QM_IMAGE_DIR")
    if not value:
        raise QmError("SMBGW_QM_IMAGE_DIR is not set (test stand-in for qm: the guest image to boot)\n")
    return Path(value)


def cmd_start(node: Node, opts: dict[str, object]) -> None:
    vmid = parse_vmid(opts)
    with node.locked(str(vmid)):
        config = node.load(vmid)
        if is_template(config):
            raise QmError("you can't start a vm if it's a template\n")
        if running(node, vmid, config):
            raise QmError(f"VM {vmid} already running\n")
        check_lock(vmid, config)
        if hamanager.is_managed(node.root, vmid, "vm") is not None:
            sys.stdout.write(f"Requesting HA start for VM {vmid}\n")
            hamanager.set_state(node.root, vmid, "started", "vm")
        cleanup_vm(node, vmid)
        seed = None
        for _key, drive in drives(config):
            if is_cloudinit(vmid, drive):
                seed = volume_path(node, drive["file"])
                make_cloudinit_seed(node, vmid, config, seed)
                break
        argv = qemu_argv(node, vmid, config, image_dir(), seed)
        taps = []
        for key in sorted(k for k in config.options if re.fullmatch(r"net\d+", k)):
            net = formats.parse_net(config.options[key])
            if net.get("link_down") == "1":
                continue
            tap = f"tap{vmid}i{key[3:]}"
            bridge = net.get("bridge")
            if bridge is not None and not bridge_exists(bridge):
                cleanup_vm(node, vmid)
                raise QmError(f"bridge '{bridge}' does not exist\nkvm: -netdev type=tap,id={key},ifname={tap},"
                              f"script=/var/lib/qemu-server/pve-bridge,downscript=/var/lib/qemu-server/"
                              f"pve-bridgedown: network script /var/lib/qemu-server/pve-bridge failed with "
                              f"status 512\nstart failed: QEMU exited with code 1\n")
            subprocess.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"], check=True, capture_output=True)
            taps.append(tap)
            if bridge is not None and not node.fault("detached"):
                subprocess.run(["ip", "link", "set", tap, "master", bridge], check=True, capture_output=True)
            subprocess.run(["ip", "link", "set", tap, "up"], check=True, capture_output=True)
        node.console_log(vmid).unlink(missing_ok=True)
        done = subprocess.run(argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
                              timeout=120)
        if done.returncode != 0 or not running(node, vmid, config):
            cleanup_vm(node, vmid)
            raise QmError(f"{done.stderr}start failed: QEMU exited with code {done.returncode}\n")


def cmd_stop(node: Node, opts: dict[str, object]) -> None:
    vmid = parse_vmid(opts)
    config = node.load(vmid)
    if not running(node, vmid, config):
        raise QmError(f"VM {vmid} not running\n")
    if hamanager.is_managed(node.root, vmid, "vm") is not None:
        sys.stdout.write(f"Requesting HA stop for VM {vmid}\n")
        hamanager.set_state(node.root, vmid, "stopped", "vm")
    with node.locked(str(vmid)):
        kill_vm(node, vmid, config, float(str(opts.get("timeout", 10))))


def _qmp(node: Node, vmid: int, command: str) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    try:
        sock.connect(str(node.qmp_socket(vmid)))
        stream = sock.makefile("rwb")
        stream.readline()  # greeting
        for request in ({"execute": "qmp_capabilities"}, {"execute": command}):
            stream.write(json.dumps(request).encode() + b"\n")
            stream.flush()
            while True:
                reply = json.loads(stream.readline() or b"{}")
                if "return" in reply or "error" in reply or not reply:
                    break
    except (OSError, ValueError) as error:
        raise QmError(f"VM {vmid} qmp command '{command}' failed - {error}\n") from None
    finally:
        sock.close()


def cmd_shutdown(node: Node, opts: dict[str, object]) -> None:
    vmid = parse_vmid(opts)
    config = node.load(vmid)
    if not running(node, vmid, config):
        raise QmError(f"VM {vmid} not running\n")
    timeout = int(str(opts.get("timeout", 180)))
    with node.locked(str(vmid)):
        _qmp(node, vmid, "system_powerdown")
        deadline = time.monotonic() + timeout
        while running(node, vmid, config) and time.monotonic() < deadline:
            time.sleep(0.5)
        if running(node, vmid, config):
            if not opts.get("forceStop"):
                raise QmError("VM quit/powerdown failed - got timeout\n")
            sys.stderr.write("VM still running - terminating now with SIGTERM\n")
            kill_vm(node, vmid, config)
        cleanup_vm(node, vmid)


def cmd_status(node: Node, opts: dict[str, object]) -> None:
    vmid = parse_vmid(opts)
    config = node.load(vmid)
    pid = qemu_pid(node, vmid, config)
    status = "running" if pid is not None else "stopped"
    if not opts.get("verbose"):
        sys.stdout.write(f"status: {status}\n")
        return
    stat = _vmstatus(node, vmid, config, pid)
    sys.stdout.write("".join(f"{k}: {stat[k]}\n" for k in sorted(stat)))


def _vmstatus(node: Node, vmid: int, config: Config, pid: int | None) -> dict[str, Any]:
    disk = boot_disk(vmid, config)
    memory = re.sub(r"^current=", "", config.options.get("memory", "512")).split(",")[0]
    stat: dict[str, Any] = {
        "name": config.options.get("name") or f"VM {vmid}", "status": "running" if pid else "stopped",
        "qmpstatus": "running" if pid else "stopped", "vmid": vmid,
        "cpus": int(config.options.get("cores", "1")) * int(config.options.get("sockets", "1")),
        "maxmem": int(memory) << 20, "maxdisk": formats.parse_size(disk[1].get("size", "0")) if disk else 0,
        "disk": 0, "diskread": 0, "diskwrite": 0, "mem": 0, "netin": 0, "netout": 0, "uptime": 0,
    }
    if pid:
        stat["pid"] = pid
    if is_template(config):
        stat["template"] = 1
    if config.options.get("lock"):
        stat["lock"] = config.options["lock"]
    if "tags" in config.options:
        stat["tags"] = config.options["tags"]
    return stat


def cmd_list(node: Node, opts: dict[str, object]) -> None:
    rows = []
    for path in node.conf_dir.glob("*.conf"):
        if not path.stem.isdigit():
            continue
        vmid = int(path.stem)
        config = node.load(vmid)
        pid = qemu_pid(node, vmid, config)
        stat = _vmstatus(node, vmid, config, pid)
        rows.append((vmid, str(stat["name"]), str(stat["qmpstatus"]), int(stat["maxmem"]) >> 20,
                     int(stat["maxdisk"]) / (1 << 30), pid or 0))
    sys.stdout.write(formats.render_qm_list(rows))


def cmd_config(node: Node, opts: dict[str, object]) -> None:
    vmid = parse_vmid(opts)
    if opts.get("snapshot") and opts.get("current"):
        error = "cannot use 'snapshot' parameter with 'current'"
        raise ParamError("Parameter verification failed.\n", {"snapshot": error, "current": error})
    config = node.load(vmid)
    if opts.get("snapshot"):
        raise QmError(f"snapshot '{opts['snapshot']}' does not exist\n")
    values = dict(config.options)
    if config.description:
        values["description"] = encode_text(config.description)
    sys.stdout.write("".join(f"{key}: {values[key]}\n" for key in sorted(values)))


def cmd_destroy(node: Node, opts: dict[str, object]) -> None:
    vmid = parse_vmid(opts)
    config = node.load(vmid)
    check_lock(vmid, config)
    ha_managed = hamanager.is_managed(node.root, vmid, "vm") is not None
    if ha_managed and not opts.get("purge"):
        raise QmError(f"unable to remove VM {vmid} - used in HA resources and purge parameter not set.\n")
    if running(node, vmid, config):
        raise QmError(f"VM {vmid} is running - destroy failed\n")
    with node.locked(str(vmid)):
        for _key, drive in drives(config):
            if is_cdrom(drive) and not is_cloudinit(vmid, drive):
                continue
            volid = drive["file"]
            owner = volid.partition(":")[2].split("/")[-2:-1]
            if (owner and owner[0] != str(vmid)) or f"-{vmid}-" not in volid.split("/")[-1]:
                continue  # never another VM's volume (a linked clone's base stays)
            with _suppress_oserror():
                path = volume_path(node, volid)
                if path.is_symlink():
                    path.unlink()  # never touch what a link points to (the shared image)
                elif path.exists():
                    path.chmod(0o644)
                    path.unlink()
        image_dir_path = node.root / "var/lib/vz/images" / str(vmid)
        if opts.get("destroy-unreferenced-disks", 1) and image_dir_path.is_dir():
            for leftover in image_dir_path.glob(f"vm-{vmid}-*"):
                leftover.unlink()
        with _suppress_oserror():
            image_dir_path.rmdir()
        cleanup_vm(node, vmid)
        node.console_log(vmid).unlink(missing_ok=True)
        node.conf_path(vmid).unlink()
        node.register(vmid, None)
        if ha_managed:
            with hamanager.locked(node.root):
                resources = hamanager.read(node.root)
                resources.pop(f"vm:{vmid}", None)
                hamanager.write(node.root, resources)


class _suppress_oserror:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return isinstance(exc[1], (OSError, QmError))


def check_mapped_dirs(node: Node, config: Config, target: str, is_running: bool) -> None:
    """QemuMigrate.pm `prepare` with QemuServer.pm `check_local_resources` (8.4.10): a
    running VM with a virtiofs device is a blocker (`check_non_migratable_resources`: no
    live migration with virtiofs); a stopped one moves only when each of its directory
    mappings has an entry for the target node."""
    dirs = {key: pctmod.parse_property_string(value, "dirid", {"dirid", "cache", "direct-io", "expose-acl",
                                                                 "expose-xattr", "writeback"}).get("dirid", "")
            for key, value in config.options.items() if re.fullmatch(r"virtiofs\d", key)}
    if not dirs:
        return
    if is_running:
        raise QmError("can't migrate VM which uses local devices: virtiofs\n")
    mappings = pvesh.read_mappings(node.root)
    missing = [key for key, dirid in sorted(dirs.items())
               if not formats.node_mapping(mappings.get(dirid, {}), target)]
    if missing:
        raise QmError(f"can't migrate to '{target}': missing mapped devices {', '.join(missing)}\n")


def cmd_migrate(node: Node, opts: dict[str, object]) -> None:
    vmid, target = parse_vmid(opts), str(opts["target"])
    if not re.fullmatch(r"[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?", target):
        raise ParamError("Parameter verification failed.\n",
                         {"target": "invalid format - value does not look like a valid node name"})
    if target == node.name:
        raise ParamError("Parameter verification failed.\n", {"target": "target is local node."})
    if not (node.root / "etc/pve/nodes" / target).is_dir():
        raise QmError(f"no such cluster node '{target}'\n")
    config = node.load(vmid)
    is_running = running(node, vmid, config)
    if is_running and not opts.get("online"):
        raise QmError("can't migrate running VM without --online\n")
    check_mapped_dirs(node, config, target, is_running)
    if hamanager.is_managed(node.root, vmid, "vm") is not None:
        sys.stdout.write(f"Requesting HA migration for VM {vmid} to node {target}\n")
    with node.locked(str(vmid)):
        if is_running:
            kill_vm(node, vmid, config)
        destination = node.root / "etc/pve/nodes" / target / "qemu-server"
        destination.mkdir(parents=True, exist_ok=True)
        os.replace(node.conf_path(vmid), destination / f"{vmid}.conf")
        node.register(vmid, target)


def cmd_guest_cmd(node: Node, opts: dict[str, object]) -> None:
    vmid = parse_vmid(opts)
    command = str(opts["command"])
    config = node.load(vmid)
    agent_available(node, vmid, config)
    print_agent_result(agent_call(node, vmid, command))


def cmd_guest_exec(node: Node, opts: dict[str, object]) -> None:
    vmid = parse_vmid(opts)
    sync = opts.get("synchronous", 1)
    if "timeout" in opts and not sync:
        raise ParamError("Parameter verification failed.\n", {"synchronous": "needs to be set for 'timeout'"})
    input_data: bytes | None = None
    if opts.get("pass-stdin"):
        input_data = sys.stdin.buffer.read(MAX_STDIN + 1)
        if len(input_data) > MAX_STDIN:
            raise QmError("'input-data' (STDIN) is limited to 1 MiB, aborting\n")
    extra = opts.get("extra-args")
    argv = [str(a) for a in extra] if isinstance(extra, list) and extra else None
    arguments: dict[str, Any] = {"capture-output": True}
    if argv:
        arguments["path"] = argv[0]
        arguments["arg"] = argv[1:]
    if input_data is not None:
        arguments["input-data"] = base64.b64encode(input_data).decode()
    if "input-data" not in arguments and "path" not in arguments:
        raise QmError("command or input-data (or both) required\n")
    errmsg = "can't execute command"
    if argv:
        errmsg += f" ({argv[0]} ARRAY(0x55d0c0ffee00))"
    if input_data is not None:
        errmsg += " (input-data given)"
    result: Any = agent_cmd(node, vmid, "exec", arguments, errmsg)
    if sync:
        pid = result.get("pid") if isinstance(result, dict) else None
        timeout = int(str(opts.get("timeout", 30)))
        started = time.monotonic()
        while timeout == 0 or time.monotonic() - started < timeout:
            status = agent_cmd(node, vmid, "exec-status", {"pid": pid}, f"can't get exec status for '{pid}'")
            if status.get("exited"):
                result = _exec_status(status)
                break
            time.sleep(1)
        if not (isinstance(result, dict) and result.get("exited")):
            sys.stderr.write("timeout reached, returning pid\n")
    print_agent_result(result)


def _exec_status(status: dict[str, Any]) -> dict[str, Any]:
    """Agent.pm `qemu_exec_status`: base64 out-data/err-data decoded, booleans as 1/0."""
    result = dict(status)
    for key in ("out-data", "err-data"):
        if result.get(key):
            try:
                result[key] = formats.bytes_as_perl_string(base64.b64decode(result[key], validate=True))
            except ValueError:
                sys.stderr.write(f"cannot decode {key}\n")
    return {k: (int(v) if isinstance(v, bool) else v) for k, v in result.items()}


HANDLERS: dict[str, Callable[[Node, dict[str, object]], None]] = {
    "create": cmd_create, "clone": cmd_clone, "set": cmd_set, "start": cmd_start, "stop": cmd_stop,
    "shutdown": cmd_shutdown,
    "status": cmd_status, "destroy": cmd_destroy, "config": cmd_config, "list": cmd_list,
    "migrate": cmd_migrate, "template": cmd_template, "guest cmd": cmd_guest_cmd, "guest exec": cmd_guest_exec,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        sys.stderr.write("ERROR: no command specified\nUSAGE: qm <COMMAND> [ARGS] [OPTIONS]\n")
        return EXIT_ERROR
    name, rest = args[0], args[1:]
    if name == "guest":
        if not rest or f"guest {rest[0]}" not in HANDLERS:
            sub = f" {rest[0]}" if rest else ""
            sys.stderr.write(f"ERROR: unknown command 'qm guest{sub}'\nUSAGE: qm guest <COMMAND> [ARGS] [OPTIONS]\n")
            return EXIT_ERROR
        name, rest = f"guest {rest[0]}", rest[1:]
    if name not in HANDLERS:
        sys.stderr.write(f"ERROR: unknown command 'qm {name}'\nUSAGE: qm <COMMAND> [ARGS] [OPTIONS]\n")
        return EXIT_ERROR
    cli = CLI
    try:
        node = Node.from_env()
        cli = cli_for(pvesh.node_version(node.root)[0])
        opts = cli.parse_argv(name, rest)
        HANDLERS[name](node, opts)
    except ParamError as error:
        error.usage = cli.usage_line(name)
        sys.stdout.flush()
        sys.stderr.write(error.render())
        return EXIT_ERROR
    except QmError as error:
        sys.stdout.flush()
        sys.stderr.write(str(error))
        return EXIT_ERROR
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

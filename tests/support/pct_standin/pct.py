"""TEST STAND-IN for Proxmox VE's `pct`: never shipped, never installed on a node.

`pct` does not exist off Proxmox, so the LXC-mode plugin's tests run this instead: the
same command lines, exit codes and output formats as `pct` of Proxmox VE 8
(pve-container 5.x), carried out with Debian 12's own LXC 5.0 (`lxc-start`, `lxc-attach`,
`lxc-stop`, `lxc-info`, all with ``-P SMBGW_PCT_ROOT/var/lib/lxc`` so they never meet any
other container on the machine). Like the real tool it refuses what it does not know
(message on stderr, exit 255), so a wrong option name in the plugin fails the tests.

Checked against the pve-container source of 5.2.6 (commit a0a7cec, 2025-04-07, the last
5.x: Proxmox VE 8.4), with libpve-common-perl 8.3.1 (85d46b4), pve-guest-common 5.2.2
(58ad183) and pve-cluster 8.1.0 (pmxcfs, 09dd1c9), all on github.com/proxmox. pct(1)
(pve.proxmox.com/pve-docs/pct.1.html) is generated from that same API schema; the page
itself was not reachable from here, so the source is the reference. Each format and
where it comes from:

* argv: src/PVE/CLI/pct.pm `$cmddef` (positional arguments per subcommand) and
  pve-common PVE/JSONSchema.pm `get_options` (Getopt::Long with prefix `--`/`-`,
  `--name value` or `--name=value`, options may follow the arguments, `--` ends them,
  unique abbreviations, a boolean without a value is 1, booleans 1/0/yes/no/on/off/
  true/false). Errors: an unknown option prints Getopt's `Unknown option: NAME` and
  `400 unable to parse option`; `400 not enough arguments` / `400 too many arguments`;
  a bad value `400 Parameter verification failed.` then `KEY: REASON` (PVE/Exception.pm
  `stringify`), each followed by the short usage line `pct CMD <args> [OPTIONS]`
  (PVE/RESTHandler.pm `getopt_usage`). Every error exits 255: `die` in Perl (and the
  `$upid_exit` of pct.pm for task commands: `exit(-1)`).
* `pct status`: `status: running|stopped` (pct.pm `status`).
* `pct list`: `printf("%-10s %-10s %-12s %-20s\\n")` of VMID, Status, Lock, Name, sorted
  by VMID, nothing at all when there is no container (pct.pm `list`); Name is the
  hostname or `CT<vmid>` with white space removed (PVE/LXC.pm `vmstatus`).
* `pct config`: `key: value` sorted by key, the description percent-encoded
  (pve-common PVE/Tools.pm `encode_text`: control, non-ASCII, `:` and `%`), then the raw
  `lxc.*` lines in file order (pct.pm `config`).
* `/etc/pve/nodes/NODE/lxc/VMID.conf`: description as `#` lines at the top
  (encode_text per line), then `key: value` sorted by key, then the `lxc.*` lines
  (PVE/LXC/Config.pm `write_pct_config`, `parse_pct_config`). Property strings (net0,
  rootfs, mp0) print the default key bare, then the required keys, then the optional
  ones, each group sorted (pve-common `print_property_string`): `name=eth0,bridge=vmbr0,
  gw=...,hwaddr=BC:24:11:..,ip=...,type=veth`; `local-lvm:vm-100-disk-0,size=4G`
  (`format_size`); `/host/dir,mp=/srv/share,backup=0`. Tags are lower-cased, sorted,
  de-duplicated and joined with `;` (pve-guest-common GuestHelpers `get_unique_tags`).
  Defaults written by create: `arch: amd64`, `hostname: CT<vmid>`, `memory: 512`,
  `swap: 512`, `ostype` detected from the template (API2/LXC.pm `create_vm`).
* `/etc/pve/.vmlist`: pmxcfs `cfs_create_vmlist_msg` (src/pmxcfs/status.c), byte for
  byte: `{`, `"version": N,`, `"ids": {`, one `"VMID": { "node": "N", "type": "lxc",
  "version": M }` per guest joined by `,\\n`, `}`, blank line, `}`.
* Messages: `Configuration file 'nodes/NODE/lxc/VMID.conf' does not exist`
  (pve-guest-common AbstractConfig `load_config`); `CT VMID already exists on node
  'NODE'` (pve-cluster PVE/Cluster.pm `check_vmid_unused`); `CT VMID already running`,
  `CT VMID not running` (API2/LXC/Status.pm); `unable to destroy CT VMID - container is
  running`, `forced to stop CT VMID before destroying!` (API2/LXC.pm `destroy_vm`);
  `bridge 'BR' does not exist` (src/lxcnetaddbr) then `startup for container 'VMID'
  failed` (PVE/LXC.pm `monitor_start`); `container did not stop` (PVE/LXC.pm
  `vm_stop`); `container 'VMID' not running!`, `can only push files to a running CT`,
  `can only pull files from a running VM at ... line 608.`, `failed to open PATH: ERR`,
  `failed to create file: PATH: ERR` (pct.pm `exec`, `push`, `pull`, `create_file`);
  `unable to create CT VMID - failed to open 'PATH': No such file or directory` for a
  missing template (LXC/Create.pm `restore_tar_archive`, wrapped by `create_vm`);
  `cannot delete 'KEY' - not set in current configuration!`, `unable to delete required
  option 'KEY'`, `unable to modify read-only option: 'unprivileged'`
  (LXC/Config.pm `update_pct_config`).
* The MAC prefix BC:24:11 is Proxmox's default `mac_prefix` (pve-cluster
  PVE/DataCenterConfig.pm), upper-case as `random_ether_addr` prints it.

What differs from the real `pct` (on purpose or as an approximation):

* Templates are directories holding a root file system (see image.py), not tarballs, and
  each container's root is an overlay (lower: the template, or for an unprivileged
  container a uid-shifted copy of it made once per template and id map, set-id bits
  restored, cached by the template's path, inode and mtime and the map under
  /var/cache/smbgw-pct-standin or SMBGW_PCT_SHIFT_CACHE -- not beside the template,
  because /var/lib/machines is mode 0700 and the container's root must walk the path;
  upper and work: ``var/lib/lxc/VMID/delta0`` and ``work``, owned by the container's
  root) instead of a volume on a storage. For the same reason SMBGW_PCT_ROOT and every
  directory above it must be searchable by others (o+x) for an unprivileged start. The
  storage name only shapes the recorded volume name: `local` gives the directory
  storage's `local:VMID/vm-VMID-disk-0.raw`, any other `STORAGE:vm-VMID-disk-0`
  (LVM-thin's form); the size is recorded, not enforced.
* The network is configured by LXC (`lxc.net.N.ipv4.address`/`.gateway`), not by writing
  the guest's /etc/network/interfaces; `ip=dhcp` is recorded and leaves the interface
  without an address. A generated hwaddr is derived from the VMID and interface number
  (not random: a new MAC per re-create left stale ARP entries, 9-28 s to a first connect).
* LXC's command sockets are abstract unix sockets, which belong to a network namespace:
  run every `pct` call for a container in the network namespace that started it. Under
  `ip netns exec` (which remounts /sys, hiding /sys/fs/cgroup) the stand-in mounts the
  cgroup hierarchies again in a private mount namespace of its own before it calls LXC.
* /etc/subuid and /etc/subgid are never edited: they must already allow the mapped
  ranges (LXC uses newuidmap even as root), as on a node where the admin set them up.
* `pct exec` clears the environment (PATH, HOME=/root, LANG=C.UTF-8, TERM=dumb) unless
  `--keep-env 1` is given; Proxmox VE 8 keeps it by default (9 clears it), which would
  leak the test runner's environment into the container.
* `pct set` on a running container writes the change straight into the config (no
  `[pve:pending]` section and no hotplug); nothing but the config changes until the next
  start. No snapshots, HA, firewall, pools, locks shown other than the config's `lock`.
  memory, swap, cores, timezone and features are recorded, not applied.
* Task output (`extracting archive ...`, `Detected container architecture`) is not
  printed; task errors print the error only, as the real CLI does.
* `destroy --purge` takes the container out of HA's resource list (hamanager.py); there are no
  backup or replication jobs here to purge. `start` and `stop` of an HA-managed container
  print `Requesting HA start|stop for CT VMID` and set its HA state, as Proxmox's do
  (API2/LXC/Status.pm), then start or stop it at once where Proxmox's HA resource manager
  would within seconds; `destroy` without `--purge` refuses it with `unable to remove CT
  VMID - used in HA resources and purge parameter not set.` (API2/LXC.pm `destroy_vm`).
* `migrate` checks as Proxmox does (`target is local node.`, `no such cluster node`, `can't
  migrate running container without --online or --restart`, `cannot migrate local bind
  mount point 'mpN'` unless `shared=1`; `Requesting HA migration for CT VMID to node N`
  for an HA resource), then moves the config to `nodes/TARGET/lxc` and the guest list
  with it. A second node does not exist here: the container is stopped, not started there.
* `status --verbose` prints name, status, type and vmid only (the real one adds the
  resource counters); only `local` (ROOT/var/lib/vz/template/cache) holds templates.
* An `mpN` must be a host directory (a bind mount); storage-backed mount points are
  refused at start.
* The short usage line after a 400 error lists the positional arguments only.

Environment: SMBGW_PCT_ROOT (stands for the node's `/`), SMBGW_PCT_NODE (default:
`hostname -s`). Run as `python3 -m tests.support.pct_standin.pct ARGS` or `bin/pct`.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import grp
import hashlib
import json
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote

from ..pvecli import BOOL, EXIT_ERROR, INT, NUM, STR, Cli, CliError, Command, ParamError, parse_boolean
from . import hamanager

PCT_PM = "/usr/share/perl5/PVE/CLI/pct.pm"  # where Perl's die without a newline points
MAC_PREFIX = "BC:24:11"
LXC_COMMON = "/usr/share/lxc/config/debian.common.conf"
LXC_USERNS = "/usr/share/lxc/config/debian.userns.conf"
DEFAULT_IDMAP = (("u", 0, 100000, 65536), ("g", 0, 100000, 65536))
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_NET = 32
MAX_MP = 256


# --------------------------------------------------------------------------- schemas

CONFIG_OPTIONS: dict[str, str] = {
    "arch": STR, "cmode": STR, "console": BOOL, "cores": INT, "cpulimit": NUM, "cpuunits": INT,
    "debug": BOOL, "description": STR, "features": STR, "hookscript": STR, "hostname": STR,
    "lock": STR, "memory": INT, "nameserver": STR, "onboot": BOOL, "ostype": STR, "protection": BOOL,
    "rootfs": STR, "searchdomain": STR, "startup": STR, "swap": INT, "tags": STR, "template": BOOL,
    "timezone": STR, "tty": INT, "unprivileged": BOOL,
    **{f"net{i}": STR for i in range(MAX_NET)},
    **{f"mp{i}": STR for i in range(MAX_MP)},
    **{f"unused{i}": STR for i in range(MAX_MP)},
    **{f"dev{i}": STR for i in range(MAX_MP)},
}
ENUMS: dict[str, tuple[str, ...]] = {
    "arch": ("amd64", "i386", "arm64", "armhf", "riscv32", "riscv64"),
    "ostype": ("debian", "devuan", "ubuntu", "centos", "fedora", "opensuse", "archlinux", "alpine", "gentoo",
               "nixos", "unmanaged"),
    "cmode": ("shell", "console", "tty"),
}
MINIMA: dict[str, int] = {"memory": 16, "swap": 0, "cores": 1, "tty": 0, "cpuunits": 0}
CREATE_ONLY: dict[str, str] = {
    "bwlimit": NUM, "force": BOOL, "ignore-unpack-errors": BOOL, "password": STR, "pool": STR,
    "restore": BOOL, "ssh-public-keys": STR, "start": BOOL, "storage": STR, "unique": BOOL,
}


PctError = CliError


COMMANDS: dict[str, Command] = {
    "create": Command(("vmid", "ostemplate"), {**CONFIG_OPTIONS, **CREATE_ONLY}),
    "set": Command(("vmid",), {**CONFIG_OPTIONS, "delete": STR, "revert": STR, "digest": STR}),
    "start": Command(("vmid",), {"debug": BOOL, "skiplock": BOOL}),
    "stop": Command(("vmid",), {"skiplock": BOOL, "overrule-shutdown": BOOL}),
    "shutdown": Command(("vmid",), {"timeout": INT, "forceStop": BOOL}),
    "status": Command(("vmid",), {"verbose": BOOL}),
    "push": Command(("vmid", "file", "destination"), {"perms": STR, "user": STR, "group": STR}),
    "pull": Command(("vmid", "path", "destination"), {"perms": STR, "user": STR, "group": STR}),
    "exec": Command(("vmid", "extra-args"), {"keep-env": BOOL}, optional_args=("extra-args",)),
    "destroy": Command(("vmid",), {"purge": BOOL, "force": BOOL, "destroy-unreferenced-disks": BOOL}),
    "unlock": Command(("vmid",)),
    "migrate": Command(("vmid", "target"), {"restart": BOOL, "online": BOOL, "timeout": INT, "bwlimit": NUM,
                                            "target-storage": STR}),
    "config": Command(("vmid",), {"current": BOOL, "snapshot": STR}),
    "list": Command(()),
}
CLI = Cli("pct", COMMANDS, MINIMA, ENUMS)
usage_line = CLI.usage_line
parse_argv = CLI.parse_argv



# --------------------------------------------------------------------------- argv

# --------------------------------------------------------------------------- text formats

_ENCODE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in ":%")


def encode_text(text: str) -> str:
    """PVE::Tools::encode_text: percent-encode control and non-ASCII bytes, ':' and '%'."""
    return quote(text.encode(), safe=_ENCODE_SAFE)


def decode_text(text: str) -> str:
    return unquote(text)


def format_size(size_bytes: int) -> str:
    """PVE::JSONSchema::format_size: the largest unit that divides the size exactly."""
    value = int(size_bytes)
    for unit in ("", "K", "M", "G"):
        quotient, remainder = divmod(value, 1024)
        if remainder:
            return f"{value}{unit}"
        value = quotient
    return f"{value}T"


NET_KEYS_OPTIONAL = ("bridge", "firewall", "gw", "gw6", "hwaddr", "ip", "ip6", "link_down", "mtu", "rate", "tag",
                     "trunks", "type")
MP_KEYS_OPTIONAL = ("acl", "backup", "mountoptions", "quota", "replicate", "ro", "shared", "size")
BOOL_KEYS = {"firewall", "link_down", "acl", "backup", "quota", "replicate", "ro", "shared"}


def parse_property_string(text: str, default_key: str | None, allowed: set[str]) -> dict[str, str]:
    """`a=b,c=d` with an optional bare leading default value; unknown keys refused."""
    result: dict[str, str] = {}
    for part in text.split(","):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            if default_key is None or default_key in result:
                raise PctError("value without key, but schema does not define a default key\n")
            result[default_key] = part
            continue
        if key not in allowed:
            raise PctError(f"invalid format - property '{key}' not allowed\n")
        if key in BOOL_KEYS:
            parsed = parse_boolean(value)
            if parsed is None:
                raise PctError(f"invalid format - {key}: type check ('boolean') failed - got '{value}'\n")
            value = str(parsed)
        result[key] = value
    return result


def print_property_string(data: dict[str, str], default_key: str | None, required: Sequence[str]) -> str:
    """Default key bare, then required keys sorted, then the rest sorted (print_property_string)."""
    parts: list[str] = []
    if default_key is not None and default_key in data:
        parts.append(data[default_key])
    for key in sorted(k for k in data if k in required):
        parts.append(f"{key}={data[key]}")
    for key in sorted(k for k in data if k not in required and k != default_key):
        parts.append(f"{key}={data[key]}")
    return ",".join(parts)


def generated_hwaddr(vmid: int, index: int) -> str:
    """Deterministic per VMID and interface, under Proxmox's default MAC prefix."""
    digest = hashlib.sha256(f"smbgw-pct-standin/{vmid}/net{index}".encode()).digest()
    return MAC_PREFIX + "".join(f":{b:02X}" for b in digest[:3])


def canonical_net(vmid: int, key: str, value: str) -> str:
    net = parse_property_string(value, None, {"name", *NET_KEYS_OPTIONAL})
    if "name" not in net:
        raise ParamError("Parameter verification failed.\n", {key: "invalid format - name: property is missing"})
    net["type"] = "veth"
    net.setdefault("hwaddr", generated_hwaddr(vmid, int(key[3:])))
    net["hwaddr"] = net["hwaddr"].upper()
    return print_property_string(net, None, ("name",))


def canonical_mp(key: str, value: str) -> str:
    data = parse_property_string(value, "volume", {"volume", "mp", *MP_KEYS_OPTIONAL})
    if key != "rootfs" and "mp" not in data:
        raise ParamError("Parameter verification failed.\n", {key: "invalid format - mp: property is missing"})
    return print_property_string(data, "volume", () if key == "rootfs" else ("mp",))


def get_unique_tags(value: str) -> str:
    seen: list[str] = []
    for tag in sorted(re.split(r"[;, \0\s]+", value), key=str.lower):
        lowered = tag.lower()
        if lowered and lowered not in seen:
            seen.append(lowered)
    return ";".join(seen)


@dataclass
class Config:
    """One VMID.conf: description, `key: value` options, raw `lxc.*` lines in order."""

    options: dict[str, str] = field(default_factory=dict)
    lxc: list[tuple[str, str]] = field(default_factory=list)
    description: str = ""

    @classmethod
    def parse(cls, text: str) -> Config:
        config = cls()
        description = ""
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("["):
                break  # snapshots and [pve:pending]: the stand-in writes neither
            if line.startswith("#"):
                description += decode_text(line[1:]) + "\n"
                continue
            raw = re.fullmatch(r"(lxc\.[a-z0-9_\-.]+)(?::|\s*=)\s*(.*?)\s*", line)
            if raw:
                config.lxc.append((raw.group(1), raw.group(2)))
                continue
            option = re.fullmatch(r"([a-z][a-z_]*\d*):\s*(.+?)\s*", line)
            if option is None:
                raise PctError(f"unable to parse config: {line}\n")
            if option.group(1) == "description":
                description += decode_text(option.group(2))
            else:
                config.options[option.group(1)] = option.group(2)
        config.description = description
        return config

    def render(self) -> str:
        text = "".join(f"#{encode_text(line)}\n" for line in self.description.split("\n") if line)
        for key in sorted(self.options):
            text += f"{key}: {self.options[key]}\n"
        text += "".join(f"{key}: {value}\n" for key, value in self.lxc)
        return text

    def show(self) -> str:
        """What `pct config` prints."""
        values = dict(self.options)
        if self.description:
            values["description"] = encode_text(self.description)
        text = "".join(f"{key}: {values[key]}\n" for key in sorted(values))
        return text + "".join(f"{key}: {value}\n" for key, value in self.lxc)


def render_vmlist(version: int, ids: dict[int, tuple[str, str, int]]) -> str:
    """pmxcfs's .vmlist (cfs_create_vmlist_msg), sorted by VMID."""
    if not ids:
        return f'{{\n"version": {version}\n\n}}\n'
    entries = ",\n".join(
        f'"{vmid}": {{ "node": "{node}", "type": "{kind}", "version": {entry_version} }}'
        for vmid, (node, kind, entry_version) in sorted(ids.items())
    )
    return f'{{\n"version": {version},\n"ids": {{\n{entries}}}\n\n}}\n'


def render_list(rows: Sequence[tuple[int, str, str, str]]) -> str:
    """`pct list`: VMID, Status, Lock, Name; nothing when there are no containers."""
    if not rows:
        return ""
    line = "{:<10} {:<10} {:<12} {:<20}\n"
    return line.format("VMID", "Status", "Lock", "Name") + "".join(
        line.format(str(vmid), status, lock, name) for vmid, status, lock, name in sorted(rows))


def parse_idmap(lxc: Sequence[tuple[str, str]]) -> tuple[tuple[str, int, int, int], ...]:
    entries: list[tuple[str, int, int, int]] = []
    for key, value in lxc:
        if key == "lxc.idmap":
            kind, inside, outside, count = value.split()
            entries.append((kind, int(inside), int(outside), int(count)))
    return tuple(entries)


def map_id(idmap: Sequence[tuple[str, int, int, int]], kind: str, ident: int) -> int | None:
    for entry_kind, inside, outside, count in idmap:
        if entry_kind == kind and inside <= ident < inside + count:
            return outside + ident - inside
    return None


# --------------------------------------------------------------------------- the node

@dataclass
class Node:
    """SMBGW_PCT_ROOT laid out as a Proxmox node's `/`."""

    root: Path
    name: str

    @classmethod
    def from_env(cls) -> Node:
        root = os.environ.get("SMBGW_PCT_ROOT")
        if not root:
            raise PctError("SMBGW_PCT_ROOT is not set (test stand-in for pct)\n")
        name = os.environ.get("SMBGW_PCT_NODE") or socket.gethostname().split(".")[0]
        node = cls(Path(root), name)
        node.conf_dir.mkdir(parents=True, exist_ok=True)
        for link, target in (("etc/pve/lxc", f"nodes/{name}/lxc"), ("etc/pve/local", f"nodes/{name}")):
            if not (node.root / link).is_symlink():
                (node.root / link).symlink_to(target)
        node.lxcpath.mkdir(parents=True, exist_ok=True)
        return node

    @property
    def conf_dir(self) -> Path:
        return self.root / "etc/pve/nodes" / self.name / "lxc"

    @property
    def lxcpath(self) -> Path:
        return self.root / "var/lib/lxc"

    def conf_path(self, vmid: int) -> Path:
        return self.conf_dir / f"{vmid}.conf"

    def load(self, vmid: int) -> Config:
        try:
            return Config.parse(self.conf_path(vmid).read_text())
        except FileNotFoundError:
            raise PctError(f"Configuration file 'nodes/{self.name}/lxc/{vmid}.conf' does not exist\n") from None

    def save(self, vmid: int, config: Config) -> None:
        path = self.conf_path(vmid)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(config.render())
        os.replace(tmp, path)

    @contextlib.contextmanager
    def locked(self, what: str) -> Iterator[None]:
        """flock, as /run/lock/lxc/pve-config-VMID.lock is on a node."""
        lock_dir = self.root / "run/lock/lxc"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with (lock_dir / f"pve-config-{what}.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    # .vmlist: pmxcfs builds it from every node's lxc/ and qemu-server/ directories; the
    # stand-in keeps it as a file with the same content, updated on create and destroy.
    def read_vmlist(self) -> tuple[int, dict[int, tuple[str, str, int]]]:
        path = self.root / "etc/pve/.vmlist"
        if not path.exists():
            return 0, {}
        data = json.loads(path.read_text())
        ids = {int(k): (v["node"], v["type"], int(v["version"])) for k, v in data.get("ids", {}).items()}
        return int(data["version"]), ids

    def update_vmlist(self, vmid: int, register: bool) -> None:
        with self.locked("vmlist"):
            version, ids = self.read_vmlist()
            version += 1
            if register:
                ids[vmid] = (self.name, "lxc", version)
            else:
                ids.pop(vmid, None)
            path = self.root / "etc/pve/.vmlist"
            tmp = path.with_name(f".vmlist.tmp{os.getpid()}")
            tmp.write_text(render_vmlist(version, ids))
            os.replace(tmp, path)

    # LXC
    def lxc(self, tool: str, vmid: int, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        ensure_cgroup_mounts()
        return subprocess.run([tool, "-P", str(self.lxcpath), "-n", str(vmid), *args], capture_output=True,
                              text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)

    def running(self, vmid: int) -> bool:
        if not (self.lxcpath / str(vmid) / "config").exists():
            return False
        return self.lxc("lxc-info", vmid, "-sH").stdout.strip() == "RUNNING"

    def init_pid(self, vmid: int) -> int:
        pid = self.lxc("lxc-info", vmid, "-pH").stdout.strip()
        if not pid.isdigit():
            raise PctError(f"unable to get PID for CT {vmid} (not running?)\n")
        return int(pid)


# --------------------------------------------------------------------------- root file systems

def resolve_template(node: Node, ostemplate: str, vmid: int) -> Path:
    """`local:vztmpl/NAME` -> ROOT/var/lib/vz/template/cache/NAME (a directory here)."""
    if ostemplate.startswith("/"):
        path = node.root / ostemplate.lstrip("/")
    else:
        storage, sep, volname = ostemplate.partition(":")
        if not sep:
            raise PctError(f"unable to parse volume ID '{ostemplate}'\n")
        if storage != "local":
            raise PctError(f"storage '{storage}' does not exist\n")
        kind, _, name = volname.partition("/")
        if kind != "vztmpl" or not name:
            raise PctError(f"unable to parse directory volume name '{volname}'\n")
        path = node.root / "var/lib/vz/template/cache" / name
    if not re.search(r"\.tar(\.[^.]+)?$", path.name):
        raise PctError(f"unable to create CT {vmid} - file does not look like a template archive: {path}\n")
    if not path.is_dir():
        raise PctError(f"unable to create CT {vmid} - failed to open '{path}': No such file or directory\n")
    return path


def shift_cache() -> Path:
    """Where uid-shifted copies of templates live: one machine-wide directory, because the
    container's root (uid 100000) must be able to walk the path to the overlay's lower
    layer, and the templates' own home (/var/lib/machines) is mode 0700."""
    return Path(os.environ.get("SMBGW_PCT_SHIFT_CACHE", "/var/cache/smbgw-pct-standin"))


def shifted_lower(template: Path, idmap: Sequence[tuple[str, int, int, int]]) -> Path:
    """The template with every owner mapped through ``idmap``, shared by every container
    with that template and map: made once per template (its real path, and the inode and
    mtime of its root and marker file) and id map, built in a temporary directory and
    renamed into place under a lock, so concurrent starts never see half a copy."""
    real = template.resolve()
    marker = [p for p in real.iterdir() if p.name.startswith(".smbgw-") and p.is_file()]
    stamp = [(str(p), p.stat().st_ino, p.stat().st_mtime_ns) for p in (real, *sorted(marker))]
    key = hashlib.sha256(json.dumps([stamp, list(idmap)]).encode()).hexdigest()[:12]
    cache = shift_cache()
    final = cache / f"{real.name}.idmap-{key}"
    if final.is_dir():
        return final
    cache.mkdir(mode=0o755, parents=True, exist_ok=True)
    with (cache / f".{final.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir():
            return final
        for stale in cache.glob(f".{final.name}.tmp-*"):  # a dead builder's, under our lock
            shutil.rmtree(stale)
        tmp = cache / f".{final.name}.tmp-{os.getpid()}"
        subprocess.run(["cp", "-a", "--reflink=auto", str(real), str(tmp)], check=True, capture_output=True)
        try:
            _shift_tree(tmp, idmap)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _shift_tree(top: Path, idmap: Sequence[tuple[str, int, int, int]]) -> None:
    """lchown everything below ``top`` through ``idmap`` (hard links once), then put back
    the set-id bits chown cleared."""
    seen: set[int] = set()

    def shift(path: str) -> None:
        info = os.lstat(path)
        if info.st_nlink > 1 and not stat.S_ISDIR(info.st_mode):
            if info.st_ino in seen:
                return
            seen.add(info.st_ino)
        uid, gid = map_id(idmap, "u", info.st_uid), map_id(idmap, "g", info.st_gid)
        if uid is None or gid is None:
            raise PctError(f"{path}: owner {info.st_uid}:{info.st_gid} is outside the id map\n")
        os.lchown(path, uid, gid)
        if not stat.S_ISLNK(info.st_mode) and info.st_mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(path, stat.S_IMODE(info.st_mode))

    shift(str(top))
    for directory, dirnames, filenames in os.walk(top):
        for name in (*dirnames, *filenames):
            shift(os.path.join(directory, name))


# --------------------------------------------------------------------------- the LXC config

def effective_idmap(config: Config) -> tuple[tuple[str, int, int, int], ...]:
    if config.options.get("unprivileged") != "1":
        return ()
    return parse_idmap(config.lxc) or DEFAULT_IDMAP


def lxc_config(node: Node, vmid: int, config: Config, lower: Path) -> str:
    """The config lxc-start reads, generated from VMID.conf at every start (as
    PVE::LXC::update_lxc_config does); raw lxc.* lines of VMID.conf come last."""
    ctdir = node.lxcpath / str(vmid)
    unprivileged = bool(effective_idmap(config))
    lines = [f"lxc.include = {LXC_COMMON}"]
    if unprivileged:
        lines.append(f"lxc.include = {LXC_USERNS}")
    lines += [
        f"lxc.arch = {config.options.get('arch', 'amd64')}",
        f"lxc.uts.name = {config.options.get('hostname', f'CT{vmid}')}",
        f"lxc.rootfs.path = overlay:{lower}:{ctdir / 'delta0'}",
        "lxc.init.cmd = /sbin/init",
        f"lxc.console.logfile = {ctdir / 'console.log'}",
    ]
    if unprivileged and not parse_idmap(config.lxc):
        lines += [f"lxc.idmap = {k} {i} {o} {c}" for k, i, o, c in DEFAULT_IDMAP]
    for key in sorted((k for k in config.options if re.fullmatch(r"net\d+", k)), key=lambda k: int(k[3:])):
        net = parse_property_string(config.options[key], None, {"name", *NET_KEYS_OPTIONAL})
        index = key[3:]
        lines += [f"lxc.net.{index}.type = veth", f"lxc.net.{index}.name = {net['name']}",
                  f"lxc.net.{index}.flags = {'down' if net.get('link_down') == '1' else 'up'}"]
        if "bridge" in net:
            lines.append(f"lxc.net.{index}.link = {net['bridge']}")
        if "hwaddr" in net:
            lines.append(f"lxc.net.{index}.hwaddr = {net['hwaddr']}")
        if "mtu" in net:
            lines.append(f"lxc.net.{index}.mtu = {net['mtu']}")
        if "/" in net.get("ip", ""):
            lines.append(f"lxc.net.{index}.ipv4.address = {net['ip']}")
            if "gw" in net:
                lines.append(f"lxc.net.{index}.ipv4.gateway = {net['gw']}")
    for key in sorted((k for k in config.options if re.fullmatch(r"mp\d+", k)), key=lambda k: int(k[2:])):
        mp = parse_property_string(config.options[key], "volume", {"volume", "mp", *MP_KEYS_OPTIONAL})
        volume = mp["volume"]
        if not volume.startswith("/"):
            raise PctError(f"{key}: only bind mounts of host directories are supported by the stand-in\n")
        options = "bind,create=dir" + (",ro" if mp.get("ro") == "1" else "")
        lines.append(f"lxc.mount.entry = {volume} {mp['mp'].lstrip('/')} none {options} 0 0")
    lines += [f"{key} = {value}" for key, value in config.lxc]
    return "\n".join(lines) + "\n"


def bridges_missing(config: Config) -> list[str]:
    """Bridges named by netN that do not exist (as bridges) in this network namespace."""
    missing = []
    for key, value in config.options.items():
        if re.fullmatch(r"net\d+", key):
            bridge = parse_property_string(value, None, {"name", *NET_KEYS_OPTIONAL}).get("bridge")
            if bridge is None:
                continue
            shown = subprocess.run(["ip", "-j", "-d", "link", "show", "dev", bridge], capture_output=True,
                                   text=True, check=False, stdin=subprocess.DEVNULL)
            links = json.loads(shown.stdout or "[]") if shown.returncode == 0 else []
            if not any(link.get("linkinfo", {}).get("info_kind") == "bridge" for link in links):
                missing.append(bridge)
    return missing


# --------------------------------------------------------------------------- namespaces

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
_CGROUPS_READY: list[bool] = []  # set once this process has checked (or fixed) its cgroup mounts


def ensure_cgroup_mounts() -> None:
    """Give LXC the cgroup file systems back when `ip netns exec` took them away.

    `ip netns exec` remounts /sys for the namespace, so /sys/fs/cgroup is empty below it
    and systemd in the container dies with "Failed to create /init.scope control group".
    Then this process moves into a private mount namespace (inherited by the lxc-* tools
    it runs, never seen by anyone else) and mounts the same hierarchies again, read from
    /proc/self/cgroup: a cgroup v1 mount with the same controllers is the same hierarchy.
    """
    if _CGROUPS_READY:
        return
    _CGROUPS_READY.append(True)
    if re.search(r" - cgroup2? ", Path("/proc/self/mountinfo").read_text()):
        return
    hierarchies = [line.split(":", 2) for line in Path("/proc/self/cgroup").read_text().splitlines() if line]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise PctError(f"unshare(CLONE_NEWNS): {os.strerror(ctypes.get_errno())}\n")

    def mount(*argv: str) -> None:
        subprocess.run(["mount", *argv], check=True, capture_output=True, stdin=subprocess.DEVNULL)

    mount("--make-rslave", "/")
    v1 = [(controllers, controllers.removeprefix("name=")) for hid, controllers, _ in hierarchies if hid != "0"]
    if v1:
        mount("-t", "tmpfs", "-o", "mode=755,nosuid,nodev,noexec", "cgroup", "/sys/fs/cgroup")
    for controllers, directory in v1:
        target = f"/sys/fs/cgroup/{directory}"
        os.makedirs(target, exist_ok=True)
        options = f"none,{controllers}" if controllers.startswith("name=") else controllers
        mount("-t", "cgroup", "-o", options, "cgroup", target)
    if any(hid == "0" for hid, _, _ in hierarchies):
        target = "/sys/fs/cgroup/unified" if v1 else "/sys/fs/cgroup"
        os.makedirs(target, exist_ok=True)
        mount("-t", "cgroup2", "cgroup2", target)


def _setns(fd: int, nstype: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        if libc.setns(fd, nstype) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    finally:
        os.close(fd)


def create_file(path: str, perms: str | None, user: str | None, group: str | None) -> int:
    """pct.pm's create_file: O_EXCL first (mode from the umask), else truncate; then
    chmod and chown if asked, names looked up where the process is (grp and pwd are
    imported up front: after setns the host's Python library is out of reach)."""
    uid = gid = None
    if user is not None:
        try:
            uid = int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid
        except KeyError:
            raise PctError(f"failed to get uid for: {user}\n") from None
    if group is not None:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise PctError(f"failed to get gid for: {group}\n") from None
    mode = None
    if perms is not None:
        text = perms if perms.startswith("0") else f"0{perms}"
        try:
            mode = int(text, 16) if text.lower().startswith("0x") else int(text, 8)
        except ValueError:
            raise PctError(f"invalid mode: '{text}'\n") from None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        except OSError as error:
            raise PctError(f"failed to create file: {path}: {error.strerror}\n") from None
    except OSError as error:
        raise PctError(f"failed to create file: {path}: {error.strerror}\n") from None
    if mode is not None:
        os.fchmod(fd, mode)
    if uid is not None or gid is not None:
        try:
            os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
        except OSError as error:
            raise PctError(f"failed to change file owner: {error.strerror}\n") from None
    return fd


def in_child(work: Callable[[], None]) -> None:
    """Run ``work`` in a forked child (setns needs a single-threaded process, and this
    avoids entering back): its PctError goes to stderr and becomes exit 255."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            work()
        except PctError as error:
            sys.stderr.write(str(error))
            code = EXIT_ERROR
        except BaseException as error:  # report anything; never return into the parent's code
            sys.stderr.write(f"{error}\n")
            code = EXIT_ERROR
        finally:
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(EXIT_ERROR)


def copy_fd(source: int, target: int) -> None:
    while chunk := os.read(source, 1 << 16):
        os.write(target, chunk)


# --------------------------------------------------------------------------- subcommands

def cmd_create(node: Node, opts: dict[str, object]) -> None:
    vmid = int(str(opts.pop("vmid")))
    ostemplate = str(opts.pop("ostemplate"))
    start = opts.pop("start", 0)
    storage = str(opts.pop("storage", "local"))
    for ignored in ("bwlimit", "force", "ignore-unpack-errors", "password", "pool", "restore",
                    "ssh-public-keys", "unique"):
        opts.pop(ignored, None)
    with node.locked(str(vmid)):
        _, ids = node.read_vmlist()
        if vmid in ids:
            other_node, kind, _ = ids[vmid]
            raise PctError(f"{'VM' if kind == 'qemu' else 'CT'} {vmid} already exists on node '{other_node}'\n")
        if any(re.fullmatch(r"mp\d+", k) for k in opts) and "rootfs" not in opts:
            raise PctError("mount points configured, but 'rootfs' not set - aborting\n")
        # create_and_lock_config: the id is taken at once by a config holding only the
        # lock; the whole config replaces it at the end. Interrupted in between, that is
        # what stays (and `pct unlock` + `pct destroy` clear it).
        locked_config = Config()
        locked_config.options["lock"] = "create"
        node.save(vmid, locked_config)
        node.update_vmlist(vmid, register=True)
        marker = os.environ.get("SMBGW_PCT_CREATE_DIES")  # the tests' way to interrupt it here, once
        if marker and Path(marker).exists():
            Path(marker).unlink()
            os._exit(137)
        try:
            template = resolve_template(node, ostemplate, vmid)
            config = Config()
            rootfs = str(opts.pop("rootfs", f"{storage}:4"))
            apply_options(vmid, config, opts)
            config.options["rootfs"] = allocate_rootfs(vmid, rootfs)
            config.options.setdefault("arch", "amd64")
            config.options.setdefault("hostname", f"CT{vmid}")
            config.options.setdefault("memory", "512")
            config.options.setdefault("swap", "512")
            if "ostype" not in config.options and (template / "etc/debian_version").exists():
                config.options["ostype"] = "debian"
            ctdir = node.lxcpath / str(vmid)
            if ctdir.exists():
                shutil.rmtree(ctdir)
            (ctdir / "delta0").mkdir(parents=True)
            (ctdir / "work").mkdir()
            (ctdir / "template").symlink_to(template.absolute())
            node.save(vmid, config)  # the id is in the guest list since the lock
        except (PctError, ParamError):
            # As create_vm's error path: the config (and its id) go again.
            node.conf_path(vmid).unlink(missing_ok=True)
            node.update_vmlist(vmid, register=False)
            raise
    if start:
        cmd_start(node, {"vmid": vmid})


def allocate_rootfs(vmid: int, value: str) -> str:
    data = parse_property_string(value, "volume", {"volume", *MP_KEYS_OPTIONAL})
    volume = data.pop("volume")
    storage, sep, size = volume.partition(":")
    if sep and re.fullmatch(r"\d+(\.\d+)?", size):
        name = f"{vmid}/vm-{vmid}-disk-0.raw" if storage == "local" else f"vm-{vmid}-disk-0"
        data = {"volume": f"{storage}:{name}", **data, "size": format_size(int(float(size) * 1024**3))}
    else:
        data = {"volume": volume, **data}
    return print_property_string(data, "volume", ())


def apply_options(vmid: int, config: Config, opts: dict[str, object]) -> None:
    for key in sorted(opts):
        value = str(opts[key])
        try:
            value = _canonical(vmid, key, value)
        except ParamError:
            raise
        except PctError as error:
            raise ParamError("Parameter verification failed.\n", {key: str(error).strip()}) from None
        if key == "description":
            config.description = value
            continue
        config.options[key] = value


def _canonical(vmid: int, key: str, value: str) -> str:
    if key == "tags":
        return get_unique_tags(value)
    if re.fullmatch(r"net\d+", key):
        return canonical_net(vmid, key, value)
    if re.fullmatch(r"mp\d+", key) or key == "rootfs":
        return canonical_mp(key, value)
    return value


def check_lock(vmid: int, config: Config) -> None:
    """pve-guest-common AbstractConfig `check_lock`."""
    if config.options.get("lock"):
        raise PctError(f"CT {vmid} is locked ({config.options['lock']})\n")


def cmd_unlock(node: Node, opts: dict[str, object]) -> None:
    vmid = int(str(opts["vmid"]))
    with node.locked(str(vmid)):
        config = node.load(vmid)
        config.options.pop("lock", None)
        node.save(vmid, config)


def cmd_set(node: Node, opts: dict[str, object]) -> None:
    vmid = int(str(opts.pop("vmid")))
    delete = [k for k in re.split(r"[,;\s]+", str(opts.pop("delete", ""))) if k]
    opts.pop("revert", None)
    opts.pop("digest", None)
    with node.locked(str(vmid)):
        config = node.load(vmid)
        check_lock(vmid, config)
        for key in delete:
            present = config.description if key == "description" else config.options.get(key)
            if not present:
                sys.stderr.write(f"cannot delete '{key}' - not set in current configuration!\n")
                continue
            if key in ("memory", "rootfs", "ostype"):
                raise PctError(f"unable to delete required option '{key}'\n")
            if key == "unprivileged":
                raise PctError(f"unable to delete read-only option: '{key}'\n")
            if key == "description":
                config.description = ""
            else:
                del config.options[key]
        if "unprivileged" in opts:
            raise PctError("unable to modify read-only option: 'unprivileged'\n")
        if "rootfs" in opts:
            opts["rootfs"] = allocate_rootfs(vmid, str(opts["rootfs"]))
        apply_options(vmid, config, opts)
        node.save(vmid, config)


def host_dns(text: str) -> tuple[str, list[str]]:
    """The host's search domains and up to three name servers, from its resolv.conf
    (PVE::INotify's `read_etc_resolv_conf`: `search`/`domain`, then `nameserver` lines)."""
    search, servers = "", []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] in ("search", "domain"):
            search = " ".join(fields[1:])
        elif len(fields) >= 2 and fields[0] == "nameserver" and len(servers) < 3:
            servers.append(fields[1])
    return search, servers


def set_dns(upper: Path, config: Config, uid: int, gid: int) -> None:
    """/etc/resolv.conf of the container, written at every start as pve-container's
    Setup/Base.pm `set_dns` does (`lookup_dns_conf`): the config's `searchdomain` and
    `nameserver`, each one it does not set taken from the host's resolv.conf (pct(1),
    Proxmox VE 8: "Create will automatically use the setting from the host if you
    neither set searchdomain nor nameserver"). The host is the namespace `pct` runs in:
    `ip netns exec` shows a namespace its own /etc/netns/NAME/resolv.conf. Written into
    the overlay's upper layer, owned by the container's root. (Proxmox also leaves the
    file alone when /etc/.pve-ignore.resolv.conf exists; the templates here have none.)"""
    resolv = Path("/etc/resolv.conf")
    host_search, host_servers = host_dns(resolv.read_text(errors="replace") if resolv.exists() else "")
    search = config.options.get("searchdomain", host_search)
    servers = config.options["nameserver"].split() if "nameserver" in config.options else host_servers
    data = (f"search {search}\n" if search else "") + "".join(f"nameserver {ns}\n" for ns in servers)
    etc = upper / "etc"
    if not etc.exists():
        etc.mkdir(mode=0o755)
        os.chown(etc, uid, gid)
    target = etc / "resolv.conf"
    target.unlink(missing_ok=True)  # a symlink the container made must not be followed
    target.write_text(data)
    os.chown(target, uid, gid)


def cmd_start(node: Node, opts: dict[str, object]) -> None:
    vmid = int(str(opts["vmid"]))
    with node.locked(str(vmid)):
        config = node.load(vmid)
        if node.running(vmid):
            raise PctError(f"CT {vmid} already running\n")
        check_lock(vmid, config)
        if hamanager.is_managed(node.root, vmid) is not None:
            # Proxmox asks HA (`ha-manager set ct:VMID --state started`) and its local
            # resource manager starts the container; here that start follows at once.
            sys.stdout.write(f"Requesting HA start for CT {vmid}\n")
            hamanager.set_state(node.root, vmid, "started")
        missing = bridges_missing(config)
        if missing:
            raise PctError(f"bridge '{missing[0]}' does not exist\nstartup for container '{vmid}' failed\n")
        ctdir = node.lxcpath / str(vmid)
        template = ctdir / "template"
        idmap = effective_idmap(config)
        lower = shifted_lower(template, idmap) if idmap else template.resolve()
        root_uid, root_gid = (map_id(idmap, "u", 0), map_id(idmap, "g", 0)) if idmap else (0, 0)
        for sub in ("delta0", "work"):
            (ctdir / sub).mkdir(exist_ok=True)
            os.chown(ctdir / sub, root_uid or 0, root_gid or 0)
        if idmap:
            os.chmod(ctdir, 0o755)
            closed = [str(p) for p in (ctdir, *ctdir.parents) if not p.stat().st_mode & stat.S_IXOTH]
            if closed:
                raise PctError(f"{closed[-1]} is not searchable by the container's root (uid {root_uid}): "
                               f"the overlay is mounted in its user namespace (test stand-in)\n"
                               f"startup for container '{vmid}' failed\n")
        set_dns(ctdir / "delta0", config, root_uid or 0, root_gid or 0)
        (ctdir / "config").write_text(lxc_config(node, vmid, config, lower))
        log = ctdir / "start.log"
        log.unlink(missing_ok=True)
        started = node.lxc("lxc-start", vmid, "-d", "-o", str(log), "-l", "ERROR")
        waited = node.lxc("lxc-wait", vmid, "-s", "RUNNING", "-t", "30") if started.returncode == 0 else started
        if waited.returncode != 0 or not node.running(vmid):
            details = started.stderr + (log.read_text(errors="replace") if log.exists() else "")
            raise PctError(f"{details}startup for container '{vmid}' failed\n")


def cmd_stop(node: Node, opts: dict[str, object]) -> None:
    vmid = int(str(opts["vmid"]))
    node.load(vmid)
    if not node.running(vmid):
        raise PctError(f"CT {vmid} not running\n")
    if hamanager.is_managed(node.root, vmid) is not None:
        # `ha-manager crm-command stop ct:VMID 0`: HA stops it and records it as stopped.
        sys.stdout.write(f"Requesting HA stop for CT {vmid}\n")
        hamanager.set_state(node.root, vmid, "stopped")
    done = node.lxc("lxc-stop", vmid, "--kill")
    if node.running(vmid):
        raise PctError(f"{done.stderr}container did not stop\n")


def cmd_shutdown(node: Node, opts: dict[str, object]) -> None:
    vmid = int(str(opts["vmid"]))
    node.load(vmid)
    if not node.running(vmid):
        raise PctError(f"CT {vmid} not running\n")
    timeout = int(str(opts.get("timeout", 60)))
    argv = ["--timeout", str(timeout)] if opts.get("forceStop") else ["--nokill", "--timeout", str(timeout)]
    done = node.lxc("lxc-stop", vmid, *argv, timeout=timeout + 30)
    if done.returncode != 0:
        sys.stderr.write(f"command 'lxc-stop -n {vmid} {' '.join(argv)}' failed: exit code {done.returncode}\n")
    if node.running(vmid):
        raise PctError("container did not stop\n")


def cmd_status(node: Node, opts: dict[str, object]) -> None:
    vmid = int(str(opts["vmid"]))
    node.load(vmid)
    status = "running" if node.running(vmid) else "stopped"
    if opts.get("verbose"):
        config = node.load(vmid)
        name = re.sub(r"\s", "", config.options.get("hostname", f"CT{vmid}"))
        sys.stdout.write(f"name: {name}\nstatus: {status}\ntype: lxc\nvmid: {vmid}\n")
    else:
        sys.stdout.write(f"status: {status}\n")


def cmd_exec(node: Node, opts: dict[str, object]) -> None:
    vmid = int(str(opts["vmid"]))
    node.load(vmid)
    if not node.running(vmid):
        raise PctError(f"container '{vmid}' not running!\n")
    extra = opts.get("extra-args")
    command = [str(arg) for arg in extra] if isinstance(extra, list) else []
    if not command:
        raise PctError(f"missing command at {PCT_PM} line 222.\n")
    argv = ["lxc-attach", "-P", str(node.lxcpath), "-n", str(vmid)]
    if opts.get("keep-env", 0):
        argv.append("--keep-env")
    else:
        argv += ["--clear-env", "-v", f"PATH={CONTAINER_PATH}", "-v", "HOME=/root", "-v", "LANG=C.UTF-8",
                 "-v", "TERM=dumb"]
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    ensure_cgroup_mounts()
    sys.stdout.flush()
    os.execvpe("lxc-attach", [*argv, "--", *command], env)


def cmd_push(node: Node, opts: dict[str, object]) -> None:
    vmid = int(str(opts["vmid"]))
    source, dest = str(opts["file"]), str(opts["destination"])
    perms, user, group = (None if opts.get(k) is None else str(opts[k]) for k in ("perms", "user", "group"))
    with node.locked(str(vmid)):
        if not node.running(vmid):
            raise PctError("can only push files to a running CT\n")
        unprivileged = node.load(vmid).options.get("unprivileged") == "1"
        pid = node.init_pid(vmid)

        def work() -> None:
            try:
                src = os.open(source, os.O_RDONLY)
            except OSError:
                raise PctError(f"failed to open {source} for reading\n") from None
            # Both namespace files are opened first: after the first setns, /proc is the CT's.
            mntns = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
            userns = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY) if unprivileged else None
            _setns(mntns, CLONE_NEWNS)
            os.chdir("/")
            if userns is not None:
                _setns(userns, CLONE_NEWUSER)
                os.setgid(0)
                os.setuid(0)
            target = create_file(dest, perms, user, group)
            copy_fd(src, target)

        in_child(work)


def cmd_pull(node: Node, opts: dict[str, object]) -> None:
    vmid = int(str(opts["vmid"]))
    path, dest = str(opts["path"]), str(opts["destination"])
    perms, user, group = (None if opts.get(k) is None else str(opts[k]) for k in ("perms", "user", "group"))
    with node.locked(str(vmid)):
        if not node.running(vmid):
            raise PctError(f"can only pull files from a running VM at {PCT_PM} line 608.\n")
        node.load(vmid)
        pid = node.init_pid(vmid)

        def work() -> None:
            target = create_file(dest, perms, user, group)
            _setns(os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY), CLONE_NEWNS)
            os.chdir("/")
            try:
                src = os.open(path, os.O_RDONLY)
            except OSError as error:
                raise PctError(f"failed to open {path}: {error.strerror}\n") from None
            copy_fd(src, target)

        in_child(work)


def cmd_destroy(node: Node, opts: dict[str, object]) -> None:
    vmid = int(str(opts["vmid"]))
    check_lock(vmid, node.load(vmid))
    ha_managed = hamanager.is_managed(node.root, vmid) is not None
    if ha_managed and not opts.get("purge"):
        raise PctError(f"unable to remove CT {vmid} - used in HA resources and purge parameter not set.\n")
    message = f"unable to destroy CT {vmid} - container is running\n"
    if not opts.get("force") and node.running(vmid):
        raise PctError(message)
    with node.locked(str(vmid)):
        node.load(vmid)
        if node.running(vmid):
            if not opts.get("force"):
                raise PctError(message)
            sys.stderr.write(f"forced to stop CT {vmid} before destroying!\n")
            node.lxc("lxc-stop", vmid, "--kill")
            if node.running(vmid):
                raise PctError("container did not stop\n")
        ctdir = node.lxcpath / str(vmid)
        if ctdir.exists():
            busy = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                    if line.split()[4].startswith(f"{ctdir}/")]
            if busy:
                raise PctError(f"unable to destroy CT {vmid} - still mounted: {', '.join(busy)}\n")
            shutil.rmtree(ctdir)  # never follows symbolic links; bind mounts live in the CT's namespace only
        node.conf_path(vmid).unlink()
        node.update_vmlist(vmid, register=False)
        if ha_managed:
            with hamanager.locked(node.root):
                resources = hamanager.read(node.root)
                resources.pop(f"ct:{vmid}", None)
                hamanager.write(node.root, resources)


def cmd_migrate(node: Node, opts: dict[str, object]) -> None:
    """Checks as API2/LXC.pm `migrate_vm` and PVE/LXC/Migrate.pm `prepare` make them, then
    the container's config moves to the target node's directory and the cluster's guest
    list says so. There is no second node here: a running container is stopped and is not
    started again (`--restart` would start it on the target)."""
    vmid, target = int(str(opts["vmid"])), str(opts["target"])
    if not re.fullmatch(r"[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?", target):
        raise ParamError("Parameter verification failed.\n",
                         {"target": "invalid format - value does not look like a valid node name"})
    if target == node.name:
        raise ParamError("Parameter verification failed.\n", {"target": "target is local node."})
    if not (node.root / "etc/pve/nodes" / target).is_dir():
        raise PctError(f"no such cluster node '{target}'\n")
    config = node.load(vmid)
    running = node.running(vmid)
    if running and not opts.get("online") and not opts.get("restart"):
        raise PctError("can't migrate running container without --online or --restart\n")
    if hamanager.is_managed(node.root, vmid) is not None:
        sys.stdout.write(f"Requesting HA migration for CT {vmid} to node {target}\n")
    for key, value in sorted(config.options.items()):
        if re.fullmatch(r"mp\d+", key):
            mount = parse_property_string(value, "volume", {"volume", "mp", *MP_KEYS_OPTIONAL})
            if mount["volume"].startswith("/") and mount.get("shared") != "1":
                raise PctError(f"cannot migrate local bind mount point '{key}'\n")
    with node.locked(str(vmid)):
        if running:
            node.lxc("lxc-stop", vmid, "--kill")
        destination = node.root / "etc/pve/nodes" / target / "lxc"
        destination.mkdir(parents=True, exist_ok=True)
        os.replace(node.conf_path(vmid), destination / f"{vmid}.conf")
        with node.locked("vmlist"):
            version, ids = node.read_vmlist()
            ids[vmid] = (target, "lxc", version + 1)
            path = node.root / "etc/pve/.vmlist"
            tmp = path.with_name(f".vmlist.tmp{os.getpid()}")
            tmp.write_text(render_vmlist(version + 1, ids))
            os.replace(tmp, path)


def cmd_config(node: Node, opts: dict[str, object]) -> None:
    vmid = int(str(opts["vmid"]))
    if opts.get("snapshot") and opts.get("current"):
        error = "cannot use 'snapshot' parameter with 'current'"
        raise ParamError("Parameter verification failed.\n", {"snapshot": error, "current": error})
    config = node.load(vmid)
    if opts.get("snapshot"):
        raise PctError(f"snapshot '{opts['snapshot']}' does not exist\n")
    sys.stdout.write(config.show())


def cmd_list(node: Node, opts: dict[str, object]) -> None:
    rows = []
    for path in node.conf_dir.glob("*.conf"):
        if not path.stem.isdigit():
            continue
        vmid = int(path.stem)
        config = node.load(vmid)
        name = re.sub(r"\s", "", config.options.get("hostname", "") or f"CT{vmid}")
        rows.append((vmid, "running" if node.running(vmid) else "stopped", config.options.get("lock", ""), name))
    sys.stdout.write(render_list(rows))


HANDLERS: dict[str, Callable[[Node, dict[str, object]], None]] = {
    "create": cmd_create, "set": cmd_set, "start": cmd_start, "stop": cmd_stop, "shutdown": cmd_shutdown,
    "status": cmd_status, "push": cmd_push, "pull": cmd_pull, "exec": cmd_exec, "destroy": cmd_destroy,
    "config": cmd_config, "list": cmd_list, "migrate": cmd_migrate, "unlock": cmd_unlock,
}


HOLD_DIR = ".pct-standin-hold"


def hold(root: Path, command: str) -> None:
    """A test plays a `pct` that hangs: while ``ROOT/.pct-standin-hold/COMMAND`` exists,
    that subcommand waits before it does anything (and is killed by whoever times it out,
    as a hanging pct would be)."""
    held = root / HOLD_DIR / command
    while held.exists():
        time.sleep(0.1)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        sys.stderr.write("ERROR: no command specified\nUSAGE: pct <COMMAND> [ARGS] [OPTIONS]\n")
        return EXIT_ERROR
    name, rest = args[0], args[1:]
    if name not in HANDLERS:
        sys.stderr.write(f"ERROR: unknown command 'pct {name}'\nUSAGE: pct <COMMAND> [ARGS] [OPTIONS]\n")
        return EXIT_ERROR
    try:
        opts = parse_argv(name, rest)
        node = Node.from_env()
        hold(node.root, name)
        HANDLERS[name](node, opts)
    except ParamError as error:
        error.usage = usage_line(name)
        sys.stdout.flush()
        sys.stderr.write(error.render())
        return EXIT_ERROR
    except PctError as error:
        sys.stdout.flush()
        sys.stderr.write(str(error))
        return EXIT_ERROR
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())


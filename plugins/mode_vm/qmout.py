"""What Proxmox's `qm` prints, read strictly (qemu-server's PVE/CLI/qm.pm and
PVE/QemuServer/Agent.pm; the same in qemu-server 8.x of Proxmox VE 8 and 9.x of 9):

- `qm status VMID`: one line ``status: <qmpstatus>`` (running, stopped, paused, ...;
  "unknown" when QEMU says nothing).
- `qm list`: nothing at all when there is no VM; else a header printed with
  ``%10s %-20s %-10s %-10s %12s %-10s`` (VMID NAME STATUS MEM(MB) BOOTDISK(GB) PID) and one
  row per VM in the same layout, sorted by VMID (BOOTDISK with two decimals).
- `qm guest exec VMID -- ARGV` (synchronous, the default): the guest agent's
  exec-status as pretty JSON (canonical key order): ``exited`` 0/1, ``exitcode``,
  ``out-data``/``err-data`` already base64-decoded by Proxmox, ``out-truncated``/
  ``err-truncated`` when the agent cut them; when the command outlived `--timeout`,
  "timeout reached, returning pid" on stderr and ``{"pid": N}``.
- `qm guest cmd VMID network-get-interfaces`: the guest agent's answer as pretty JSON, a
  list of interfaces (QEMU's qga schema `GuestNetworkInterface`: ``name``, optional
  ``hardware-address`` and ``ip-addresses``, each ``ip-address``, ``ip-address-type``
  ipv4/ipv6 and ``prefix``).

Anything else is `QmOutputError`: the agent acts on none of it.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

MAX_OUTPUT = 1 << 20
MAX_ROWS = 100_000
MAX_INTERFACES = 1024
LIST_HEADER = ["VMID", "NAME", "STATUS", "MEM(MB)", "BOOTDISK(GB)", "PID"]


class QmOutputError(ValueError):
    """qm printed something that is not what its source prints."""


def _bounded(text: str, what: str) -> str:
    if len(text) > MAX_OUTPUT:
        raise QmOutputError(f"{what} printed more than 1 MiB")
    return text


def parse_status(text: str) -> str:
    lines = [line for line in _bounded(text, "qm status").splitlines() if line.strip()]
    if len(lines) != 1 or not lines[0].startswith("status: "):
        raise QmOutputError(f"qm status printed {text[:80]!r}, not 'status: STATE'")
    state = lines[0].removeprefix("status: ").strip()
    if not (state.isascii() and state.isalpha() and state.islower() and len(state) <= 32):
        raise QmOutputError(f"qm status printed a state {state[:40]!r} that is not a word")
    return state


@dataclass(frozen=True)
class ListedVm:
    vmid: int
    name: str
    status: str
    pid: int


def parse_list(text: str) -> dict[int, ListedVm]:
    lines = [line for line in _bounded(text, "qm list").splitlines() if line.strip()]
    if not lines:
        return {}
    if lines[0].split() != LIST_HEADER:
        raise QmOutputError(f"qm list printed {lines[0][:80]!r}, not its header")
    if len(lines) > MAX_ROWS:
        raise QmOutputError(f"qm list printed more than {MAX_ROWS} rows")
    found: dict[int, ListedVm] = {}
    for line in lines[1:]:
        fields = line.split()
        if len(fields) != 6 or not all(f.isascii() for f in fields) or not fields[0].isdigit() \
                or len(fields[0]) > 9 or not fields[2].isalpha() or not fields[5].isdigit():
            raise QmOutputError(f"qm list printed a row {line[:80]!r} that is not 'VMID NAME STATUS MEM DISK PID'")
        vmid = int(fields[0])
        if vmid in found:
            raise QmOutputError(f"qm list printed VMID {vmid} twice")
        found[vmid] = ListedVm(vmid, fields[1], fields[2], int(fields[5]))
    return found


@dataclass(frozen=True)
class ExecResult:
    exitcode: int
    out: str
    err: str
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.exitcode == 0


def parse_exec(text: str) -> ExecResult:
    """A finished `qm guest exec`; QmOutputError for anything else (a command that
    outlived the timeout gives only its pid, which is an error for the caller too)."""
    try:
        data = json.loads(_bounded(text, "qm guest exec"))
    except ValueError:
        raise QmOutputError(f"qm guest exec printed {text[:80]!r}, not JSON") from None
    if not isinstance(data, dict):
        raise QmOutputError("qm guest exec printed JSON that is not an object")
    if "exited" not in data and "pid" in data:
        raise QmOutputError(f"the command in the guest did not finish in time (its pid there: {data['pid']!r})")
    if data.get("exited") != 1:
        raise QmOutputError(f"qm guest exec printed exited={data.get('exited')!r}, not 1")
    code, out, err = data.get("exitcode"), data.get("out-data", ""), data.get("err-data", "")
    if not isinstance(code, int) or isinstance(code, bool) or not isinstance(out, str) or not isinstance(err, str):
        raise QmOutputError("qm guest exec printed an exitcode or output of the wrong type")
    truncated = bool(data.get("out-truncated")) or bool(data.get("err-truncated"))
    return ExecResult(code, out, err, truncated)


def parse_interfaces(text: str) -> dict[str, list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]]:
    """`network-get-interfaces` as hardware address (lower case) -> its addresses, each
    with its prefix; an interface without a hardware address (lo) is left out."""
    try:
        data = json.loads(_bounded(text, "qm guest cmd network-get-interfaces"))
    except ValueError:
        raise QmOutputError(f"network-get-interfaces printed {text[:80]!r}, not JSON") from None
    if not isinstance(data, list) or len(data) > MAX_INTERFACES:
        raise QmOutputError("network-get-interfaces printed something that is not a list of interfaces")
    found: dict[str, list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]] = {}
    for item in data:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise QmOutputError("network-get-interfaces printed an interface without a name")
        mac = item.get("hardware-address")
        listed = item.get("ip-addresses", [])
        if (mac is not None and not isinstance(mac, str)) or not isinstance(listed, list):
            raise QmOutputError(f"network-get-interfaces: interface {item['name'][:40]!r} is malformed")
        addresses = [_address(entry) for entry in listed]
        if mac and mac != "00:00:00:00:00:00":
            found.setdefault(mac.lower(), []).extend(addresses)
    return found


def _address(entry: object) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    if not isinstance(entry, dict):
        raise QmOutputError("network-get-interfaces printed an address that is not an object")
    address, kind, prefix = entry.get("ip-address"), entry.get("ip-address-type"), entry.get("prefix")
    if kind not in ("ipv4", "ipv6") or not isinstance(address, str) or not isinstance(prefix, int) \
            or isinstance(prefix, bool):
        raise QmOutputError(f"network-get-interfaces printed an address {str(entry)[:80]!r}")
    try:
        parsed = ipaddress.ip_interface(f"{address}/{prefix}")
    except ValueError:
        raise QmOutputError(f"network-get-interfaces printed {address[:60]!r}/{prefix}, not an address") from None
    if parsed.version != (4 if kind == "ipv4" else 6):
        raise QmOutputError(f"network-get-interfaces calls {address[:60]!r} {kind}")
    return parsed


def leased(interfaces: dict[str, list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]],
           mac: str) -> str | None:
    """The IPv4 address (with prefix) a DHCP VM holds on its NIC `mac`: the first that
    is neither loopback nor link-local; None while it has none."""
    for address in interfaces.get(mac.lower(), []):
        if address.version == 4 and not address.is_loopback and not address.is_link_local:
            return str(address)
    return None

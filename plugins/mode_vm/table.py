"""A share file's `[vm]` table (`mode = "vm"` only): the VM that serves it.

```toml
[vm]
vmid = 3100                     # optional, as for lxc
template = 9000                 # optional: default [proxmox] vm_template
address = "192.168.10.71/24"    # or "dhcp"
gateway = "192.168.10.1"
cores = 2
memory = "2G"
full_clone = false
boot_timeout = "10m"            # start -> guest agent, cloud-init done, smbd on 445
```

`address` and `gateway` as for a container (`proxmox/guestnet.py`). `memory` is at least
512 MiB: a Debian guest with its kernel, cloud-init's first boot (which installs nothing
but runs Python) and smbd with a few clients needs that much, and below it the guest
swaps or the OOM killer takes smbd; at most 4 TiB (Proxmox would take up to 256 TiB,
but a file server VM asking for more than 4 TiB is a typo, not a plan); whole MiB, as
Proxmox counts it. `cores` is 1..8192 (Proxmox's range for `cores`).
`boot_timeout` (30s..2h, default 10m): how long a start may take until the share is
served: the guest agent answers, cloud-init has finished, smbd accepts connections. A
first boot under emulation, or on a loaded node, takes minutes; a VM that is not ready by
then is taken away again (a new one) or reported (a restarted one).
`full_clone`: a linked clone (the default) shares the template's disk and is made in a
second; a full clone copies it and is independent of the template.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from smbgw_agent.model.errors import FieldError
from smbgw_agent.model.fields import REQUIRED, Table, address
from smbgw_agent.model.units import parse_size

from ..proxmox.guestnet import check_gateway, interface_address
from ..proxmox.table import vmid

SECTION = "vm"
MIB = 1 << 20
MIN_MEMORY = 512 * MIB
MAX_MEMORY = 4 << 40
DEFAULT_MEMORY = 2048 * MIB
DEFAULT_CORES = 2
DEFAULT_BOOT_TIMEOUT = 600.0


def memory(value: object) -> int:
    size = parse_size(value)
    if size < MIN_MEMORY:
        raise FieldError(f"{value!r} is less than 512M, too little for a Debian guest with smbd")
    if size > MAX_MEMORY:
        raise FieldError(f"{value!r} is more than 4T (a typo? no node lends one file server that much)")
    if size % MIB:
        raise FieldError(f"{value!r} is not a whole number of MiB (Proxmox counts memory in MiB)")
    return size


@dataclass(frozen=True)
class VmSpec:
    """A share's VM, as its file asks for it."""

    address: str
    vmid: int | None = None
    template: int | None = None
    gateway: str | None = None
    cores: int = DEFAULT_CORES
    memory: int = DEFAULT_MEMORY  # bytes
    full_clone: bool = False
    boot_timeout: float = DEFAULT_BOOT_TIMEOUT

    @property
    def memory_mib(self) -> int:
        return self.memory // MIB

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> VmSpec:
        return cls(str(data["address"]), data.get("vmid"), data.get("template"), data.get("gateway"),
                   int(data["cores"]), int(data["memory"]), bool(data["full_clone"]),
                   float(data.get("boot_timeout", DEFAULT_BOOT_TIMEOUT)))


def parse_share_table(data: Mapping[str, Any]) -> dict[str, Any]:
    table = Table(data)
    parsed: dict[str, Any] = {
        "vmid": table.value("vmid", vmid, None),
        "template": table.value("template", vmid, None),
        "address": table.value("address", interface_address, REQUIRED),
        "gateway": table.value("gateway", address, None),
        "cores": table.integer("cores", DEFAULT_CORES, minimum=1, maximum=8192),
        "memory": table.value("memory", memory, DEFAULT_MEMORY),
        "full_clone": table.boolean("full_clone", False),
        "boot_timeout": table.duration("boot_timeout", DEFAULT_BOOT_TIMEOUT, minimum=30.0, maximum=7200.0),
    }
    check_gateway(table, parsed["address"], parsed["gateway"])
    if parsed["vmid"] is not None and parsed["vmid"] == parsed["template"]:
        table.report("vmid", f"{parsed['vmid']} is the template's VMID: a share's VM is a clone of it")
    table.done()
    return parsed

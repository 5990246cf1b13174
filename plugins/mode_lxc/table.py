"""A share file's `[lxc]` table (`mode = "lxc"` only): the container that serves it.

```toml
[lxc]
vmid = 2100                     # optional: else allocated from [proxmox] vmid_range and recorded
address = "192.168.10.61/24"    # or "dhcp"
gateway = "192.168.10.1"
cores = 1
memory = "512M"
autostart = true                # false: a container stopped by hand stays stopped
```

`address` and `gateway`: `proxmox/guestnet.py`. `memory` is at least 128 MiB (smbd and
systemd in a container start in about 40 MiB; a share with clients needs room) and at
most 1 TiB; Proxmox counts it in MiB, so it must be whole MiB. `cores` is 1..8192, as
Proxmox allows.
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

SECTION = "lxc"
MIB = 1 << 20
MIN_MEMORY = 128 * MIB
MAX_MEMORY = 1 << 40
DEFAULT_MEMORY = 512 * MIB


def memory(value: object) -> int:
    size = parse_size(value)
    if size < MIN_MEMORY:
        raise FieldError(f"{value!r} is less than 128M, too little for systemd and smbd")
    if size > MAX_MEMORY:
        raise FieldError(f"{value!r} is more than 1T")
    if size % MIB:
        raise FieldError(f"{value!r} is not a whole number of MiB (Proxmox counts memory in MiB)")
    return size


@dataclass(frozen=True)
class LxcSpec:
    """A share's container, as its file asks for it."""

    address: str
    vmid: int | None = None
    gateway: str | None = None
    cores: int = 1
    memory: int = DEFAULT_MEMORY  # bytes
    autostart: bool = True

    @property
    def memory_mib(self) -> int:
        return self.memory // MIB

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> LxcSpec:
        return cls(str(data["address"]), data.get("vmid"), data.get("gateway"), int(data["cores"]),
                   int(data["memory"]), bool(data["autostart"]))


def parse_share_table(data: Mapping[str, Any]) -> dict[str, Any]:
    table = Table(data)
    parsed: dict[str, Any] = {
        "vmid": table.value("vmid", vmid, None),
        "address": table.value("address", interface_address, REQUIRED),
        "gateway": table.value("gateway", address, None),
        "cores": table.integer("cores", 1, minimum=1, maximum=8192),
        "memory": table.value("memory", memory, DEFAULT_MEMORY),
        "autostart": table.boolean("autostart", True),
    }
    check_gateway(table, parsed["address"], parsed["gateway"])
    table.done()
    return parsed

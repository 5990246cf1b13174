"""agent.toml `[proxmox]`: where the agent's guests go on this cluster.

```toml
[proxmox]
vmid_range = [9000, 9099]       # ids the agent may allocate; it never reuses one it did not create
bridge = "vmbr0"
storage = "local-lvm"           # root disks of containers and VMs
snippets_storage = "local"      # cloud-init user-data snippets (vm)
lxc_template = "local:vztmpl/smbgw-debian-12_amd64.tar.zst"
vm_template = 9000              # or the VM tagged smbgw-template
destroy_orphans = false         # true: destroy a guest tagged smbgw whose share file is gone
```

Values are checked with Proxmox's own rules (pve-common's formats): a VMID is
100..999999999, a storage id is `[a-z][a-z0-9._-]*[a-z0-9]`, a bridge a Linux interface
name (at most 15 bytes, no `/`, `:` or white space). A template volume is
`STORAGE:vztmpl/FILE`; anything that could step out of the storage (`..`, `/` in FILE) is
refused. `vmid_range` has no default: a cluster's VMIDs are the administrator's to hand
out, and the agent must be told which it may use.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from smbgw_agent.model.errors import FieldError
from smbgw_agent.model.fields import REQUIRED, Table, integer, string

SECTION = "proxmox"
VMID_MIN, VMID_MAX = 100, 999_999_999
MAX_RANGE = 100_000  # ids the agent would scan to allocate one
_STORAGE_ID = re.compile(r"^[a-z][a-z0-9._-]*[a-z0-9]$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_TEMPLATE_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*\.tar(\.(gz|xz|zst|bz2))?$")


def vmid(value: object) -> int:
    return integer(value, VMID_MIN, VMID_MAX)


def vmid_range(value: object) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2:
        raise FieldError("must be [first, last], e.g. [9000, 9099]")
    first, last = vmid(value[0]), vmid(value[1])
    if first > last:
        raise FieldError(f"first ({first}) is larger than last ({last})")
    if last - first + 1 > MAX_RANGE:
        raise FieldError(f"holds {last - first + 1} ids; at most {MAX_RANGE}")
    return first, last


def storage_id(value: object) -> str:
    text = string(value, "storage", 64)
    if not _STORAGE_ID.match(text):
        raise FieldError(f"{text!r} is not a Proxmox storage id (lower-case letters, digits, '.', '_', '-'; "
                         "starting with a letter)")
    return text


def bridge(value: object) -> str:
    text = string(value, "bridge", 64)
    if not _IFNAME.match(text) or text in (".", ".."):
        raise FieldError(f"{text!r} is not a network interface name (at most 15 letters, digits, '_', '.', '-')")
    return text


def template_volume(value: object) -> str:
    """`STORAGE:vztmpl/FILE`, FILE a container template archive."""
    text = string(value, "lxc_template", 256)
    storage, _, rest = text.partition(":")
    kind, _, name = rest.partition("/")
    if not storage or kind != "vztmpl" or not name:
        raise FieldError(f"{text!r} is not a template volume: write STORAGE:vztmpl/FILE, e.g. "
                         "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst")
    storage_id(storage)
    if not _TEMPLATE_FILE.match(name):
        raise FieldError(f"{name!r} is not a container template file name (FILE.tar, .tar.gz, .tar.xz or .tar.zst)")
    return text


@dataclass(frozen=True)
class ProxmoxSettings:
    vmid_range: tuple[int, int]
    bridge: str
    storage: str
    snippets_storage: str = "local"
    lxc_template: str | None = None
    vm_template: int | None = None
    destroy_orphans: bool = False

    @classmethod
    def from_config(cls, sections: Mapping[str, Any]) -> ProxmoxSettings | None:
        """The parsed table (`parse_agent_table`), None when agent.toml has none."""
        data = sections.get(SECTION)
        if not isinstance(data, Mapping):
            return None
        first, last = data["vmid_range"]
        return cls((int(first), int(last)), str(data["bridge"]), str(data["storage"]),
                   str(data["snippets_storage"]), data.get("lxc_template"), data.get("vm_template"),
                   bool(data["destroy_orphans"]))


def parse_agent_table(data: Mapping[str, Any]) -> dict[str, Any]:
    table = Table(data)
    ids = table.value("vmid_range", vmid_range, REQUIRED)
    parsed = {
        "vmid_range": list(ids) if isinstance(ids, tuple) else None,
        "bridge": table.value("bridge", bridge, REQUIRED),
        "storage": table.value("storage", storage_id, REQUIRED),
        "snippets_storage": table.value("snippets_storage", storage_id, "local"),
        "lxc_template": table.value("lxc_template", template_volume, None),
        "vm_template": table.value("vm_template", vmid, None),
        "destroy_orphans": table.boolean("destroy_orphans", False),
    }
    table.done()
    return parsed

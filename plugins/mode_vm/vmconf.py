"""The VM a share asks for, as `qm` options, and how a live VM differs from it.

Pure: from the share, its `[vm]` table and `[proxmox]`, `wanted_options` gives what `qm
set` is told after `qm clone`; `differences` compares that with the VM's config file and
says, per option, whether it takes effect at once or only when the VM boots again (the
plan says which; the mode then shuts the VM down and starts it at the end of its job).

What the agent sets, and why:

- `name` `smbgw-<share>` and the guest identity of every guest the agent makes
  (`proxmox/identity.py`): the `smbgw` and share tags and a description naming the share,
  its file and the managing node.
- `net0` a virtio NIC on `[proxmox] bridge` (Proxmox generates the MAC and keeps it);
  `ipconfig0` the share's address for cloud-init.
- `agent enabled=1`: the QEMU guest agent is how the agent knows the guest is up and how
  it changes smb.conf inside without a reboot.
- `cicustom user=STORAGE:snippets/smbgw-<share>.yaml`: the user-data the agent renders.
- `virtiofs0` the directory mapping `smbgw-<share>`: the share's data stays on the host.
- `onboot 1`: the share comes back with the node.

Without memory hotplug (Proxmox's default `hotplug` is network, disk, usb), cores and
memory of a running VM change only at its next boot, as do the guest agent, virtiofs and
anything cloud-init applies (the address).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..proxmox.guestconf import (
    GuestConfig,
    GuestConfigError,
    OwnedKeys,
    merged_option,
    parse_property_string,
    property_string,
    same_option,
    tags_equal,
)
from ..proxmox.guestnet import DHCP
from ..proxmox.identity import TAG, description, hostname, label, share_tag
from .table import VmSpec

AT_BOOT = frozenset({"cores", "memory", "agent", "virtiofs0", "ipconfig0", "cicustom"})
OWNED = {"net0": OwnedKeys(("bridge",)), "ipconfig0": OwnedKeys(("ip", "gw")),
         "agent": OwnedKeys(("enabled",), "enabled"), "cicustom": OwnedKeys(("user",)),
         "virtiofs0": OwnedKeys(("dirid",), "dirid")}
NIC_MODEL = "virtio"
NIC_MODELS = ("virtio", "e1000", "e1000e", "rtl8139", "vmxnet3", "i82551", "i82557b", "i82559er", "ne2k_isa",
              "ne2k_pci", "pcnet", "e1000-82540em", "e1000-82544gc", "e1000-82545em")


def nic_mac(config: GuestConfig) -> str | None:
    """The MAC address Proxmox gave net0 (`virtio=BC:24:11:...,bridge=...`)."""
    value = config.get("net0")
    try:
        net = parse_property_string(str(value)) if value else {}
    except GuestConfigError:
        return None
    mac = next((net[model] for model in NIC_MODELS if net.get(model)), None)
    return mac.lower() if mac else None


def snippet_name(share: str) -> str:
    """The user-data snippet's file name in the snippets storage."""
    return f"smbgw-{label(share)}.yaml"


def mapping_id(share: str) -> str:
    """The directory mapping's id (Proxmox: a config id, letters, digits, `-` and `_`)."""
    return f"smbgw-{label(share)}"


def cicustom(storage: str, share: str) -> str:
    return f"user={storage}:snippets/{snippet_name(share)}"


def ipconfig(spec: VmSpec) -> str:
    if spec.address == DHCP:
        return "ip=dhcp"
    return property_string({"ip": spec.address, **({"gw": spec.gateway} if spec.gateway else {})})


def wanted_options(share: str, file: str, spec: VmSpec, bridge: str, snippets_storage: str,
                   node: str) -> dict[str, str]:
    """The share's VM as `qm set` takes it. `net0` names only the bridge: `set_arguments`
    adds the NIC model, and keeps the MAC Proxmox gave it."""
    return {
        "name": hostname(share),
        "cores": str(spec.cores),
        "memory": str(spec.memory_mib),
        "net0": f"bridge={bridge}",
        "ipconfig0": ipconfig(spec),
        "agent": "enabled=1",
        "cicustom": cicustom(snippets_storage, share),
        "virtiofs0": mapping_id(share),
        "onboot": "1",
        "tags": ";".join(sorted({TAG, share_tag(share)})),
        "description": description(share, file, node),
    }


@dataclass(frozen=True)
class Difference:
    key: str
    live: str | None
    wanted: str
    at_boot: bool  # True: takes effect when the VM boots again (the job restarts it)

    def detail(self) -> str:
        when = " (needs a reboot: the VM is shut down and started)" if self.at_boot else ""
        if self.key == "description":
            return f"set the description{when}"
        return f"set {self.key} {self.live or '-'} -> {self.wanted}{when}"


def _same(key: str, live: str | None, wanted: str) -> bool:
    if key == "tags":
        return tags_equal(live, wanted)
    return same_option(live, wanted, OWNED.get(key))


def _value(key: str, live: str | None, wanted: str) -> str:
    if key == "net0" and live is None:
        return f"{NIC_MODEL},{wanted}"
    return merged_option(live, wanted, OWNED.get(key))


def differences(config: GuestConfig, wanted: Mapping[str, str]) -> list[Difference]:
    """How the VM's current config differs from `wanted`, option by option. A value
    already waiting in the pending section (set while the VM ran) still differs: it is
    not live until the VM boots."""
    found = []
    for key, value in wanted.items():
        live = config.description.strip() if key == "description" else config.get(key)
        if key == "description" and not live:
            live = None
        if not _same(key, live, value):
            found.append(Difference(key, live, _value(key, live, value), key in AT_BOOT))
    return found


def set_arguments(vmid: int, changes: Sequence[Difference] | Mapping[str, str]) -> list[str]:
    """`qm set` argv after the program name, for `differences` or for a whole option set
    (a new clone: every option, the NIC with its model)."""
    argv = ["set", str(vmid)]
    if isinstance(changes, Mapping):
        for key, value in changes.items():
            argv += [f"--{key}", _value(key, None, value) if key == "net0" else value]
        return argv
    for change in changes:
        argv += [f"--{change.key}", change.wanted]
    return argv


def needs_boot(changes: Sequence[Difference]) -> bool:
    return any(change.at_boot for change in changes)

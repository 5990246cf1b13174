"""The template a share's VM is cloned from: found by VMID (`[vm] template`, else
`[proxmox] vm_template`) or, with neither, as the one VM of the cluster tagged
`smbgw-template`; and checked before anything is cloned:

- it exists (its config is in /etc/pve/nodes/*/qemu-server/);
- it is a template (`template: 1`): a linked clone of anything else is refused by
  Proxmox, and a full clone of a running VM copies a disk in use;
- it has a cloud-init drive (`ideN`/`sataN`/`scsiN` holding a `...-cloudinit` volume):
  without one the VM never sees its user-data, boots as the template did, and never
  serves the share.

`smbgwctl template build --vm` and docs/vm.md say how to make one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..proxmox.guestconf import GuestConfig, GuestConfigError, read_guest_config

TEMPLATE_TAG = "smbgw-template"
MAX_CONFIGS = 100_000
_DRIVE = re.compile(r"^(ide[0-3]|sata[0-5]|scsi([0-9]|[12][0-9]|30))$")


class TemplateError(ValueError):
    """No usable template."""


@dataclass(frozen=True)
class Template:
    vmid: int
    node: str
    config: GuestConfig


def _configs(pve: Path) -> dict[int, tuple[str, Path]]:
    found: dict[int, tuple[str, Path]] = {}
    nodes = pve / "nodes"
    if not nodes.is_dir():
        return found
    for path in sorted(nodes.glob("*/qemu-server/*.conf"))[:MAX_CONFIGS]:
        if path.stem.isdigit():
            found.setdefault(int(path.stem), (path.parent.parent.name, path))
    return found


def has_cloudinit_drive(config: GuestConfig) -> bool:
    for key, value in config.options.items():
        volume = value.split(",", 1)[0]
        if _DRIVE.match(key) and re.search(r"(^|[:/-])(vm|base)-\d+-cloudinit(\.\w+)?$", volume):
            return True
    return False


def find(pve: Path, wanted: int | None) -> Template:
    """The template to clone: `wanted`, or the one tagged smbgw-template."""
    configs = _configs(pve)
    if wanted is None:
        tagged = []
        for vmid, (_node, path) in configs.items():
            try:
                config = read_guest_config(path)
            except GuestConfigError:
                continue
            if config is not None and TEMPLATE_TAG in {tag.casefold() for tag in config.tags}:
                tagged.append(vmid)
        if not tagged:
            raise TemplateError("no VM template to clone: set [vm] template or [proxmox] vm_template, or tag the "
                                f"template {TEMPLATE_TAG} (smbgwctl template build --vm makes one)")
        if len(tagged) > 1:
            raise TemplateError(f"VMs {', '.join(map(str, sorted(tagged)))} are all tagged {TEMPLATE_TAG}: name the "
                                "one to clone with [proxmox] vm_template")
        wanted = tagged[0]
    if wanted not in configs:
        raise TemplateError(f"VM template {wanted} does not exist (no qemu-server/{wanted}.conf on any node)")
    node, path = configs[wanted]
    try:
        config = read_guest_config(path)
    except GuestConfigError as exc:
        raise TemplateError(f"VM template {wanted}: its config cannot be read: {exc}") from None
    if config is None:
        raise TemplateError(f"VM template {wanted} does not exist")
    if config.get("template") != "1":
        raise TemplateError(f"VM {wanted} is not a template (qm template {wanted} makes it one; the agent clones "
                            "only templates)")
    if not has_cloudinit_drive(config):
        raise TemplateError(f"VM template {wanted} has no cloud-init drive: add one (qm set {wanted} --ide2 "
                            "STORAGE:cloudinit), or the clone never gets its share's settings")
    return Template(wanted, node, config)


_DISK = re.compile(r"^(ide[0-3]|sata[0-5]|scsi([0-9]|[12][0-9]|30)|virtio([0-9]|1[0-5])|efidisk0|tpmstate0)$")


def disk_storages(config: GuestConfig) -> set[str]:
    """The storages holding the guest's disks (not its CD-ROMs or cloud-init drive): where
    a linked clone's disks are too."""
    found = set()
    for key, value in config.options.items():
        volume = value.split(",", 1)[0]
        if not _DISK.match(key) or "media=cdrom" in value or "cloudinit" in volume or ":" not in volume:
            continue
        found.add(volume.split(":", 1)[0])
    return found

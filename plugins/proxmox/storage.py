"""The cluster's storages as Proxmox defines them (`/etc/pve/storage.cfg`), for one
question: is a storage shared, so that a guest whose disk is on it can run on another
node (HA recovery, migration without copying the disk)?

A storage is shared when its type is one every node reaches over the network (Ceph RBD
and CephFS, NFS, CIFS, GlusterFS, iSCSI, ZFS over iSCSI, PBS is not a disk store), or
when the administrator marked a local-looking one `shared 1` (a directory on a cluster
file system, LVM on a shared LUN). `local`, `local-lvm` and ZFS pools are this node's.
"""

from __future__ import annotations

from pathlib import Path

from .pvefile import read_pve_file
from .sectionconfig import SectionConfigError, parse_sections

STORAGE_CFG = "/etc/pve/storage.cfg"
MAX_SIZE = 4 << 20
NETWORK_TYPES = frozenset({"rbd", "cephfs", "nfs", "cifs", "glusterfs", "iscsi", "iscsidirect", "zfs"})


class StorageError(ValueError):
    pass


def shared_storages(text: str) -> dict[str, bool]:
    """Every storage id, and whether it is shared."""
    try:
        sections = parse_sections(text, STORAGE_CFG)
    except SectionConfigError as exc:
        raise StorageError(str(exc)) from None
    return {s.id: s.type in NETWORK_TYPES or s.properties.get("shared") == "1" for s in sections}


def is_shared(path: Path, storage: str) -> bool:
    """Raises StorageError when the file cannot be read or does not define `storage`."""
    text = read_pve_file(path, MAX_SIZE, StorageError)
    if text is None:
        raise StorageError(f"{STORAGE_CFG} does not exist: is this a Proxmox VE node?")
    storages = shared_storages(text)
    if storage not in storages:
        raise StorageError(f"storage {storage!r} is not defined in {STORAGE_CFG}")
    return storages[storage]

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


FILE_TYPES = frozenset({"dir", "nfs", "cifs", "cephfs", "glusterfs", "btrfs"})  # storages with a path on the node
DEFAULT_PATHS = {"nfs": "/mnt/pve/{id}", "cifs": "/mnt/pve/{id}", "cephfs": "/mnt/pve/{id}",
                 "glusterfs": "/mnt/pve/{id}"}


def snippets_dir(path: Path, storage: str) -> str:
    """The directory on this node where `storage` keeps snippets (cloud-init user-data):
    its `path` plus `/snippets`. Raises StorageError, saying what to change, when the
    storage does not exist, has no directory on the node, or does not allow snippets
    (Proxmox refuses `--cicustom` on a storage without the `snippets` content type)."""
    text = read_pve_file(path, MAX_SIZE, StorageError)
    if text is None:
        raise StorageError(f"{STORAGE_CFG} does not exist: is this a Proxmox VE node?")
    try:
        sections = {s.id: s for s in parse_sections(text, STORAGE_CFG)}
    except SectionConfigError as exc:
        raise StorageError(str(exc)) from None
    section = sections.get(storage)
    if section is None:
        raise StorageError(f"storage {storage!r} is not defined in {STORAGE_CFG}")
    if section.type not in FILE_TYPES:
        raise StorageError(f"storage {storage!r} is of type {section.type}, which holds no files: [proxmox] "
                           "snippets_storage must be a directory storage (dir, nfs, cifs, cephfs)")
    content = {item.strip() for item in section.properties.get("content", "").split(",")}
    if "snippets" not in content:
        raise StorageError(f"storage {storage!r} does not allow snippets: add them (pvesm set {storage} --content "
                           f"{','.join(sorted((content - {''}) | {'snippets'}))})")
    base = section.properties.get("path") or DEFAULT_PATHS.get(section.type, "").format(id=storage)
    if not base.startswith("/") or ".." in base.split("/"):
        raise StorageError(f"storage {storage!r} has no usable path ({base!r})")
    return base.rstrip("/") + "/snippets"

"""The cluster's guests as pmxcfs lists them (`/etc/pve/.vmlist`), and VMID allocation.

pmxcfs keeps `.vmlist` as JSON, one entry per guest of the whole cluster:
``{"version": 7, "ids": {"100": {"node": "pve1", "type": "lxc", "version": 3}}}``, and
only ``{"version": 7}`` when there is no guest at all. It is
the one place that knows every VMID in use, containers and VMs, on every node; `pct list`
knows only this node's containers. The agent reads it (bounded, strictly) instead of
asking an API, so allocation costs one small file read.

Allocation never takes an id in use by anything, and never one outside
`[proxmox] vmid_range`; ids the agent created are recorded in its state (by the mode
plugin), so that a guest found under such an id later is known to be the agent's.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from .pvefile import read_pve_file

MAX_VMLIST = 16 << 20
GUEST_TYPES = ("lxc", "qemu")


class VmlistError(ValueError):
    """`.vmlist` could not be read or is not what pmxcfs writes."""


@dataclass(frozen=True)
class Guest:
    vmid: int
    node: str
    type: str  # lxc | qemu


def parse_vmlist(text: str) -> dict[int, Guest]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise VmlistError(f"not JSON: {exc}") from None
    if not isinstance(data, Mapping) or isinstance(data.get("version"), bool) \
            or not isinstance(data.get("version"), int):
        raise VmlistError("no \"version\" number")
    # pmxcfs leaves "ids" out when no guest exists (status.c, cfs_create_vmlist_msg).
    ids = data.get("ids", {})
    if not isinstance(ids, Mapping):
        raise VmlistError("\"ids\" is not a table")
    guests = {}
    for key, entry in ids.items():
        is_vmid = isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 9
        if not is_vmid or not isinstance(entry, Mapping):
            raise VmlistError(f"entry {str(key)[:20]!r} is not a VMID with a table")
        node, kind = entry.get("node"), entry.get("type")
        if not isinstance(node, str) or kind not in GUEST_TYPES:
            raise VmlistError(f"entry {key}: node or type missing or unknown")
        guests[int(key)] = Guest(int(key), node, str(kind))
    return guests


def read_vmlist(path: Path) -> dict[int, Guest]:
    """The guests listed in `path`; an absent file is an empty cluster (a node whose
    pmxcfs is not mounted has no /etc/pve/.vmlist: the mode refuses before this)."""
    text = read_pve_file(path, MAX_VMLIST, VmlistError)
    return {} if text is None else parse_vmlist(text)


def allocate(first: int, last: int, in_use: Collection[int], reserved: Collection[int]) -> int | None:
    """The lowest id in first..last that no guest has and no other share of this agent
    has been given; None when the range is used up."""
    taken = set(in_use) | set(reserved)
    return next((candidate for candidate in range(first, last + 1) if candidate not in taken), None)


def local_node(pve: Path) -> str | None:
    """This node's name as the cluster knows it: pmxcfs's `/etc/pve/local` is a symbolic
    link to `nodes/NAME`. None off a Proxmox node."""
    try:
        target = Path(str(pve / "local")).readlink()
    except OSError:
        return None
    return target.name if target.parent.name == "nodes" and target.name else None

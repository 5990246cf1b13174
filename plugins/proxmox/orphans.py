"""Guests (containers and VMs) the agent made for shares that no file declares any more.

How one comes about: a removal whose `pct destroy` or `qm destroy` failed, a share file deleted while
the agent was stopped and its state lost, a share file restored from a backup under
another name. Such a container still runs smbd on its address and holds its VMID.

By default it is reported (health `lxc-orphan`, with the command that removes it) and
left alone: destroying a guest on a guess is not the agent's call. With `[proxmox]
destroy_orphans = true` the agent destroys it, but only when all of these hold, read
again just before: the config carries the `smbgw` tag and a `share-...` tag, its
description is the one the agent writes and names this node, no declared share has its
tag, and the share file the description names is not in the shares directory (a file that is there but
does not parse keeps its container: the administrator is in the middle of an edit).
The share's data is a bind mount on the host and is never touched either way.

A container whose description names another node is that node's agent's, moved here by
Proxmox HA or a drain: it is neither reported nor destroyed here.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from .guestconf import GuestConfig, GuestConfigError, read_guest_config
from .identity import TAG, tags_of

MAX_CONFIGS = 10_000
_DESCRIPTION = re.compile(r"smbgw-agent share (?P<share>.+) \((?P<file>[^()/]+) on (?P<node>[^()\s]+)\)\. ")


@dataclass(frozen=True)
class Orphan:
    vmid: int
    shares: tuple[str, ...]  # its share-... tags
    file: str | None  # the share file its description names, if the agent wrote it
    node: str | None = None  # the node whose agent manages it, as its description says

    def named(self) -> str:
        return ", ".join(self.shares) or "no share"


def share_file_of(config: GuestConfig) -> tuple[str, str] | None:
    """The share file and the node the agent's description names; None if it is not the
    agent's."""
    found = _DESCRIPTION.match((config.description or "").strip() + " ")
    return (found.group("file"), found.group("node")) if found else None


def find(folder: Path, wanted_tags: Collection[str], here: str | None) -> list[Orphan]:
    """The guests in `folder` (this node's /etc/pve/lxc or /etc/pve/qemu-server) tagged `smbgw` whose share
    tag no declared share has, and that are not another node's agent's (moved here by
    HA or a drain: that node's share file declares them)."""
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.conf"))[:MAX_CONFIGS]:
        if not path.stem.isdigit():
            continue
        try:
            config = read_guest_config(path)
        except GuestConfigError:
            continue
        tags = tags_of(config) if config is not None else set()
        if config is None or TAG not in tags:
            continue
        shares = tuple(sorted(tag for tag in tags if tag.startswith("share-")))
        owner = share_file_of(config)
        if owner is not None and here is not None and owner[1] != here:
            continue
        if not shares or not set(shares) & set(wanted_tags):
            found.append(Orphan(int(path.stem), shares, owner[0] if owner else None, owner[1] if owner else None))
    return found


def destroyable(orphan: Orphan, config: GuestConfig | None, wanted_tags: Collection[str], shares_dir: Path,
                here: str | None) -> str:
    """Why `orphan` must not be destroyed now ("" when it may): the checks of the module
    docstring, on the config as it is now."""
    if config is None:
        return "it is gone"
    tags = tags_of(config)
    shares = {tag for tag in tags if tag.startswith("share-")}
    if TAG not in tags or not shares:
        return "it no longer carries the smbgw tags"
    if shares & set(wanted_tags):
        return "a share declares it again"
    owner = share_file_of(config)
    if owner is None:
        return "its description is not the one smbgw-agent writes"
    file, node = owner
    if here is None or node != here:
        return f"it is node {node}'s (its share file is there)"
    if (shares_dir / file).exists():
        return f"its share file {file} is still there (it does not parse: fix it or delete it)"
    return ""

"""How the agent recognises a guest it made for a share, in both guest modes (lxc, vm).

A guest is the share's only if its config carries the `smbgw` tag and the share's own
tag; its description names the share, its file and the node whose agent manages it, so
after Proxmox HA or a drain moved it, the agent of the node it runs on knows it is
another node's, not an orphan of its own. Names are DNS labels made of the share's name:
the hostname, the tag, the cloud-init snippet and the directory mapping of a VM.
"""

from __future__ import annotations

import re

from .guestconf import GuestConfig

TAG = "smbgw"


def label(name: str, limit: int = 50) -> str:
    """`name` as a lower-case DNS label / Proxmox tag: letters, digits and '-', the rest
    folded to '-' (a share named "Finance Team" becomes "finance-team")."""
    text = re.sub(r"[^a-z0-9]+", "-", name.casefold()).strip("-")[:limit].strip("-")
    return text or "share"


def hostname(share: str) -> str:
    return f"smbgw-{label(share)}"


def share_tag(share: str) -> str:
    return f"share-{label(share)}"


def description(share: str, file: str, node: str) -> str:
    """Names the share, its file and the node whose agent manages the container (where
    the file is): after HA or a drain moved the container, the agent of the node it
    runs on knows it is another node's, not an orphan of its own."""
    return (f"smbgw-agent share {share} ({file} on {node}). Managed by smbgw-agent: changes made here are "
            "undone.")


def tags_of(config: GuestConfig) -> set[str]:
    """The container's tags as Proxmox compares them: lower case."""
    return {tag.casefold() for tag in config.tags}


def belongs_to(config: GuestConfig, share: str) -> bool:
    """The container carries the agent's tag and `share`'s: it is that share's."""
    return {TAG, share_tag(share)} <= tags_of(config)

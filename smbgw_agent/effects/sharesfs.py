"""Whether the file system shares.d is on takes writes now.

On a Proxmox cluster shares.d may be on pmxcfs (/etc/pve), which turns read-only while
its node is not part of a quorate cluster: files can be read, none written. The agent
never writes there, so it keeps serving what the files say; but an administrator's edit
fails, and that is worth saying (status, `smbgw_cluster_fs_writable`, the log).

Read, per pass, cheaply: the mount is read-only for any file system, as the node's own
mount table says (`/proc/1/mountinfo`, not the agent's: the unit's `ProtectSystem=full`
makes /etc read-only in the agent's view only, while administrators can write there);
on pmxcfs (a FUSE mount whose root holds `.members`) the cluster's quorum from
`.members` (`"quorate": 0`). A file system that says nothing either way counts as
writable: no alarm on a guess. `.members` also lists the cluster's nodes, against which
a share file's `node` is checked (a share placed on a node that is not in the cluster is
served by no one).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from smbgw_agent.effects import mounts as host_mounts
from smbgw_agent.effects.poller import MOUNTINFO, is_fuse, mount_of, parse_mountinfo

MEMBERS = ".members"  # pmxcfs: the cluster's nodes and quorum, as JSON
MAX_MEMBERS_BYTES = 1 << 20
# The mount table of the node's init, i.e. what an administrator's shell sees.
HOST_MOUNTINFO = Path("/proc/1/mountinfo")


def mounted_read_only(path: str, host_mountinfo: Path = HOST_MOUNTINFO) -> str | None:
    """The mount point holding `path` when the node's mount table says it is read-only
    (per mount or for the whole file system); None when it is writable or the table
    cannot be read (no alarm on a guess)."""
    try:
        with open(host_mountinfo, "rb") as handle:
            text = handle.read(host_mounts.MAX_MOUNTINFO).decode("utf-8", errors="replace")
    except OSError:
        return None
    mount = host_mounts.mount_of(path, host_mounts.parse_mountinfo(text))
    return mount.point if mount is not None and mount.has_option("ro") else None


@dataclass(frozen=True)
class SharesFs:
    mount: str  # the mount point holding shares.d ("" when unknown)
    fstype: str
    writable: bool
    why: str  # when not writable: the reason
    nodes: tuple[str, ...] = ()  # the cluster's nodes (pmxcfs' .members); () when not known

    def to_dict(self) -> dict[str, object]:
        return {"mount": self.mount, "type": self.fstype, "writable": self.writable, "why": self.why,
                "nodes": list(self.nodes)}


def quorate(members_text: str) -> bool | None:
    """pmxcfs' `.members`: False when it names a cluster without quorum, True with it,
    None for a standalone node or anything unreadable."""
    try:
        data = json.loads(members_text)
    except ValueError:
        return None
    cluster = data.get("cluster") if isinstance(data, dict) else None
    if not isinstance(cluster, dict) or "quorate" not in cluster:
        return None
    return bool(cluster["quorate"])


def cluster_nodes(members_text: str) -> tuple[str, ...]:
    """The node names of pmxcfs' `.members` nodelist, sorted; () for a standalone node or
    anything unreadable."""
    try:
        data = json.loads(members_text)
    except ValueError:
        return ()
    listed = data.get("nodelist") if isinstance(data, dict) else None
    if not isinstance(listed, dict):
        return ()
    return tuple(sorted(name for name in listed if isinstance(name, str) and name))


def shares_fs(directory: Path, mountinfo: Path = MOUNTINFO, host_mountinfo: Path = HOST_MOUNTINFO) -> SharesFs:
    path = os.path.normpath(os.path.abspath(directory))
    try:
        mounts = parse_mountinfo(mountinfo.read_text(errors="replace"))
    except OSError:
        mounts = []
    point, fstype = mount_of(path, mounts) or ("", "")
    read_only = mounted_read_only(path, host_mountinfo)
    if read_only is not None:
        return SharesFs(point, fstype, False, f"{read_only} is mounted read-only")
    nodes: tuple[str, ...] = ()
    if point and is_fuse(fstype):
        members = Path(point) / MEMBERS
        try:
            with members.open("rb") as stream:
                text = stream.read(MAX_MEMBERS_BYTES).decode(errors="replace")
        except OSError:
            text = ""
        nodes = cluster_nodes(text)
        if quorate(text) is False:
            return SharesFs(point, fstype, False, f"the cluster has no quorum ({members}): {point} is read-only "
                            "until it does; share files can be read, not changed", nodes)
    return SharesFs(point, fstype, True, "", nodes)

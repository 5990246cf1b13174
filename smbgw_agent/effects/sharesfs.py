"""Whether the file system shares.d is on takes writes now.

On a Proxmox cluster shares.d may be on pmxcfs (/etc/pve), which turns read-only while
its node is not part of a quorate cluster: files can be read, none written. The agent
never writes there, so it keeps serving what the files say; but an administrator's edit
fails, and that is worth saying (status, `smbgw_cluster_fs_writable`, the log).

Read, per pass, cheaply: the mount is read-only (`statvfs`' ST_RDONLY) for any file
system; on pmxcfs (a FUSE mount whose root holds `.members`) the cluster's quorum from
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

from smbgw_agent.effects.poller import MOUNTINFO, is_fuse, mount_of, parse_mountinfo

MEMBERS = ".members"  # pmxcfs: the cluster's nodes and quorum, as JSON
MAX_MEMBERS_BYTES = 1 << 20


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


def shares_fs(directory: Path, mountinfo: Path = MOUNTINFO) -> SharesFs:
    path = os.path.normpath(os.path.abspath(directory))
    try:
        mounts = parse_mountinfo(mountinfo.read_text(errors="replace"))
    except OSError:
        mounts = []
    point, fstype = mount_of(path, mounts) or ("", "")
    probe = path if os.path.isdir(path) else (point or path)
    try:
        if os.statvfs(probe).f_flag & os.ST_RDONLY:
            return SharesFs(point, fstype, False, f"{point or probe} is mounted read-only")
    except OSError:
        pass
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

"""The id map of a share's unprivileged container: which container uids and gids become
which host ids, as `lxc.idmap` lines, and whether /etc/subuid and /etc/subgid allow it.

Why a map of our own: an unprivileged container's uid 0 is an unprivileged host uid
(Proxmox: 100000), and every container id is shifted the same way. A file written over
SMB by a user inside would land on the host data as uid 101000 -- not the owner the host
(its quotas, its backups, its other shares) knows. So the ids that must mean the same
inside and out are *passed through* (identity mapped):

- the uid and gid that own the share's directory on the host, so that the share's owner
  inside is its owner outside;
- the uids of the share's local users, copied in with the node's uids;
- the ranges other plugins ask for (`smbgw_guest_id_ranges`): the domain's idmap ranges
  when the node has `[ad]`, where a container that joined the domain maps its users the
  same way as the node does (docs/lxc.md, "Domain users").

Every other container id in 0..65535 keeps Proxmox's shift (host base + id, base the
start of root's range in /etc/subuid, 100000 on a default node): the container's root,
system users and local users stay unprivileged on the host. Passed-through ids are
unprivileged host ids too: 0 is never passed through.

The kernel allows a map whose host ranges do not overlap one another, and LXC (through
newuidmap, even as root) allows only host ranges /etc/subuid grants root. Both are checked
here, with what to add to /etc/subuid when a range is missing: an administrator should
read "add root:1000:1 to /etc/subuid", not a container that does not start.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from smbgw_agent.model.idranges import IdRange, merge

CONTAINER_IDS = 65536  # container ids 0..65535 (what Proxmox maps by default)
MAX_LINES = 340  # the kernel's limit of map lines (Linux 4.15+)


class IdMapError(ValueError):
    """The map cannot be built, or /etc/subuid or /etc/subgid does not allow it."""


@dataclass(frozen=True)
class MapLine:
    kind: str  # "u" or "g"
    inside: int
    outside: int
    count: int

    def host_range(self) -> IdRange:
        return IdRange(self.outside, self.outside + self.count - 1)

    def config_value(self) -> str:
        """The value of an `lxc.idmap:` line of a Proxmox container config."""
        return f"{self.kind} {self.inside} {self.outside} {self.count}"


def build(kind: str, base: int, passthrough: Iterable[IdRange]) -> list[MapLine]:
    """The map of one kind (`u` or `g`): container ids 0..65535 at `base` + id, except the
    `passthrough` ranges, mapped to themselves (they may lie above 65535)."""
    through = merge(passthrough)
    shifted = IdRange(base, base + CONTAINER_IDS - 1)
    for item in through:
        if item.low <= 0:
            raise IdMapError(f"{kind}id 0 (root) is never passed through to the host")
        if item.overlaps(shifted):
            raise IdMapError(f"{kind}ids {item} overlap {shifted}, where the container's own ids "
                             f"0-{CONTAINER_IDS - 1} go on the host: move them, or the container's id base")
    lines: list[MapLine] = []
    cursor = 0
    for item in through:
        if item.low >= CONTAINER_IDS:
            break
        if item.low > cursor:
            lines.append(MapLine(kind, cursor, base + cursor, item.low - cursor))
        lines.append(MapLine(kind, item.low, item.low, min(item.high, CONTAINER_IDS - 1) - item.low + 1))
        cursor = min(item.high, CONTAINER_IDS - 1) + 1
    if cursor < CONTAINER_IDS:
        lines.append(MapLine(kind, cursor, base + cursor, CONTAINER_IDS - cursor))
    for item in through:  # the parts above the container's own id space
        low = max(item.low, CONTAINER_IDS)
        if low <= item.high:
            lines.append(MapLine(kind, low, low, item.high - low + 1))
    if len(lines) > MAX_LINES:
        raise IdMapError(f"the {kind}id map needs {len(lines)} lines; the kernel takes at most {MAX_LINES}")
    return lines


def parse_subid(text: str, user: str = "root") -> list[IdRange]:
    """The ranges /etc/subuid or /etc/subgid grants `user` (`user:start:count` lines;
    anything else is skipped, as shadow's tools skip it)."""
    granted = []
    for line in text.splitlines()[:100_000]:
        fields = line.strip().split(":")
        if len(fields) != 3 or fields[0] != user or not (fields[1].isdigit() and fields[2].isdigit()):
            continue
        start, count = int(fields[1]), int(fields[2])
        if count > 0 and len(fields[1]) <= 10 and len(fields[2]) <= 10:
            granted.append(IdRange(start, start + count - 1))
    return merge(granted)


def base_of(granted: Sequence[IdRange]) -> int | None:
    """Where the container's own ids start: the first granted range with room for all
    65536 of them (Proxmox's root:100000:65536)."""
    return next((item.low for item in granted if item.size >= CONTAINER_IDS), None)


def missing(lines: Sequence[MapLine], granted: Sequence[IdRange]) -> list[IdRange]:
    """Host ranges of `lines` that `granted` does not cover, to add to /etc/sub[ug]id."""
    gaps = []
    for line in lines:
        wanted = line.host_range()
        cursor = wanted.low
        for item in granted:
            if item.high < cursor or item.low > wanted.high:
                continue
            if item.low > cursor:
                gaps.append(IdRange(cursor, item.low - 1))
            cursor = max(cursor, item.high + 1)
            if cursor > wanted.high:
                break
        if cursor <= wanted.high:
            gaps.append(IdRange(cursor, wanted.high))
    return merge(gaps)


def subid_lines(ranges: Sequence[IdRange], user: str = "root") -> str:
    return ", ".join(f"{user}:{item.low}:{item.size}" for item in ranges)

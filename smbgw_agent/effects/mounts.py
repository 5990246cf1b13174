"""Which file system holds a path: the mount table, read from /proc/self/mountinfo.

The quota plugin picks its backend from it, the backup plugin its snapshot kind. The
longest mount point that is a prefix of the path's real location wins (a btrfs pool mounted at /tank, a dataset below
it mounted at /tank/finance). Mount points with spaces are octal-escaped by the kernel.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
MAX_MOUNTINFO = 16 << 20


@dataclass(frozen=True)
class Mount:
    point: str
    fstype: str
    source: str
    options: str

    def has_option(self, name: str) -> bool:
        return name in self.options.split(",")


def _unescape(field: str) -> str:
    """The kernel writes space, tab, newline and backslash as \\040, \\011, \\012, \\134."""
    out, index = [], 0
    while index < len(field):
        if field[index] == "\\" and field[index + 1:index + 4].isdigit():
            out.append(chr(int(field[index + 1:index + 4], 8)))
            index += 4
        else:
            out.append(field[index])
            index += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """Every well-formed line (see proc(5)); a line that is not is skipped."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 6 or len(tail) < 3:
            continue
        mounts.append(Mount(_unescape(fields[4]), tail[0], _unescape(tail[1]), f"{fields[5]},{tail[2]}"))
    return mounts


def read_mountinfo() -> str:
    with open(MOUNTINFO, "rb") as handle:
        return handle.read(MAX_MOUNTINFO).decode("utf-8", errors="replace")


def mount_of(path: str | os.PathLike[str], mounts: Sequence[Mount] | None = None) -> Mount | None:
    """The mount holding `path` (resolved through symbolic links; need not exist yet),
    among `mounts` (parse the mount table once for many paths), else the live table."""
    if mounts is None:
        mounts = parse_mountinfo(read_mountinfo())
    real = os.path.realpath(path)
    best: Mount | None = None
    for mount in mounts:
        point = mount.point.rstrip("/") or "/"
        inside = real == point or real.startswith(point + "/") or point == "/"
        if inside and (best is None or len(point) >= len(best.point.rstrip("/") or "/")):
            best = mount
    return best

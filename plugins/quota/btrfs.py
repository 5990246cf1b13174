"""btrfs: a share is a subvolume; its limit is the qgroup limit of that subvolume.

Commands (btrfs-progs 6.2 on Debian 12, 6.14 on Debian 13), all through the agent's
runner with time limits:

    btrfs inspect-internal rootid PATH        the subvolume id (its qgroup is 0/ID)
    btrfs qgroup show --raw -re -F PATH       referenced and limit, in bytes
    btrfs qgroup limit BYTES|none PATH        set or lift the limit
    btrfs subvolume create PATH               a missing share directory
    btrfs quota enable MOUNTPOINT             only with [quota] btrfs_enable_quotas = true
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from smbgw_agent.effects.runner import CommandError, Runner

TIMEOUT = 30.0
MAX_OUTPUT = 4 << 20
# The first inode number of every btrfs subvolume (BTRFS_FIRST_FREE_OBJECTID).
SUBVOLUME_ROOT_INODE = 256


class BtrfsError(Exception):
    """btrfs said something this backend cannot use; the message says what to do."""


class QuotasDisabled(BtrfsError):
    """The file system has no quota accounting enabled."""


@dataclass(frozen=True)
class Qgroup:
    qgroupid: str
    referenced: int
    exclusive: int
    max_referenced: int | None
    max_exclusive: int | None


def _bytes_or_none(text: str) -> int | None:
    if text == "none":
        return None
    if not text.isdigit():
        raise BtrfsError(f"unexpected value {text[:40]!r} in btrfs qgroup show output")
    return int(text)


def parse_qgroup_show(text: str) -> dict[str, Qgroup]:
    """`btrfs qgroup show --raw -re` output, by qgroup id; columns found by their header,
    so a release that adds or moves columns still parses (or fails clearly)."""
    lines = [line for line in text.splitlines() if line.strip()]
    header_index = next((i for i, line in enumerate(lines) if line.split()[:1] == ["Qgroupid"]), None)
    if header_index is None:
        raise BtrfsError("btrfs qgroup show printed no header line")
    header = lines[header_index].split()
    # "Max referenced" and "Max exclusive" are two words each in the header.
    names: list[str] = []
    index = 0
    while index < len(header):
        if header[index] == "Max" and index + 1 < len(header):
            names.append(f"max_{header[index + 1].lower()}")
            index += 2
        else:
            names.append(header[index].lower())
            index += 1
    needed = {"qgroupid", "referenced", "exclusive", "max_referenced", "max_exclusive"}
    if not needed <= set(names):
        raise BtrfsError(f"btrfs qgroup show has unexpected columns: {' '.join(header)}")
    result: dict[str, Qgroup] = {}
    for line in lines[header_index + 1:]:
        if set(line.strip()) <= {"-", " "}:
            continue
        values = line.split(None, len(names) - 1)
        if len(values) < len(needed):
            raise BtrfsError(f"unreadable line in btrfs qgroup show output: {line[:80]!r}")
        row = dict(zip(names, values, strict=False))
        qgroup = row["qgroupid"]
        if "/" not in qgroup:
            raise BtrfsError(f"unexpected qgroup id {qgroup[:40]!r}")
        result[qgroup] = Qgroup(qgroup, int(_bytes_or_none(row["referenced"]) or 0),
                                int(_bytes_or_none(row["exclusive"]) or 0),
                                _bytes_or_none(row["max_referenced"]), _bytes_or_none(row["max_exclusive"]))
    return result


def is_subvolume(path: Path) -> bool:
    try:
        return os.lstat(path).st_ino == SUBVOLUME_ROOT_INODE
    except FileNotFoundError:
        return False


class Btrfs:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def _run(self, *argv: str) -> str:
        try:
            return self.runner.run(["btrfs", *argv], timeout=TIMEOUT, max_output=MAX_OUTPUT).stdout
        except CommandError as exc:
            message = str(exc)
            if "quotas not enabled" in message or "quota not enabled" in message:
                raise QuotasDisabled(message) from exc
            raise BtrfsError(message) from exc

    def subvolume_id(self, path: Path) -> int:
        out = self._run("inspect-internal", "rootid", str(path)).strip()
        if not out.isdigit():
            raise BtrfsError(f"btrfs inspect-internal rootid printed {out[:40]!r}, not a subvolume id")
        return int(out)

    def qgroup(self, path: Path) -> Qgroup:
        """The level-0 qgroup of the subvolume at `path`."""
        wanted = f"0/{self.subvolume_id(path)}"
        groups = parse_qgroup_show(self._run("qgroup", "show", "--raw", "-re", "-F", str(path)))
        if wanted not in groups:
            raise BtrfsError(f"btrfs qgroup show lists no qgroup {wanted} for {path}")
        return groups[wanted]

    def set_limit(self, path: Path, size: int | None) -> None:
        self._run("qgroup", "limit", "none" if size is None else str(size), str(path))

    def create_subvolume(self, path: Path) -> None:
        self._run("subvolume", "create", str(path))

    def delete_subvolume(self, path: Path) -> None:
        self._run("subvolume", "delete", str(path))

    def enable_quotas(self, mountpoint: Path) -> None:
        self._run("quota", "enable", str(mountpoint))

"""btrfs: a share is a subvolume; its limit is the qgroup limit of that subvolume.

Commands (btrfs-progs 6.2 on Debian 12, 6.14 on Debian 13), all through the agent's
runner with time limits. A subvolume's id (its qgroup is 0/ID) comes from the
BTRFS_IOC_INO_LOOKUP ioctl, as `btrfs inspect-internal rootid` gets it: no command per share.

    btrfs qgroup show --raw -re MOUNTPOINT    every qgroup's referenced and limit, in bytes
    btrfs qgroup limit BYTES|none 0/ID MNT   set or lift the limit
    btrfs subvolume create PATH               a missing share directory
    btrfs quota enable MOUNTPOINT             only with [quota] btrfs_enable_quotas = true
"""

from __future__ import annotations

import fcntl
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from smbgw_agent.effects.runner import CommandError, Runner

from .backend import Place, QuotaError, QuotasOff, Reading, Survey, mount_capacity

TIMEOUT = 30.0
MAX_OUTPUT = 4 << 20
# The first inode number of every btrfs subvolume (BTRFS_FIRST_FREE_OBJECTID).
SUBVOLUME_ROOT_INODE = 256
# _IOWR(0x94, 18, struct btrfs_ioctl_ino_lookup_args): 4096 bytes, treeid and objectid
# (u64 each) then the name. With objectid 256 the kernel answers, without privileges,
# the id of the subvolume the descriptor is in.
INO_LOOKUP = 0xD0009412
INO_LOOKUP_ARGS = struct.Struct("=QQ4080s")


class BtrfsError(QuotaError):
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


def subvolume_id(path: Path) -> int:
    """The id of the subvolume at `path` (a level-0 qgroup is 0/ID)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise BtrfsError(f"cannot open {path}: {exc.strerror}") from exc
    try:
        args = bytearray(INO_LOOKUP_ARGS.pack(0, SUBVOLUME_ROOT_INODE, b""))
        fcntl.ioctl(descriptor, INO_LOOKUP, args)
    except OSError as exc:
        raise BtrfsError(f"cannot read the subvolume id of {path}: {exc.strerror}") from exc
    finally:
        os.close(descriptor)
    treeid: int = INO_LOOKUP_ARGS.unpack_from(args)[0]
    return treeid


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

    def qgroups(self, mountpoint: Path) -> dict[str, Qgroup]:
        """Every qgroup of the file system mounted at `mountpoint`."""
        return parse_qgroup_show(self._run("qgroup", "show", "--raw", "-re", str(mountpoint)))

    def qgroup(self, path: Path) -> Qgroup:
        """The level-0 qgroup of the subvolume at `path`."""
        wanted = f"0/{subvolume_id(path)}"
        groups = self.qgroups(path)
        if wanted not in groups:
            raise BtrfsError(f"btrfs qgroup show lists no qgroup {wanted} for {path}")
        return groups[wanted]

    def set_limit(self, qgroup: str, mountpoint: Path, size: int | None) -> None:
        """By qgroup id on the mount point, not on the subvolume's path: the ioctl starts a
        transaction in the tree it is given, and a subvolume over its limit refuses that
        with EDQUOT, so a limit could never be raised once it was exceeded."""
        self._run("qgroup", "limit", "none" if size is None else str(size), qgroup, str(mountpoint))

    def create_subvolume(self, path: Path) -> None:
        self._run("subvolume", "create", str(path))

    def delete_subvolume(self, path: Path) -> None:
        self._run("subvolume", "delete", str(path))

    def enable_quotas(self, mountpoint: Path) -> None:
        self._run("quota", "enable", str(mountpoint))


class BtrfsBackend:
    """A share is a subvolume; its limit is the limit of the subvolume's level-0 qgroup."""

    name = "btrfs"
    creates = "a btrfs subvolume"

    def __init__(self, runner: Runner, may_enable: bool) -> None:
        self.btrfs = Btrfs(runner)
        self.may_enable = may_enable

    def check(self, place: Place) -> None:
        if not is_subvolume(place.path):
            path = place.declared
            raise QuotaError(
                f"{path} is a plain directory, not a btrfs subvolume, so no limit can be set on it. "
                f"Convert it: create a subvolume beside it (btrfs subvolume create {path}.new), copy the "
                f"data with cp -a --reflink=always {path}/. {path}.new/, then swap the two names")

    def survey_key(self, place: Place) -> str:
        return place.mount.point

    def survey(self, place: Place) -> Survey:
        try:
            groups = self.btrfs.qgroups(Path(place.mount.point))
        except QuotasDisabled as exc:
            point = place.mount.point
            raise QuotasOff(
                f"quotas are not enabled on the btrfs file system at {point}: run `btrfs quota enable "
                f"{point}` (or set btrfs_enable_quotas = true in agent.toml [quota])",
                can_enable=self.may_enable) from exc
        return Survey({qgroup: Reading(group.max_referenced, group.referenced)
                       for qgroup, group in groups.items()})

    def reading(self, survey: Survey, place: Place) -> Reading:
        return survey.figures.get(f"0/{subvolume_id(place.path)}", Reading(None, 0))

    def enable(self, place: Place) -> None:
        self.btrfs.enable_quotas(Path(place.mount.point))

    def holder(self, place: Place) -> str:
        return f"btrfs qgroup 0/{subvolume_id(place.path)}" if place.path.exists() else "btrfs"

    def create(self, place: Place) -> None:
        self.btrfs.create_subvolume(place.path)
        if not is_subvolume(place.path):
            raise BtrfsError(f"btrfs subvolume create {place.declared} reported success, but there is no "
                             "subvolume there")

    def discard(self, place: Place) -> None:
        self.btrfs.delete_subvolume(place.path)

    def set_limit(self, place: Place, size: int | None) -> None:
        self.btrfs.set_limit(f"0/{subvolume_id(place.path)}", Path(place.mount.point), size)

    def capacity(self, place: Place) -> int | None:
        return mount_capacity(place)

    def granted(self, size: int) -> int:
        return size

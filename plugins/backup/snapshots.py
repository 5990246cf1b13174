"""Where a share's snapshots live and how they are made: btrfs and ZFS.

btrfs: a share is a subvolume; its snapshots are read-only subvolumes in `.snapshots` at
its root (`btrfs subvolume snapshot -r`), the layout `vfs_shadow_copy2` reads with
`shadow:snapdir = .snapshots`. A snapshot does not contain nested subvolumes, so the
snapshots do not contain each other, and a read-only subvolume can be neither changed
nor removed by the share's users (removing one needs root, or the mount option
`user_subvol_rm_allowed`, which smbgw-agent refuses to work with).

ZFS: a share is a dataset; `zfs snapshot DATASET@NAME`, seen at `.zfs/snapshot/NAME` in
the dataset (`shadow:snapdir = .zfs/snapshot`).

A share's users can write in its root, so nothing there is trusted: `.snapshots` must be
a real directory owned by root and writable by no one else, each entry that is deleted
must be a subvolume root (never a symbolic link or a plain directory a user made with
the right name), and names are checked against our own format before any command sees
them.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from smbgw_agent.effects.mounts import Mount
from smbgw_agent.effects.runner import CommandError, Runner

from .names import time_of

SUBVOLUME_ROOT_INODE = 256
BTRFS_SNAPDIR = ".snapshots"
ZFS_SNAPDIR = ".zfs/snapshot"
ZFS_FSTYPES = ("zfs", "fuse.zfs")
TIMEOUT = 120.0
MAX_OUTPUT = 64 << 20
# What ZFS allows in dataset and snapshot names (zfs(8), "Naming"): anything else in its
# output is not a listing.
_ZFS_NAME = re.compile(r"[A-Za-z0-9_.:/-]{1,255}")


class SnapshotError(Exception):
    """What went wrong, for the admin; `reason` labels it for metrics and alerts."""

    def __init__(self, message: str, reason: str = "failed", security: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.security = security


@dataclass(frozen=True)
class Place:
    share: str
    declared: str  # the path as the share file says it
    path: Path  # on this host (under --root in a sandbox)
    mount: Mount


class Snapshots(Protocol):
    kind: str
    snapdir: str  # relative to the share root: shadow:snapdir

    def check(self, place: Place) -> None: ...

    def snapdir_missing(self, place: Place) -> bool: ...

    def names(self, place: Place) -> list[str]: ...

    def view(self, place: Place, name: str) -> Path: ...

    def take(self, place: Place, name: str) -> None: ...

    def delete(self, place: Place, name: str) -> None: ...


def reason_of(exc: CommandError | OSError) -> str:
    text = str(exc).lower()
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "no space left" in text or "out of space" in text:
        return "disk_full"
    if isinstance(exc, CommandError):
        if "command not found" in text:
            return "tool_missing"
        if "timed out" in text:
            return "timeout"
    return "failed"


def _ours(name: str) -> None:
    if time_of(name) is None:
        raise SnapshotError(f"{name!r} is not a snapshot name of this agent; refusing to touch it", security=True)


class BtrfsSnapshots:
    kind = "btrfs"
    snapdir = BTRFS_SNAPDIR

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def _btrfs(self, *argv: str) -> None:
        try:
            self.runner.run(["btrfs", *argv], timeout=TIMEOUT)
        except CommandError as exc:
            raise SnapshotError(str(exc), reason_of(exc)) from exc

    def check(self, place: Place) -> None:
        if place.mount.fstype != "btrfs":
            raise SnapshotError(wrong_filesystem(place))
        if "user_subvol_rm_allowed" in place.mount.options.split(","):
            raise SnapshotError(f"{place.mount.point} is mounted with user_subvol_rm_allowed: the share's users "
                                "could delete its snapshots; remount without it", security=True)
        try:
            info = os.lstat(place.path)
        except FileNotFoundError:
            return  # not there yet: the mode (or the quota plugin) creates it in this pass
        if not stat.S_ISDIR(info.st_mode) or info.st_ino != SUBVOLUME_ROOT_INODE:
            raise SnapshotError(
                f"{place.declared} is a plain directory on btrfs, not a subvolume, so it cannot be snapshotted "
                f"on its own. Make it one: btrfs subvolume create {place.declared}.new; cp -a --reflink=always "
                f"{place.declared}/. {place.declared}.new/; then swap the two names")

    def _snapdir(self, place: Place) -> Path | None:
        """`.snapshots`, if it is there and safe to work in; None if missing."""
        snapdir = place.path / BTRFS_SNAPDIR
        try:
            info = os.lstat(snapdir)
        except FileNotFoundError:
            return None
        if not stat.S_ISDIR(info.st_mode):
            raise SnapshotError(f"{snapdir} is not a directory (a link or a file someone made): not using it",
                                "unsafe", security=True)
        if info.st_uid != os.geteuid() or info.st_mode & 0o022:
            raise SnapshotError(f"{snapdir} is owned by uid {info.st_uid} or writable by others (mode "
                                f"{stat.S_IMODE(info.st_mode):o}): someone other than the agent made or changed "
                                "it; not using it", "unsafe", security=True)
        return snapdir

    def snapdir_missing(self, place: Place) -> bool:
        return self._snapdir(place) is None

    def names(self, place: Place) -> list[str]:
        snapdir = self._snapdir(place)
        if snapdir is None:
            return []
        found = []
        with os.scandir(snapdir) as entries:
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(info.st_mode) and info.st_ino == SUBVOLUME_ROOT_INODE:
                    found.append(entry.name)
        return sorted(found)

    def view(self, place: Place, name: str) -> Path:
        _ours(name)
        return place.path / BTRFS_SNAPDIR / name

    def take(self, place: Place, name: str) -> None:
        _ours(name)
        snapdir = self._snapdir(place)
        if snapdir is None:
            snapdir = place.path / BTRFS_SNAPDIR
            try:
                os.mkdir(snapdir, 0o755)
            except OSError as exc:
                raise SnapshotError(f"cannot create {snapdir}: {exc.strerror}", reason_of(exc)) from exc
            os.chmod(snapdir, 0o755)  # noqa: S103 (whatever the umask: smbd reads the snapshots through it)
        self._btrfs("subvolume", "snapshot", "-r", str(place.path), str(snapdir / name))

    def delete(self, place: Place, name: str) -> None:
        _ours(name)
        snapdir = self._snapdir(place)
        if snapdir is None:
            return
        target = snapdir / name
        try:
            info = os.lstat(target)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(info.st_mode) or info.st_ino != SUBVOLUME_ROOT_INODE:
            raise SnapshotError(f"{target} is not a snapshot (not a subvolume): not deleting it", "unsafe",
                                security=True)
        self._btrfs("subvolume", "delete", str(target))


class ZfsSnapshots:
    kind = "zfs"
    snapdir = ZFS_SNAPDIR

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self._listed: dict[str, dict[str, list[str]]] = {}  # pool -> dataset -> names (one pass)

    def _zfs(self, *argv: str) -> str:
        try:
            return self.runner.run(["zfs", *argv], timeout=TIMEOUT, max_output=MAX_OUTPUT).stdout
        except CommandError as exc:
            raise SnapshotError(str(exc), reason_of(exc)) from exc

    @staticmethod
    def dataset(place: Place) -> str:
        if place.mount.fstype not in ZFS_FSTYPES:
            raise SnapshotError(wrong_filesystem(place))
        if str(place.path).rstrip("/") != place.mount.point.rstrip("/"):
            raise SnapshotError(
                f"{place.declared} is a directory inside the dataset {place.mount.source}, not a dataset of its "
                f"own, so it cannot be snapshotted on its own. Make it one: zfs create {place.mount.source}/NEW, "
                f"move the data into it, then set its mountpoint to {place.declared}")
        return place.mount.source

    def snapdir_missing(self, place: Place) -> bool:
        return False  # .zfs/snapshot is the file system's own; nobody can remove it

    def check(self, place: Place) -> None:
        if place.path.exists():
            self.dataset(place)
        elif place.mount.fstype not in ZFS_FSTYPES:
            raise SnapshotError(wrong_filesystem(place))

    def names(self, place: Place) -> list[str]:
        """Every snapshot of the dataset, from one `zfs list` of its pool per pass."""
        dataset = self.dataset(place)
        pool = dataset.split("/", 1)[0]
        if pool not in self._listed:
            self._listed[pool] = parse_zfs_snapshots(self._zfs("list", "-H", "-t", "snapshot", "-o", "name", "-r",
                                                               pool))
        return sorted(self._listed[pool].get(dataset, []))

    def view(self, place: Place, name: str) -> Path:
        _ours(name)
        return place.path / ZFS_SNAPDIR / name

    def _forget_listing(self, dataset: str) -> None:
        """A snapshot made or destroyed: the pool's listing is out of date."""
        self._listed.pop(dataset.split("/", 1)[0], None)

    def take(self, place: Place, name: str) -> None:
        _ours(name)
        dataset = self.dataset(place)
        self._forget_listing(dataset)
        self._zfs("snapshot", f"{dataset}@{name}")

    def delete(self, place: Place, name: str) -> None:
        _ours(name)
        dataset = self.dataset(place)
        self._forget_listing(dataset)
        self._zfs("destroy", f"{dataset}@{name}")  # never -r: one snapshot, ours


def parse_zfs_snapshots(text: str) -> dict[str, list[str]]:
    """`zfs list -H -t snapshot -o name` output: dataset -> snapshot names."""
    found: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        dataset, at, name = line.partition("@")
        if not at or not _ZFS_NAME.fullmatch(dataset) or not _ZFS_NAME.fullmatch(name) or "/" in name:
            raise SnapshotError(f"unexpected line in zfs list output: {line[:120]!r}", "garbage")
        found.setdefault(dataset, []).append(name)
    return found


def wrong_filesystem(place: Place) -> str:
    return (f"{place.declared} is on {place.mount.fstype} ({place.mount.source} at {place.mount.point}), which "
            "has no snapshots smbgw-agent can take: [backup] needs the share on a btrfs subvolume or a ZFS dataset")


def make_snapshots(fstype: str, runner: Runner) -> Snapshots:
    if fstype == "btrfs":
        return BtrfsSnapshots(runner)
    return ZfsSnapshots(runner)


def kind_of(mount: Mount) -> str | None:
    if mount.fstype == "btrfs":
        return "btrfs"
    if mount.fstype in ZFS_FSTYPES:
        return "zfs"
    return None


def count_ours(names: Sequence[str]) -> int:
    return sum(1 for name in names if time_of(name) is not None)



"""What every quota backend offers the plugin, and the types they share.

A backend knows one kind of file system (btrfs, ZFS, XFS or ext4 project quotas). The
plugin asks it, for a share's place (its path and the mount that holds it):

- `check`: can an existing directory carry a limit at all (a subvolume, a dataset)?
- `survey`: the limits and usage of everything it manages on one file system, read with
  one command, so that planning 200 shares, or reading usage for 2,000, costs one
  command per file system rather than one or two per share;
- `create` / `discard`: make a missing share directory into something that can carry a
  limit (a subvolume, a child dataset), and undo that when the pass is rolled back;
- `set_limit`: set or lift the limit.

A backend raises `QuotaError` with a message an administrator can act on, and
`QuotasOff` when the file system could enforce a limit but accounting is switched off.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from smbgw_agent.effects.mounts import Mount


class QuotaError(Exception):
    """Why a share's quota cannot be enforced, said so an administrator can act on it."""


class QuotasOff(QuotaError):
    """The file system can hold limits but its quota accounting is off.

    `can_enable` says whether the agent may switch it on itself (agent.toml allows it
    and the backend can do it on a mounted file system)."""

    def __init__(self, message: str, can_enable: bool = False) -> None:
        super().__init__(message)
        self.can_enable = can_enable


@dataclass(frozen=True)
class Place:
    """Where a share's data lives: its path on the host and the mount that holds it."""

    share: str
    declared: str
    path: Path
    mount: Mount


@dataclass(frozen=True)
class Reading:
    """A share's limit in force (None: none) and what it uses, in bytes, from the backend."""

    limit: int | None
    used: int


@dataclass
class Survey:
    """One file system's figures, keyed the way the backend finds a share in them
    (a subvolume id, a dataset name, a project id)."""

    figures: Mapping[str, Reading] = field(default_factory=dict)


class Backend(Protocol):
    name: str
    creates: str  # what a missing share directory becomes: "a btrfs subvolume"

    def check(self, place: Place) -> None:
        """Raise QuotaError when the existing directory cannot carry a limit."""

    def survey_key(self, place: Place) -> str:
        """Which survey holds the place's figures (file systems that share one)."""

    def survey(self, place: Place) -> Survey:
        """Read the figures of the whole file system holding `place` (one command)."""

    def reading(self, survey: Survey, place: Place) -> Reading:
        """The place's figures in a survey (no limit and nothing used if it is not there)."""

    def create(self, place: Place) -> None:
        """Create the missing share directory as something that can carry a limit."""

    def discard(self, place: Place) -> None:
        """Undo `create` (the directory is still empty)."""

    def set_limit(self, place: Place, size: int | None) -> None:
        """Set the limit to `size` bytes, or lift it (None)."""

    def granted(self, size: int) -> int:
        """The limit the file system will report for a requested `size` (its unit)."""

    def enable(self, place: Place) -> None:
        """Switch quota accounting on (only where QuotasOff said `can_enable`)."""

    def capacity(self, place: Place) -> int | None:
        """How big the file system (or pool) holding the place is, in bytes."""

    def holder(self, place: Place) -> str:
        """What carries the place's limit, for the plan ("btrfs qgroup 0/257", "zfs
        tank/finance", "xfs project 100001"); a project id is handed out here, so a range
        with none left is an error while planning, not at commit."""


def mount_capacity(place: Place) -> int | None:
    """The size of the file system at the place's mount point: not of the place itself,
    which may already report its own quota as its size (a project, a dataset)."""
    try:
        stats = os.statvfs(place.mount.point)
    except OSError:
        return None
    return stats.f_blocks * stats.f_frsize


def human(size: int | None) -> str:
    if size is None:
        return "no limit"
    for unit, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size} bytes"


def human_round(size: int) -> str:
    """A size for people, to one decimal (usage: 2.3G)."""
    value = float(size)
    for unit in ("", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}P"


def same_place(path: Path, mount: Mount) -> bool:
    """Is `path` the mount point itself (a dataset's mountpoint, say)?"""
    return str(path).rstrip("/") == mount.point.rstrip("/")



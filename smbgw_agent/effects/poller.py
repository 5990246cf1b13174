"""Noticing changes where inotify cannot: shares.d on a FUSE file system such as
Proxmox's cluster file system (pmxcfs, /etc/pve), where a file written on another node
produces no inotify event here.

`watch_mode` decides, from `[agent] watch` and the file system shares.d is on (read from
/proc/self/mountinfo: the mount that holds the directory, by the longest mount point
above it), whether the inotify watcher or this poller runs.

The poller looks once per `poll_interval`, as cheaply as the file system allows:

- on pmxcfs, the file `.version` at the root of the mount, which pmxcfs bumps on every
  change anywhere in the cluster file system: one small read a second;
- elsewhere, the directory's entries' names, inode numbers, sizes and modification times
  (one `scandir` and an `lstat` per entry).

Like inotify's events these are only hints: the reconciler re-reads the directory. A
change seen wakes it once; a directory that is missing or unreadable is a state like any
other (its appearance is a change).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger(__name__)
MOUNTINFO = Path("/proc/self/mountinfo")
VERSION_FILE = ".version"  # pmxcfs: bumped on every change of the cluster file system
MAX_VERSION_BYTES = 4096


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (`\\040`)."""
    out, index = [], 0
    while index < len(field):
        digits = field[index + 1:index + 4]
        if field[index] == "\\" and len(digits) == 3 and all(c in "01234567" for c in digits):
            out.append(chr(int(digits, 8)))
            index += 4
        else:
            out.append(field[index])
            index += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[tuple[str, str]]:
    """(mount point, file system type) per line of /proc/self/mountinfo (proc(5): the
    mount point is field 5, the type the first field after the ` - ` separator). Lines
    that are not of that shape are skipped."""
    found = []
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 5 or not rest:
            continue
        found.append((_unescape(fields[4]), rest[0]))
    return found


def mount_of(path: str, mounts: Iterable[tuple[str, str]]) -> tuple[str, str] | None:
    """The mount holding `path` (absolute, normalised): the longest mount point that is
    `path` or above it; the last such line wins (a mount on top of another)."""
    best: tuple[str, str] | None = None
    for point, fstype in mounts:
        inside = point in (path, "/") or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):
            best = (point, fstype)
    return best


def is_fuse(fstype: str) -> bool:
    return fstype == "fuse" or fstype.startswith("fuse.")


def watch_mode(configured: str, directory: Path, mountinfo: Path = MOUNTINFO) -> tuple[str, str]:
    """("inotify" or "poll", why) for `[agent] watch` = `configured` and shares.d at
    `directory`. `auto` polls on FUSE and uses inotify elsewhere (and where the mount
    table cannot be read)."""
    if configured in ("inotify", "poll"):
        return configured, f"[agent] watch = \"{configured}\""
    try:
        mounts = parse_mountinfo(mountinfo.read_text(errors="replace"))
    except OSError as exc:
        return "inotify", f"the mount table is unreadable ({exc})"
    found = mount_of(os.path.normpath(os.path.abspath(directory)), mounts)
    if found is None:
        return "inotify", "no mount holds it"
    point, fstype = found
    if is_fuse(fstype):
        return "poll", f"{point} is a FUSE file system ({fstype}): a change made elsewhere raises no inotify event"
    return "inotify", f"{point} is {fstype}"


class ShareDirPoller:
    """The watcher's interface (start, stop, ensure, directory, watching), by polling."""

    def __init__(self, directory: Path, notify: Callable[[None], None], interval: float,
                 mountinfo: Path = MOUNTINFO) -> None:
        self.directory = directory
        self.notify = notify
        self.interval = interval
        self.mountinfo = mountinfo
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: object = None
        self._version: Path | None = None  # found at start and again at every pass (ensure)
        self.polls = 0

    @property
    def watching(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._version = self.version_file()
        self._last = self.signature()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="shares-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def ensure(self) -> None:
        """Look again for pmxcfs' version file (the cluster file system may have been
        mounted after the agent started); every poll looks at the directory as it is."""
        self._version = self.version_file()

    def version_file(self) -> Path | None:
        """pmxcfs' `.version` at the root of the mount that holds shares.d, if there is
        one (a FUSE mount with that file)."""
        try:
            mounts = parse_mountinfo(self.mountinfo.read_text(errors="replace"))
        except OSError:
            return None
        found = mount_of(os.path.normpath(os.path.abspath(self.directory)), mounts)
        if found is None or not is_fuse(found[1]):
            return None
        candidate = Path(found[0]) / VERSION_FILE
        return candidate if candidate.is_file() else None

    def signature(self) -> object:
        """What changes when shares.d does: pmxcfs' version, or the entries' stat."""
        version = self._version
        if version is not None:
            try:
                with version.open("rb") as stream:
                    return ("version", stream.read(MAX_VERSION_BYTES))
            except OSError as exc:
                return ("version-error", str(exc))
        return ("entries", self.entries())

    def entries(self) -> tuple[tuple[str, int, int, int], ...] | str:
        try:
            found = []
            with os.scandir(self.directory) as listing:
                for entry in listing:
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    found.append((entry.name, info.st_ino, info.st_size, info.st_mtime_ns))
            return tuple(sorted(found))
        except OSError as exc:
            return f"unreadable: {exc.strerror or exc}"

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.polls += 1
            try:
                now = self.signature()
            except Exception as exc:  # a poll must never end the thread
                log.warning("polling %s: %s", self.directory, exc)
                continue
            if now != self._last:
                self._last = now
                self.notify(None)  # a listing or a version file says what changed, not which names

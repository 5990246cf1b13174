"""XFS and ext4: project quotas, one project id per share.

The directory tree of a share carries a project id (inherited by everything created
below it); the file system limits the blocks that project uses. Ids come from agent.toml
`[quota] project_id_range`, are recorded in the plugin's state (they outlive the share
file, like the limit), and are written to /etc/projects and /etc/projid so that
`xfs_quota` and `repquota -P` show share names. Lines there that are not ours are kept.

Commands (xfsprogs 6.1 / quota 4.06 on Debian 12; 6.13 / 4.10 on Debian 13), all through
the agent's runner with time limits:

    XFS   xfs_quota -x -D FILE -c 'project -s ID' MOUNT                    tag the tree
          xfs_quota -x -c 'limit -p bhard=BYTES ID' MOUNT                   set (0: lift)
          xfs_quota -x -c 'report -p -b -n -N' MOUNT                        every project, KiB
    ext4  chattr -R +P -p ID PATH                                           tag the tree
          setquota -P ID 0 KIB 0 0 MOUNT                                    set (0: lift)
          repquota -P -n -O csv MOUNT                                       every project, KiB

`project -s` takes the share's path from a projects file of its own (one line), not from
the command line, so a path with spaces or quotes never meets xfs_quota's own command
parser.

A directory's project id is read with the FS_IOC_FSGETXATTR ioctl (what `lsattr -p` and
`xfs_io -c stat` use), so a tree that already carries its id is not walked again.
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
import re
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path

from smbgw_agent.effects.fileio import atomic_write
from smbgw_agent.effects.runner import CommandError, Runner
from smbgw_agent.platform.pluginstate import PluginState

from .backend import Place, QuotaError, QuotasOff, Reading, Survey, mount_capacity

TIMEOUT = 60.0
TAG_TIMEOUT = 600.0  # tagging walks the whole tree once, when a share first gets its id
MAX_OUTPUT = 16 << 20
MAX_FILE = 4 << 20
KIB = 1024
STATE_PREFIX = "project:"
# struct fsxattr (linux/fs.h): xflags, extsize, nextents, projid, cowextsize, pad[8].
FSGETXATTR = 0x801C581F
FSXATTR = struct.Struct("=IIIII8s")
XFLAG_PROJINHERIT = 0x200
MOUNT_OPTIONS = ("prjquota", "pquota", "prjjquota")
PROJECT_NAME = re.compile(r"[^A-Za-z0-9._-]")


class ProjectError(QuotaError):
    """A project quota tool said something this backend cannot use."""


def project_name(share: str) -> str:
    """The share's name in /etc/projid (letters, digits, . _ - only; the file is NAME:ID)."""
    return "smbgw-" + PROJECT_NAME.sub("_", share)


def directory_project(path: Path) -> tuple[int, bool]:
    """The directory's project id and whether new files inherit it."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        buffer = bytearray(FSXATTR.size)
        fcntl.ioctl(descriptor, FSGETXATTR, buffer)
    finally:
        os.close(descriptor)
    xflags, _extsize, _nextents, projid, _cow, _pad = FSXATTR.unpack(bytes(buffer))
    return projid, bool(xflags & XFLAG_PROJINHERIT)


# ---- parsers of the tools' reports ----------------------------------------------------

def _kib(text: str, line: str) -> int:
    if not text.isdigit():
        raise ProjectError(f"unexpected value {text[:30]!r} in quota report line {line[:120]!r}")
    return int(text) * KIB


def parse_xfs_report(text: str) -> dict[int, Reading]:
    """`xfs_quota -x -c 'report -p -b -n -N'`: "#ID USED SOFT HARD WARN/GRACE ..." in KiB."""
    readings = {}
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if not fields[0].startswith("#") or not fields[0][1:].isdigit() or len(fields) < 4:
            raise ProjectError(f"unreadable line in xfs_quota report: {line[:120]!r}")
        hard = _kib(fields[3], line)
        readings[int(fields[0][1:])] = Reading(hard or None, _kib(fields[1], line))
    return readings


def parse_repquota_csv(text: str) -> dict[int, Reading]:
    """`repquota -P -n -O csv`: a header naming the columns, then one row per project
    ("#ID" or "ID" first); block figures in KiB."""
    try:
        rows = [row for row in csv.reader(io.StringIO(text)) if row]
    except csv.Error as exc:
        raise ProjectError(f"unreadable repquota output: {exc}") from None
    if not rows:
        raise ProjectError("repquota printed nothing")
    header = [name.strip() for name in rows[0]]
    try:
        used_at, hard_at = header.index("BlockUsed"), header.index("BlockHardLimit")
    except ValueError:
        raise ProjectError(f"repquota's csv header has unexpected columns: {','.join(header)[:200]}") from None
    readings = {}
    for row in rows[1:]:
        line = ",".join(row)
        ident = row[0].strip().lstrip("#")
        if not ident.isdigit() or len(row) <= max(used_at, hard_at):
            raise ProjectError(f"unreadable line in repquota output: {line[:120]!r}")
        hard = _kib(row[hard_at].strip(), line)
        readings[int(ident)] = Reading(hard or None, _kib(row[used_at].strip(), line))
    return readings


# ---- ids and the /etc/projects, /etc/projid files ----------------------------------------

def _read_lines(path: Path) -> list[str]:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE + 1)
    except FileNotFoundError:
        return []
    if len(data) > MAX_FILE:
        raise QuotaError(f"{path} is larger than {MAX_FILE} bytes: refusing to rewrite it")
    return data.decode("utf-8", errors="surrogateescape").splitlines()


def _ids_in(lines: Iterable[str], id_field: int) -> set[int]:
    found = set()
    for line in lines:
        fields = line.split(":")
        if len(fields) >= 2 and fields[id_field].strip().isdigit():
            found.add(int(fields[id_field]))
    return found


class ProjectIds:
    """Project ids handed out to shares, kept in the plugin's state."""

    def __init__(self, state: PluginState, first: int, last: int, projects: Path, projid: Path) -> None:
        self.state = state
        self.first, self.last = first, last
        self.projects, self.projid = projects, projid

    def of(self, share: str) -> int | None:
        entry = self.state.get(STATE_PREFIX + share.casefold())
        return int(entry["id"]) if entry else None

    def ours(self) -> dict[int, dict[str, str]]:
        """id -> {"share", "path"} for every id this agent handed out."""
        found = {}
        for key in self.state:
            if key.startswith(STATE_PREFIX):
                entry = self.state.get(key)
                found[int(entry["id"])] = entry
        return found

    def allocate(self, share: str, path: str) -> int:
        """The share's id, handing out the lowest free one in the range the first time.
        An id an administrator wrote into /etc/projects or /etc/projid is not free."""
        key = STATE_PREFIX + share.casefold()
        entry = self.state.get(key)
        if entry:
            if entry.get("path") != path:
                self.state.set(key, {**entry, "path": path})
            return int(entry["id"])
        taken = set(self.ours()) | _ids_in(_read_lines(self.projects), 0) | _ids_in(_read_lines(self.projid), 1)
        free = next((i for i in range(self.first, self.last + 1) if i not in taken), None)
        if free is None:
            raise QuotaError(f"the project id range [{self.first}, {self.last}] is exhausted ({len(taken)} ids "
                             "in use): widen agent.toml [quota] project_id_range")
        self.state.set(key, {"id": free, "share": share, "path": path})
        return free

    def write_files(self) -> None:
        """/etc/projects (ID:PATH) and /etc/projid (NAME:ID) list our ids; other lines stay."""
        ours = self.ours()
        for path, ours_lines, id_field in (
            (self.projects, [f"{i}:{e['path']}" for i, e in sorted(ours.items())], 0),
            (self.projid, [f"{project_name(e['share'])}:{i}" for i, e in sorted(ours.items())], 1),
        ):
            kept = [line for line in _read_lines(path) if not _ids_in([line], id_field) & set(ours)]
            text = "\n".join([*kept, *ours_lines]) + "\n"
            current = "\n".join(_read_lines(path)) + "\n"
            if text != current:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, text.encode("utf-8", errors="surrogateescape"), mode=0o644)


# ---- the backends ---------------------------------------------------------------------

class ProjectBackend:
    """What XFS and ext4 share; the subclasses run their own tools."""

    name = ""
    tagger = ""  # the tool that gives a tree its project id
    creates = "a directory with its own project id"
    tool_hint = ""

    def __init__(self, runner: Runner, ids: ProjectIds) -> None:
        self.runner = runner
        self.ids = ids

    def _run(self, argv: list[str], timeout: float | None = None) -> str:
        try:
            return self.runner.run(argv, timeout=timeout or TIMEOUT, max_output=MAX_OUTPUT).stdout
        except CommandError as exc:
            raise ProjectError(str(exc)) from exc

    def check(self, place: Place) -> None:
        """Any directory can carry a project id (the plugin has checked it is one)."""

    def survey_key(self, place: Place) -> str:
        return place.mount.point

    def _quotas_on(self, place: Place) -> None:
        if not any(place.mount.has_option(option) for option in MOUNT_OPTIONS):
            raise QuotasOff(f"project quotas are not on for the {self.name} file system at {place.mount.point} "
                            f"({place.mount.source}): {self.tool_hint}")

    def survey(self, place: Place) -> Survey:
        self._quotas_on(place)
        return Survey({str(ident): reading for ident, reading in self._report(place.mount.point).items()})

    def _report(self, mountpoint: str) -> dict[int, Reading]:
        raise NotImplementedError

    def reading(self, survey: Survey, place: Place) -> Reading:
        ident = self.ids.of(place.share)
        if ident is None:
            return Reading(None, 0)
        return survey.figures.get(str(ident), Reading(None, 0))

    def holder(self, place: Place) -> str:
        return f"{self.name} project {self.ids.allocate(place.share, str(place.path))}"

    def create(self, place: Place) -> None:
        place.path.mkdir(mode=0o755)

    def discard(self, place: Place) -> None:
        place.path.rmdir()

    def set_limit(self, place: Place, size: int | None) -> None:
        ident = self.ids.allocate(place.share, str(place.path))
        self.ids.write_files()
        if size is not None and directory_project(place.path) != (ident, True):
            self._tag(place, ident)
            if directory_project(place.path) != (ident, True):
                raise ProjectError(f"{self.tagger} reported success, but {place.declared} does not carry project "
                                   f"id {ident}")
        self._limit(place, ident, 0 if size is None else self.granted(size))

    def _tag(self, place: Place, ident: int) -> None:
        raise NotImplementedError

    def _limit(self, place: Place, ident: int, size: int) -> None:
        raise NotImplementedError

    def capacity(self, place: Place) -> int | None:
        return mount_capacity(place)

    def granted(self, size: int) -> int:
        return size // KIB * KIB

    def enable(self, place: Place) -> None:
        raise ProjectError(f"{self.name} project quotas are switched on at mount time")


class XfsBackend(ProjectBackend):
    name = "xfs"
    tagger = "xfs_quota project -s"
    tool_hint = ("mount it with -o prjquota (in /etc/fstab; XFS turns quota accounting on only when it is "
                 "mounted)")

    def _xfs_quota(self, command: str, mountpoint: str, projects: str = "", timeout: float | None = None) -> str:
        """xfs_quota exits 0 when a command fails ("cannot setup path for mount ..."): what it
        says on stderr is the error. It is given projects files of its own (only the line
        the command needs, or none): it reads /etc/projects whole and complains about every
        path in it that is not on XFS (an ext4 share's, say)."""
        with tempfile.TemporaryDirectory(prefix="smbgw-xfs-quota-") as scratch:
            listed, named = Path(scratch) / "projects", Path(scratch) / "projid"
            listed.write_text(projects)
            named.write_text("")
            argv = ["xfs_quota", "-x", "-D", str(listed), "-P", str(named), "-c", command, mountpoint]
            try:
                done = self.runner.run(argv, timeout=timeout or TIMEOUT, max_output=MAX_OUTPUT)
            except CommandError as exc:
                raise ProjectError(str(exc)) from exc
        complaint = done.stderr.strip()
        if complaint:
            raise ProjectError(f"xfs_quota -c '{command}' {mountpoint}: {complaint.splitlines()[-1][:300]}")
        return done.stdout

    def _report(self, mountpoint: str) -> dict[int, Reading]:
        return parse_xfs_report(self._xfs_quota("report -p -b -n -N", mountpoint))

    def _tag(self, place: Place, ident: int) -> None:
        self._xfs_quota(f"project -s {ident}", place.mount.point, f"{ident}:{place.path}\n", TAG_TIMEOUT)

    def _limit(self, place: Place, ident: int, size: int) -> None:
        self._xfs_quota(f"limit -p bhard={size} {ident}", place.mount.point)


class Ext4Backend(ProjectBackend):
    name = "ext4"
    tagger = "chattr -R +P -p"
    tool_hint = ("it needs the project and quota features (unmounted: tune2fs -O project,quota "
                 "DEVICE) and the mount option prjquota (in /etc/fstab)")

    def _report(self, mountpoint: str) -> dict[int, Reading]:
        return parse_repquota_csv(self._run(["repquota", "-P", "-n", "-O", "csv", mountpoint]))

    def _tag(self, place: Place, ident: int) -> None:
        self._run(["chattr", "-R", "+P", "-p", str(ident), str(place.path)], TAG_TIMEOUT)

    def _limit(self, place: Place, ident: int, size: int) -> None:
        self._run(["setquota", "-P", str(ident), "0", str(size // KIB), "0", "0", place.mount.point])

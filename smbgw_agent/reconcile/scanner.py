"""Reading shares.d: which files exist, which are valid, and what they declare.

Results are cached by (inode, size, mtime, ctime), so a pass re-parses only the files
that changed; the directory listing and one lstat per file are the whole fixed cost.
When the caller knows which names changed (inotify's events since the last scan), even
that goes: only those files, and the ones whose verdict depends on the file system, are
looked at (at 10,000 files the listing and the lstat calls are ~60 ms of a pass).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from smbgw_agent.effects.deadline import beat
from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.errors import ConfigError, Problem
from smbgw_agent.model.paths import Paths
from smbgw_agent.model.pathsafety import PathMemo
from smbgw_agent.model.printable import printable
from smbgw_agent.model.shares import ShareSpec, parse_share
from smbgw_agent.model.smbconf import AdminShares, read_admin_shares
from smbgw_agent.model.tomlsource import InputFileError, read_toml
from smbgw_agent.platform.pluginhost import PluginHost

log = logging.getLogger(__name__)

MAX_SHARE_FILES = 20000


def _depends_on_the_filesystem(result: FileResult) -> bool:
    """A verdict about the path (a link that escapes, a missing directory, a name the
    admin's smb.conf has) can change without the file changing: read such files again
    every pass, so the share comes back as soon as the cause is gone."""
    return any(p.security or p.key == "path" for p in result.problems)


def _is_text(name: str) -> bool:
    """Python hands undecodable bytes of file names over as lone surrogates; such a name
    cannot go into status.json, the state database or a metric label as it is."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _list(directory: Path) -> dict[str, int]:
    """The share files in `directory`, by name, with their inodes (from the directory
    itself: no stat)."""
    with os.scandir(directory) as entries:
        # `is_share_file_name`, inlined: a call per name was a third of the listing's cost.
        return {e.name: e.inode() for e in entries
                if e.name.endswith(".toml") and not e.name.startswith(_NOT_SHARE_FILE_PREFIXES)}


_NOT_SHARE_FILE_PREFIXES = (".", "#", "~")


def is_share_file_name(name: str) -> bool:
    """`*.toml`, not hidden (which includes a bare `.toml`), not an editor's temporary
    or backup copy."""
    return name.endswith(".toml") and not name.startswith(_NOT_SHARE_FILE_PREFIXES)


@dataclass
class FileResult:
    file: str
    spec: ShareSpec | None
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    # Where the file sets `name` (None: the name is the file's): a conflict with another
    # file is a problem of this line.
    name_line: int | None = None

    @property
    def valid(self) -> bool:
        return self.spec is not None and not self.problems


@dataclass
class ScanResult:
    files: dict[str, FileResult]
    directory_problem: str | None = None


class ShareScanner:
    def __init__(self, paths: Paths, plugins: PluginHost, config: AgentConfig,
                 list_registry: Callable[[], list[str]] | None = None) -> None:
        """`list_registry` names the shares of Samba's registry, asked when smb.conf reads
        it; without one, registry shares are not looked at."""
        self.paths = paths
        self.plugins = plugins
        self.config = config
        self.list_registry = list_registry
        self._registry: list[str] = []  # the last listing that worked
        self._registry_problem: str | None = None
        self._cache: dict[str, tuple[tuple[int, ...], FileResult]] = {}
        self._admin: AdminShares | None = None
        self._ancestors = PathMemo()
        # Files parsed (not served from the cache) by the last scan: their paths were
        # checked moments ago, so the guard need not check them again in this pass.
        self.fresh: set[str] = set()
        self._admin_signature: tuple[tuple[int, ...], ...] = ()
        self._last: ScanResult | None = None  # the last scan, for `scan(changed=...)`
        self._not_text: set[str] = set()  # its names that are not text, as shown (never read)
        self._inodes: dict[str, int] = {}  # share file name -> inode, as last listed

    def forget(self) -> None:
        """Drop the cache: validation also depends on the filesystem (symlinks, dirs)."""
        self._cache.clear()
        self._admin = None
        self._last = None

    def admin_shares(self) -> AdminShares:
        """The shares of the admin's own smb.conf, re-read when any of its files changed."""
        signature = self._admin_files_signature()
        if self._admin is None or signature != self._admin_signature:
            admin = self._with_registry(read_admin_shares(self.paths.smb_conf, self.paths.samba_dir))
            if self._admin is None or admin.sections != self._admin.sections:
                self._admin = admin
                self._cache.clear()  # a name may have become (un)available
            self._admin_signature = self._admin_files_signature()
        return self._admin

    def _with_registry(self, admin: AdminShares) -> AdminShares:
        """The registry's shares count as the administrator's too. Asked when smb.conf is
        (re)read: when one of its files changes, and at every full pass (`forget`). A
        listing that fails keeps the last one that worked, and says so."""
        if not admin.reads_registry or self.list_registry is None:
            return admin
        try:
            self._registry = self.list_registry()
        except Exception as exc:  # CommandError, or anything net conf's output does to us
            problem = (f"cannot list the shares of Samba's registry ({exc}); share names are checked "
                       f"against the last listing ({len(self._registry)} shares)")
            if problem != self._registry_problem:
                log.error("%s", problem)
            self._registry_problem = problem
            return admin.with_registry(self._registry, problem)
        if self._registry_problem:
            log.warning("the shares of Samba's registry are listed again")
        self._registry_problem = None
        return admin.with_registry(self._registry)

    def _admin_files_signature(self) -> tuple[tuple[int, ...], ...]:
        # smb.conf itself while it is missing (no file was read): its creation is a change.
        files = self._admin.files if self._admin is not None and self._admin.files else (str(self.paths.smb_conf),)
        signature: list[tuple[int, ...]] = []
        for name in files:
            try:
                info = os.stat(name)
                signature.append((info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns))
            except OSError:
                signature.append(())
        return tuple(signature)

    @property
    def directory(self) -> Path:
        return self.paths.host(self.config.shares_dir)

    def scan(self, changed: Collection[str] | None = None) -> ScanResult:
        """All share files' verdicts. `changed`: the names in shares.d that may have
        changed since the last scan (None: unknown, list the directory)."""
        if changed is not None and self._last is not None:
            result = self._rescan(changed)
            if result is not None:
                return result
        self._last = self._scan()
        return self._last

    def _begin(self) -> None:
        """What every scan starts from: smb.conf's shares current (re-read if it changed),
        a path memo of its own, and nothing parsed yet."""
        self.admin_shares()
        self._ancestors = PathMemo()
        self.fresh = set()

    def _rescan(self, changed: Collection[str]) -> ScanResult | None:
        """The last scan with `changed` read again, plus every file whose verdict is not
        cached (it depends on the file system, or smb.conf changed and emptied the
        cache); None where only a full scan can tell (the directory cannot be listed, a
        name that is not text, too many files).

        The directory is listed too, names and inodes only (no stat: ~5 ms at 10,000
        files): a file created, removed or renamed over is read even where inotify dropped
        its events (a full queue after a burst; Debian's watchdog reports no overflow).
        Only a write in place whose event was lost waits for the next full pass."""
        last = self._last
        assert last is not None
        if last.directory_problem is not None:
            return None
        directory = self.directory
        try:
            listing = _list(directory)
        except OSError:
            return None
        if len(listing) > MAX_SHARE_FILES:
            return None
        self._begin()
        known = self._inodes
        again = {name for name in changed if is_share_file_name(name)}
        again |= {name for name, inode in listing.items() if known.get(name) != inode}
        again |= known.keys() - listing.keys()
        again |= {name for name in last.files if name not in self._cache and name not in self._not_text}
        if not all(_is_text(name) for name in again):
            return None
        prefix = str(directory).rstrip("/") + "/"
        files = dict(last.files)
        for name in sorted(again):
            if name not in listing:
                files.pop(name, None)
                self._cache.pop(name, None)
                continue
            files[name] = self._read(directory, prefix, name)
            beat()
        if files.keys() != last.files.keys():
            # Sorting the names, not (name, result) pairs: comparing 10,000 tuples cost
            # more than the rest of the rescan.
            files = {name: files[name] for name in sorted(files)}
        self._inodes = listing
        self._last = ScanResult(files)
        return self._last

    def _scan(self) -> ScanResult:
        directory = self.directory
        try:
            listing = _list(directory)
        except FileNotFoundError:
            self._cache.clear()
            return ScanResult({}, f"{directory} does not exist")
        except NotADirectoryError:
            self._cache.clear()
            return ScanResult({}, f"{directory} is not a directory")
        except OSError as exc:
            return ScanResult({}, f"cannot list {directory}: {exc.strerror}")
        names = sorted(listing)
        self._inodes = listing
        self._begin()
        problem = None
        if len(names) > MAX_SHARE_FILES:
            problem = f"{len(names)} share files; only the first {MAX_SHARE_FILES} are read"
            names = names[:MAX_SHARE_FILES]
        files = {}
        self._not_text = set()
        prefix = str(directory).rstrip("/") + "/"
        for name in names:
            if not _is_text(name):
                shown = printable(name)
                self._not_text.add(shown)
                files[shown] = FileResult(shown, None, [Problem(
                    directory / shown,
                    "the file name is not valid UTF-8 (undecodable bytes shown as \\udcXX); "
                    "a share file's name must be text, rename it",
                )])
                continue
            files[name] = self._read(directory, prefix, name)
            beat()
        for gone in set(self._cache) - set(files):
            del self._cache[gone]
        return ScanResult(files, problem)

    def _read(self, directory: Path, prefix: str, name: str) -> FileResult:
        """The file's verdict, from the cache while its inode, size, times and mode are
        unchanged. `prefix` is the directory as text with a slash: at 10,000 files the
        per-file Path objects cost more than the lstat calls themselves."""
        try:
            info = os.lstat(prefix + name)
            signature: tuple[int, ...] = (
                info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_mode,
            )
        except OSError:
            signature = ()
        cached = self._cache.get(name)
        if cached and signature and cached[0] == signature:
            return cached[1]
        result = self.read_one(directory / name, self._admin)
        self.fresh.add(name)
        if signature and not _depends_on_the_filesystem(result):
            self._cache[name] = (signature, result)
        return result

    def read_one(self, path: Path, admin: AdminShares | None = None) -> FileResult:
        """Validate one file with no caching (also what `smbgwctl validate` uses).
        `admin`: smb.conf's shares as a scan found them when it began (not stat-ing
        smb.conf's files again for each of 10,000 share files); by default, as they are."""
        try:
            doc = read_toml(path)
        except InputFileError as exc:
            return FileResult(path.name, None, [exc.problem])
        if not isinstance(doc.data, dict):  # pragma: no cover - tomllib always gives a dict
            return FileResult(path.name, None, [Problem(path, "not a TOML table")])
        warnings: list[Problem] = []
        if admin is None:
            admin = self.admin_shares()
        try:
            spec = parse_share(doc, self.config, self.paths, self.plugins, admin, warnings, self._ancestors)
        except ConfigError as exc:
            return FileResult(path.name, None, exc.problems, warnings)
        # Most files take their name from the file name: no key, no line (and no index of
        # the file's lines, which was a tenth of parsing a cold start).
        name_line = doc.line_of("", "name") if "name" in doc.data else None
        return FileResult(path.name, spec, warnings=warnings, name_line=name_line)

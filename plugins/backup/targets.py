"""Off-host copies of a share's snapshots: a restic repository or a Proxmox Backup Server.

What is sent is always one read-only snapshot directory (a btrfs snapshot in
`<share>/.snapshots/NAME`, or a ZFS snapshot's `.zfs/snapshot/NAME`), never the live
share: a copy of files that change while they are read is not a backup. Every remote
snapshot records which local snapshot it came from, so a restore can say "this is
Previous Version NAME" and a verify run can compare the two.

Secrets. The password reaches the tools as a *file name* in their environment
(`RESTIC_PASSWORD_FILE`, `PBS_PASSWORD_FILE`): never argv (`ps` shows argv to every
user), never an environment variable's value, never a log line or exception. The file is
checked before use (`password_path`): a regular file, not a symbolic link, owned by root
or the agent, readable by no one else, not empty. Each tool gets a minimal environment
(PATH, LANG, TZ=UTC, HOME = the target's cache directory, the tool's own variables), not
the agent's: nothing the agent inherited leaks into a backup tool, and nothing in it
(a stray RESTIC_PASSWORD, PBS_PASSWORD_CMD) changes what the tool does.

Errors are `TargetError`, whose `reason` is a short label for the failure metric:
password, unreachable, timeout, tool_missing, garbage, disk_full, locked, mismatch (the
server's certificate is not the configured one; a snapshot name PBS cannot keep),
missing (no repository, or a requested file or snapshot is not there), invalid (a caller's argument),
config (a target table this module cannot use), incomplete (restic could not read some
files), failed (anything else, with the tool's last stderr lines, secrets redacted).

restic (checked against Debian 12's restic 0.14.0, the messages below are its own)
----------------------------------------------------------------------------------
Repository and password by environment only (`RESTIC_REPOSITORY`, `RESTIC_PASSWORD_FILE`;
never `-r`): a repository string can hold credentials (`rest:https://user:pw@host/`), so it
is also handed to the runner as a secret to redact, unless it is a plain local path.

    restic --cache-dir CACHE cat config --no-lock            does the repository exist?
    restic --cache-dir CACHE init                            only when it does not
    env -C SNAPSHOT_DIR restic --cache-dir CACHE backup --json --quiet --host NODE
        --tag smbgw --tag smbgw-share=SHARE --tag smbgw-snapshot=NAME
        --time "YYYY-MM-DD HH:MM:SS" [--parent ID] .
    restic --cache-dir CACHE snapshots --json --host NODE --tag smbgw-share=SHARE
    restic --cache-dir CACHE restore ID --target INTO/NAME [--include /PATH ...]
    restic --cache-dir CACHE forget --prune --host NODE --tag smbgw-share=SHARE
        --group-by host --keep-daily 7 ...
    restic --cache-dir CACHE unlock                          only after "already locked"

Why `env -C SNAPSHOT_DIR ... backup .` and not `backup SNAPSHOT_DIR`: restic 0.14 finds the
unchanged files of `--parent` by their path in the snapshot's tree, and with an absolute
source that path contains the snapshot's name, which differs every time: tried with 400
files, a second backup of an identical tree at another path re-read all 400 (files_new)
even with --parent. Backing up `.` puts the snapshot's root at the tree's root, so every
backup of a share has the same tree paths and the parent's unchanged files (same inode,
size, mtime, ctime: btrfs and ZFS snapshots keep them) are not read again. The runner
takes no working directory, hence GNU env's `-C` (coreutils >= 8.28; Debian 12 has 9.1).
restic still records the absolute path of `.` as the snapshot's path. The same layout
makes `--include /PATH` and the restored tree relative to the snapshot root.

Grouping: restic groups by (host, paths) by default, and the path differs per snapshot,
so every command filters by `--host NODE --tag smbgw-share=SHARE` and `forget` groups by
host only; `--parent` is always passed explicitly (the newest backup of the share).
`--time` is the local snapshot's UTC time (TZ=UTC in restic's environment), so the remote
snapshot lists at the time the data was frozen, not when it was uploaded. The share tag
holds the case-folded share name (share names are case-insensitive).

Telling failures apart (0.14 has no distinct exit codes; 0.17+ exits 10, 11, 12 for these
and those codes are honoured too):
- no repository: "Fatal: unable to open config file: stat .../config: no such file or
  directory" (local), "...: <config/> does not exist" (rest:), followed by "Is there a
  repository at the following location?"; only then is `init` run;
- wrong password: "Fatal: wrong password or no key found";
- unreachable: "connection refused", "no such host", "Could not resolve hostname",
  "unable to start the sftp session", ...;
- locked: "unable to create lock in backend: repository is already locked [exclusively]
  by PID ...". A backup takes a shared lock, `forget --prune` an exclusive one; a restic
  killed (by our timeout too) leaves its lock behind. On that message `restic unlock`
  (without --remove-all) removes only stale locks, those whose process is gone on this
  host or older than 30 minutes, and the command is tried once more: a live restic's lock
  is left alone and the run fails with reason "locked".
- exit 3: "at least one source file could not be read": the snapshot exists but is not
  complete: reason "incomplete".

Backend credentials that restic takes from the environment (AWS_*, B2_*, AZURE_*, ...)
are not passed: with the minimal environment, s3:, b2:, azure:, gs: and swift:
repositories need a later extension (e.g. an environment file per target); local, rest:
(credentials in the URL) and sftp: (ssh keys of the agent's user) work.

Proxmox Backup Server (proxmox-backup-client, not installable here)
-------------------------------------------------------------------
Checked against github.com/proxmox/proxmox-backup at 3.2.4 (commit 4940514b; PVE 8, on
bookworm, ships the 3.x client): docs/backup-client.rst, proxmox-backup-client/src/main.rs
(create_backup, restore, prune), proxmox-backup-client/src/snapshot.rs (list_snapshots),
pbs-client/src/tools/mod.rs (PBS_PASSWORD/_FD/_FILE/_CMD, PBS_FINGERPRINT,
PBS_REPOSITORY), pbs-client/src/backup_specification.rs, pbs-api-types (BACKUP_ID_RE,
BACKUP_NS_RE, SnapshotListItem, PruneJobOptions), pbs-datastore/src/prune.rs; and at
4.2.3 (the trixie-based PVE 9 line; read in a fork that tracks it, pve-loong64-port/
proxmox-backup, commit 506700f6). What changed in between that matters here: `restore
--pattern` (restore a subset) exists since 3.3.0 (commit 1bb68001, "fix #2996"); 4.1.8
adds --server/--port/--datastore/--auth-id and PBS_NAMESPACE as alternatives, while
--repository and --ns stay. The command lines used work on 3.x and 4.x:

    proxmox-backup-client backup share.pxar:SNAPSHOT_DIR --repository REPO [--ns NS]
        --backup-type host --backup-id smbgw-SHARE --backup-time EPOCH
    proxmox-backup-client snapshot list host/smbgw-SHARE --output-format json
        --repository REPO [--ns NS]
    proxmox-backup-client restore host/smbgw-SHARE/2026-12-01T03:00:00Z share.pxar
        INTO/NAME --repository REPO [--ns NS] [--pattern /PATH ...]
    proxmox-backup-client prune host/smbgw-SHARE --keep-daily 7 ... --output-format json
        --repository REPO [--ns NS]

with PBS_PASSWORD_FILE (the client uses the file's first line) and PBS_FINGERPRINT in the
environment. The repository (`user@realm!token@host:store`) holds no secret and goes on
argv, as the documentation does.

- The group is host/smbgw-SHARE: a backup id is `[A-Za-z0-9_][A-Za-z0-9._-]*`, so the
  case-folded share name is escaped (`_` and every byte outside [a-z0-9.-] become `_hh`,
  e.g. "my share" -> smbgw-my_20share), which keeps distinct shares distinct. The
  namespace (one per node, e.g. `pve1`) keeps two nodes' shares of the same name apart
  and must exist on the server (a backup does not create it; `proxmox-backup-client
  namespace create` or the web interface does).
- The archive is always `share.pxar`: an archive name is `[a-zA-Z0-9_-]+` (no dots, no
  spaces), and the group already names the share.
- The local snapshot a remote one came from is not stored on the server: it is derived
  from the backup time, which is the snapshot's own time (`--backup-time`), since our
  snapshot names are `smbgw-` + the UTC time (`names.name_at`). `backup` refuses a
  snapshot whose name is not that (reason "mismatch"), so the derivation always holds.
- Restoring a subset uses `--pattern` (each path anchored with a leading "/", glob
  characters escaped). A 3.0-3.2 client rejects the unknown option ("schema does not
  allow additional properties"): then the whole archive is restored, which contains the
  files asked for.
- Unfinished snapshots (no index.json.blob in `files`, a backup that died) are not listed.
- PBS's prune is not restic's (see retention.py): it applies the rules in order, each
  skipping periods an earlier rule covered; that is the server's business, we pass the
  counts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from smbgw_agent.effects.runner import CommandError, Completed, Runner
from smbgw_agent.effects.secretfile import SecretFileError, secret_path

from .names import name_at, time_of
from .retention import MAX_COUNT, RULES

TYPES = ("restic", "pbs")
DEFAULT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# A listing of a share's remote snapshots: 16 MiB is tens of thousands of snapshots; a
# tool that writes more is broken, and the runner stops it instead of filling memory.
MAX_LIST_OUTPUT = 16 << 20
MAX_OUTPUT = 4 << 20
MAX_PASSWORD_FILE = 64 << 10
STDERR_LINES = 4
ARCHIVE = "share"
BACKUP_ID_PREFIX = "smbgw-"
MAX_BACKUP_ID = 200
# Our snapshot names and anything a tag or a path component can carry safely.
_SNAPSHOT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:+@-]{0,254}")
_RESTIC_ID = re.compile(r"[0-9a-f]{64}")
_RESTIC_SHORT_ID = re.compile(r"[0-9a-f]{8,64}")
_CREDENTIAL = re.compile(r"[A-Za-z0-9_.-]{1,255}")
_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")
_FINGERPRINT = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){31}")
_SAFE_ID = r"[A-Za-z0-9_][A-Za-z0-9._\-]*"
_NAMESPACE = re.compile(rf"(?:{_SAFE_ID}/){{0,7}}{_SAFE_ID}")
# pbs-api-types BACKUP_REPO_URL_REGEX, loosely: [[auth-id@]host[:port]:]datastore.
_PBS_REPOSITORY = re.compile(
    rf"(?:(?:[^\s:/@!]+@{_SAFE_ID}(?:!{_SAFE_ID})?@)?(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):)?(?:\d{{1,5}}:)?{_SAFE_ID}"
)
_PBS_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_GLOB_SPECIAL = re.compile(r"([\\*?\[\]])")
_BACKUP_ID_KEEP = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-")

# Lower-cased stderr fragments, checked in this order.
_PASSWORD = ("wrong password", "no key found", "authentication failed", "invalid credentials",
             "401 unauthorized", "no password input mechanism", "unable to open file in env(pbs_password",
             "api token secret must be provided")
_DISK_FULL = ("no space left on device", "disk quota exceeded", "os error 28", "enospc")
_LOCKED = ("repository is already locked",)
_CERTIFICATE = ("fingerprint does not match", "certificate fingerprint was not confirmed",
                "certificate validation failed", "certificate verify failed", "x509: certificate")
_UNREACHABLE = ("connection refused", "no such host", "network is unreachable", "no route to host",
                "i/o timeout", "could not resolve hostname", "unable to start the sftp session",
                "tls handshake timeout", "connection reset", "error trying to connect", "tcp connect error",
                "dns error", "failed to lookup address", "connection timed out", "host is unreachable",
                "temporary failure in name resolution")
_NO_REPOSITORY = ("no such file or directory", "does not exist")
_NO_SNAPSHOT = ("no matching id found", "unable to load snapshot")


class TargetError(Exception):
    """A message an administrator can act on; `reason` is a short label for a metric."""

    def __init__(self, message: str, reason: str = "failed") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class RemoteSnapshot:
    """One backup on a target: the target's id for it, the (UTC) time of the local
    snapshot it was made from, and that snapshot's name."""

    id: str
    time: datetime
    snapshot: str


class Target(Protocol):
    """An off-host place for a share's snapshots; every method is bounded by `timeout`
    seconds in all (it may run several commands)."""

    name: str
    kind: str

    def backup(self, share: str, source: Path, snapshot: str, when: datetime, timeout: float) -> RemoteSnapshot:
        """Send the snapshot directory `source` (local snapshot `snapshot`, taken at `when`)."""
        ...

    def snapshots(self, share: str, timeout: float) -> list[RemoteSnapshot]:
        """The share's remote snapshots, oldest first (none if nothing was ever sent)."""
        ...

    def restore(self, share: str, remote: RemoteSnapshot, files: Sequence[str] | None, into: Path,
                timeout: float) -> Path:
        """Restore `files` (paths relative to the snapshot root; None: everything) into a
        new directory `into/<remote.snapshot>`, which is returned and corresponds to the
        snapshot root."""
        ...

    def forget(self, share: str, keep: Mapping[str, int], timeout: float) -> None:
        """Delete the share's remote snapshots that no keep rule wants (rule -> count)."""
        ...


# ---- the password file ----------------------------------------------------------------


def password_path(password_file: str | None, credential: str | None, host: Callable[[str], Path],
                  environ: Mapping[str, str]) -> Path:
    """The checked path of a target's password file (see `smbgw_agent.effects.secretfile`):
    `password_file` (an absolute path mapped by `host`, i.e. `Paths.host`) or the systemd
    credential `credential`."""
    try:
        return secret_path(password_file, credential, host, environ)
    except SecretFileError as exc:
        raise TargetError(str(exc), "password") from None


# ---- shared helpers --------------------------------------------------------------------


class _Budget:
    """The time left of one operation, which may run several commands."""

    def __init__(self, what: str, seconds: float) -> None:
        self.what = what
        self.seconds = seconds
        self.ends = time.monotonic() + seconds

    def left(self) -> float:
        remaining = self.ends - time.monotonic()
        if remaining <= 0:
            raise TargetError(f"{self.what}: timed out after {self.seconds:g}s", "timeout")
        return remaining


def _tail(result: Completed) -> str:
    """The last lines a tool wrote (already redacted by the runner), for a message."""
    lines = [line.strip()[:300] for line in (result.stderr or result.stdout).splitlines() if line.strip()]
    return " / ".join(lines[-STDERR_LINES:]) or f"exit {result.returncode}, no output"


def _classify(text: str) -> str:
    lowered = text.lower()
    for reason, needles in (("password", _PASSWORD), ("disk_full", _DISK_FULL), ("locked", _LOCKED),
                            ("mismatch", _CERTIFICATE), ("unreachable", _UNREACHABLE)):
        if any(needle in lowered for needle in needles):
            return reason
    return "failed"


def _not_run(what: str, exc: CommandError) -> TargetError:
    """A command that gave no answer: missing, hanging, killed by the pass deadline, or
    writing without end."""
    text = str(exc)
    if text.endswith("command not found"):
        return TargetError(f"{what}: {text}", "tool_missing")
    if "timed out after" in text or "not started: the pass used up" in text:
        return TargetError(f"{what}: {text}", "timeout")
    if "bytes of output" in text:
        return TargetError(f"{what}: {text}", "garbage")
    return TargetError(f"{what}: {text}", "failed")


def _tool(name: str, path: str) -> str:
    """The tool's absolute path on the PATH the tool itself gets."""
    found = shutil.which(name, path=path)
    if found is None:
        raise TargetError(f"{name} is not installed (not found on PATH={path})", "tool_missing")
    return found


def _base_env(cache_dir: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH") or DEFAULT_PATH, "LANG": "C.UTF-8", "TZ": "UTC",
            "HOME": str(cache_dir)}


def _check_share(share: str) -> str:
    """The key a share is known by remotely: its case-folded name."""
    if not isinstance(share, str) or not share or len(share) > 80 or any(c in share for c in ",\n\r\0/"):
        raise TargetError(f"{share!r} is not a share name", "invalid")
    return share.casefold()


def _check_snapshot_name(snapshot: str) -> str:
    if not isinstance(snapshot, str) or not _SNAPSHOT_NAME.fullmatch(snapshot):
        raise TargetError(f"{snapshot!r} is not a snapshot name this module can send", "invalid")
    return snapshot


def _check_when(when: datetime) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise TargetError(f"snapshot time {when.isoformat()} has no time zone", "invalid")
    return when.astimezone(UTC)


def _check_source(source: Path) -> Path:
    if not source.is_absolute() or "\n" in str(source):
        raise TargetError(f"{source} is not an absolute path", "invalid")
    if source.is_symlink() or not source.is_dir():
        raise TargetError(f"{source} is not a directory (the snapshot to send)", "invalid")
    return source


def _relative_files(files: Sequence[str] | None) -> list[PurePosixPath] | None:
    """Paths relative to the snapshot root, normalized; never absolute, never `..`."""
    if files is None:
        return None
    if isinstance(files, str):
        raise TargetError("files must be a list of paths, not one string", "invalid")
    checked = []
    for item in files:
        if not isinstance(item, str) or not item or "\0" in item or "\n" in item:
            raise TargetError(f"{item!r} is not a path in the snapshot", "invalid")
        path = PurePosixPath(item)
        if path.is_absolute() or ".." in path.parts or not path.parts:
            raise TargetError(f"{item!r} is not a path relative to the snapshot root", "invalid")
        checked.append(path)
    if not checked:
        raise TargetError("no files to restore (give None to restore everything)", "invalid")
    return checked


def _restore_target(into: Path, remote: RemoteSnapshot) -> Path:
    """`into/<snapshot name>`, which must not exist yet: a restore never mixes with, or
    overwrites, what is already there."""
    _check_snapshot_name(remote.snapshot)
    if into.is_symlink() or not into.is_dir():
        raise TargetError(f"{into} is not a directory to restore into", "invalid")
    target = into / remote.snapshot
    if target.exists() or target.is_symlink():
        raise TargetError(f"{target} exists already; restore into an empty place", "invalid")
    return target


def _check_restored(root: Path, files: list[PurePosixPath] | None, remote: RemoteSnapshot) -> Path:
    if not root.is_dir():
        if files:  # restic makes nothing when no include matches
            raise TargetError(f"none of {', '.join(map(str, files))} is in remote snapshot {remote.id} "
                              f"({remote.snapshot})", "missing")
        raise TargetError(f"the restore of {remote.id} left no directory at {root}", "failed")
    for path in files or ():
        if not (root / path).exists() and not (root / path).is_symlink():
            raise TargetError(f"{path} is not in remote snapshot {remote.id} ({remote.snapshot})", "missing")
    return root


def keep_rules(keep: Mapping[str, int]) -> dict[str, int]:
    """The non-zero rules of a keep policy, in the tools' order; an empty policy is
    refused (restic and PBS would keep everything, but asking for it is a caller's bug)."""
    if not isinstance(keep, Mapping):
        raise TargetError(f"keep must be a table of rule = count, not {type(keep).__name__}", "config")
    unknown = sorted(set(keep) - set(RULES))
    if unknown:
        raise TargetError(f"unknown keep rule(s) {', '.join(map(str, unknown))} (known: {', '.join(RULES)})",
                          "config")
    rules = {}
    for rule in RULES:
        count = keep.get(rule, 0)
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_COUNT:
            raise TargetError(f"keep {rule} = {count!r} is not a count from 0 to {MAX_COUNT}", "config")
        if count:
            rules[rule] = count
    if not rules:
        raise TargetError("an empty keep policy; refusing to prune", "config")
    return rules


def keep_arguments(keep: Mapping[str, int]) -> list[str]:
    """`--keep-daily 7 --keep-weekly 4`: restic's forget and PBS's prune spell them alike."""
    return [arg for rule, count in keep_rules(keep).items() for arg in (f"--keep-{rule}", str(count))]


# ---- restic ----------------------------------------------------------------------------


def _local_repository(repository: str) -> str | None:
    """The path of a local repository (`/path` or `local:/path`), else None."""
    if repository.startswith("local:"):
        repository = repository[len("local:"):]
    return repository if repository.startswith("/") else None


def _restic_time(text: str) -> datetime:
    """restic's RFC 3339 time with nanoseconds (Python takes at most microseconds)."""
    match = re.fullmatch(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})", text)
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text[:60]!r}")
    base, fraction, zone = match.groups()
    stamp = f"{base}.{(fraction or '0')[:6].ljust(6, '0')}{'+00:00' if zone == 'Z' else zone}"
    return datetime.fromisoformat(stamp).astimezone(UTC)


def _json_objects(text: str, what: str) -> list[dict[str, Any]]:
    """A tool's JSON listing: a list of objects, or reason "garbage" for anything else."""
    try:
        data = json.loads(text)
    except ValueError:
        raise TargetError(f"{what} printed no JSON: {text[:120]!r}", "garbage") from None
    if not isinstance(data, list):
        raise TargetError(f"{what} printed {type(data).__name__}, not a list", "garbage")
    for item in data:
        if not isinstance(item, dict):
            raise TargetError(f"{what}: an entry is {type(item).__name__}", "garbage")
    return data


def parse_restic_snapshots(text: str, node: str, share_tag: str) -> list[RemoteSnapshot]:
    """`restic snapshots --json` of one share, oldest first. restic already filtered by
    host and tag; they are checked again, and anything malformed is reason "garbage"
    (a listing that cannot be trusted must not drive parents, restores or verifies)."""
    found: list[RemoteSnapshot] = []
    for item in _json_objects(text, "restic snapshots --json"):
        ident, when, tags, host = item.get("id"), item.get("time"), item.get("tags") or [], item.get("hostname")
        if not isinstance(ident, str) or not _RESTIC_ID.fullmatch(ident) or not isinstance(when, str) \
                or not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags) \
                or not isinstance(host, str):
            raise TargetError(f"restic snapshots --json: unreadable entry {json.dumps(item)[:160]}", "garbage")
        if host != node or share_tag not in tags or "smbgw" not in tags:
            continue
        names = [tag.split("=", 1)[1] for tag in tags if tag.startswith("smbgw-snapshot=")]
        if len(names) != 1 or not _SNAPSHOT_NAME.fullmatch(names[0]):
            raise TargetError(f"restic snapshot {ident[:8]} has no single valid smbgw-snapshot tag: {tags!r}",
                              "garbage")
        try:
            stamp = _restic_time(when)
        except ValueError as exc:
            raise TargetError(f"restic snapshot {ident[:8]}: {exc}", "garbage") from None
        found.append(RemoteSnapshot(ident, stamp, names[0]))
    found.sort(key=lambda snap: (snap.time, snap.id))
    return found


def _backup_summary(stdout: str) -> dict[str, Any]:
    """The summary line of `restic backup --json --quiet`."""
    for line in reversed(stdout.splitlines()):
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("message_type") == "summary":
            return message
    raise TargetError(f"restic backup printed no summary: {stdout[-200:]!r}", "garbage")


class ResticTarget:
    """A restic repository; see the module docstring for the commands and why."""

    kind = "restic"

    def __init__(self, name: str, repository: str, runner: Runner, password: Path, node: str,
                 cache_dir: Path) -> None:
        self.name = name
        self.repository = repository
        self.runner = runner
        self.password = password
        self.node = node
        self.cache_dir = cache_dir
        self._exists = False
        # Snapshot ids listed for (node, share): an id never changes owner, so a restore of
        # one just listed (the verify job lists, then restores) needs no second listing.
        self._known: dict[str, set[str]] = {}
        self._secrets = [] if _local_repository(repository) else [repository, *_url_passwords(repository)]

    def __repr__(self) -> str:
        return f"ResticTarget({self.name!r})"  # never the repository string: it may hold credentials

    # -- running restic

    def _env(self) -> dict[str, str]:
        env = _base_env(self.cache_dir)
        env["RESTIC_REPOSITORY"] = self.repository
        env["RESTIC_PASSWORD_FILE"] = str(self.password)
        return env

    def _run(self, args: Sequence[str], budget: _Budget, *, cwd: Path | None = None,
             max_output: int = MAX_OUTPUT) -> Completed:
        env = self._env()
        argv = [_tool("restic", env["PATH"]), "--cache-dir", str(self.cache_dir), *args]
        if cwd is not None:
            if "=" in argv[0]:
                raise TargetError(f"restic's path {argv[0]} contains '=', which env would take as a variable",
                                  "tool_missing")
            argv = [_tool("env", env["PATH"]), "-C", str(cwd), *argv]
        _private_dir(self.cache_dir)
        try:
            return self.runner.run(argv, timeout=budget.left(), check=False, env=env, secrets=self._secrets,
                                   max_output=max_output)
        except CommandError as exc:
            raise _not_run(f"target {self.name}: restic {args[0]}", exc) from None

    def _failure(self, what: str, result: Completed) -> TargetError:
        reason = {10: "missing", 11: "locked", 12: "password"}.get(result.returncode) or _classify(result.stderr)
        if reason == "failed" and _no_repository(result.stderr):
            reason = "missing"
        elif reason == "failed" and any(needle in result.stderr.lower() for needle in _NO_SNAPSHOT):
            return TargetError(f"target {self.name}: {what}: no such snapshot: {_tail(result)}", "missing")
        if reason == "missing":
            return TargetError(f"target {self.name}: {what}: there is no restic repository: {_tail(result)}",
                               "missing")
        hint = {"password": " (the password file does not open this repository)",
                "locked": " (another restic holds the lock; a stale one is removed by `restic unlock`)"}
        return TargetError(f"target {self.name}: {what} failed{hint.get(reason, '')}: {_tail(result)}", reason)

    def _run_unlocked(self, args: Sequence[str], budget: _Budget, **kwargs: Any) -> Completed:
        """Run; if a lock blocks it, remove stale locks (`restic unlock` leaves a live
        restic's lock alone) and try once more."""
        result = self._run(args, budget, **kwargs)
        if result.ok or (result.returncode != 11 and "repository is already locked" not in result.stderr):
            return result
        unlocked = self._run(["unlock"], budget)
        if not unlocked.ok:
            raise self._failure("restic unlock", unlocked)
        return self._run(args, budget, **kwargs)

    def _repository_exists(self, budget: _Budget) -> bool:
        if self._exists:
            return True
        # --no-lock: the config never changes once written, and a lock costs restic 0.2 s.
        result = self._run(["cat", "config", "--no-lock"], budget, max_output=1 << 16)
        if result.ok:
            self._exists = True
            return True
        if result.returncode == 10 or (_no_repository(result.stderr) and _classify(result.stderr) == "failed"):
            return False
        raise self._failure("opening the repository", result)

    def _ensure_repository(self, budget: _Budget) -> None:
        if self._repository_exists(budget):
            return
        result = self._run(["init"], budget)
        if not result.ok and "already exists" not in result.stderr.lower():  # made by another node meanwhile
            raise self._failure("restic init", result)
        self._exists = True

    def _filters(self, share_key: str) -> list[str]:
        return ["--host", self.node, "--tag", f"smbgw-share={share_key}"]

    def _list(self, share_key: str, budget: _Budget) -> list[RemoteSnapshot]:
        result = self._run_unlocked(["snapshots", "--json", *self._filters(share_key)], budget,
                                    max_output=MAX_LIST_OUTPUT)
        if not result.ok:
            raise self._failure("restic snapshots", result)
        found = parse_restic_snapshots(result.stdout, self.node, f"smbgw-share={share_key}")
        self._known[share_key] = {snap.id for snap in found}
        return found

    # -- the Target protocol

    def backup(self, share: str, source: Path, snapshot: str, when: datetime, timeout: float) -> RemoteSnapshot:
        key, name, utc = _check_share(share), _check_snapshot_name(snapshot), _check_when(when)
        source = _check_source(source)
        budget = _Budget(f"target {self.name}: backup of {share} snapshot {name}", timeout)
        self._ensure_repository(budget)
        previous = self._list(key, budget)
        args = ["backup", "--json", "--quiet", *self._filters(key), "--tag", "smbgw",
                "--tag", f"smbgw-snapshot={name}", "--time", utc.strftime("%Y-%m-%d %H:%M:%S")]
        if previous:
            args += ["--parent", previous[-1].id]
        result = self._run_unlocked([*args, "."], budget, cwd=source)
        if not result.ok and result.returncode != 3:
            raise self._failure(f"backup of {share} snapshot {name}", result)
        made = _backup_summary(result.stdout).get("snapshot_id")
        if not isinstance(made, str) or not _RESTIC_SHORT_ID.fullmatch(made):
            raise TargetError(f"target {self.name}: restic backup reported no snapshot id ({made!r})", "garbage")
        if result.returncode == 3:
            raise TargetError(f"target {self.name}: backup of {share} snapshot {name} is incomplete: restic could "
                              f"not read some files (remote snapshot {made[:8]}): {_tail(result)}", "incomplete")
        for remote in reversed(self._list(key, budget)):
            if remote.id.startswith(made):
                return remote
        raise TargetError(f"target {self.name}: restic made snapshot {made[:8]} but does not list it for "
                          f"host {self.node} and share {share}", "mismatch")

    def snapshots(self, share: str, timeout: float) -> list[RemoteSnapshot]:
        key = _check_share(share)
        budget = _Budget(f"target {self.name}: listing {share}", timeout)
        if not self._repository_exists(budget):
            return []
        return self._list(key, budget)

    def restore(self, share: str, remote: RemoteSnapshot, files: Sequence[str] | None, into: Path,
                timeout: float) -> Path:
        key, wanted = _check_share(share), _relative_files(files)
        target = _restore_target(into, remote)
        if not _RESTIC_ID.fullmatch(remote.id):
            raise TargetError(f"{remote.id!r} is not a restic snapshot id", "invalid")
        budget = _Budget(f"target {self.name}: restore of {share} snapshot {remote.snapshot}", timeout)
        if remote.id not in self._known.get(key, ()) and not any(snap.id == remote.id
                                                                 for snap in self._list(key, budget)):
            raise TargetError(f"target {self.name}: no snapshot {remote.id[:8]} of share {share} from host "
                              f"{self.node}", "missing")
        args = ["restore", remote.id, "--target", str(target)]
        for path in wanted or ():
            args += ["--include", "/" + _GLOB_SPECIAL.sub(r"\\\1", str(path))]
        result = self._run_unlocked(args, budget)
        if not result.ok:
            raise self._failure(f"restore of {remote.id[:8]}", result)
        return _check_restored(target, wanted, remote)

    def forget(self, share: str, keep: Mapping[str, int], timeout: float) -> None:
        key, rules = _check_share(share), keep_arguments(keep)
        budget = _Budget(f"target {self.name}: forget for {share}", timeout)
        if not self._repository_exists(budget):
            return
        args = ["forget", "--prune", *self._filters(key), "--group-by", "host", *rules]
        result = self._run_unlocked(args, budget)
        if not result.ok:
            raise self._failure(f"forget --prune for {share}", result)


def _no_repository(stderr: str) -> bool:
    """restic 0.14's "there is no repository there" (as opposed to one it cannot reach)."""
    lowered = stderr.lower()
    return "unable to open config file" in lowered and any(needle in lowered for needle in _NO_REPOSITORY)


def _url_passwords(repository: str) -> list[str]:
    """The password part of a URL's user info (`rest:https://user:pw@host/`), redacted on
    its own as well: restic prints the URL with it masked, but an error from a library
    may quote it alone."""
    match = re.search(r"://[^/@:]*:([^/@]+)@", repository)
    return [match.group(1)] if match else []


def _private_dir(path: Path) -> None:
    """The cache directory (restic's cache, the tools' HOME): created 0700 if missing."""
    if not path.is_dir():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)


# ---- Proxmox Backup Server ---------------------------------------------------------------


def backup_id(share_key: str) -> str:
    """`smbgw-` + the case-folded share name, escaped into PBS's backup-id alphabet:
    bytes outside [a-z0-9.-] (and `_` itself) become `_hh`, so two names never map to
    one id. Over-long results are cut and given a hash suffix (a directory name on the
    server is at most 255 bytes)."""
    escaped = "".join(chr(byte) if chr(byte) in _BACKUP_ID_KEEP else f"_{byte:02x}"
                      for byte in share_key.encode("utf-8"))
    ident = BACKUP_ID_PREFIX + escaped
    if len(ident) > MAX_BACKUP_ID:
        digest = hashlib.sha256(share_key.encode("utf-8")).hexdigest()[:16]
        ident = f"{ident[:MAX_BACKUP_ID - 18]}-h{digest}"
    return ident


def pbs_time(when: datetime) -> str:
    """PBS's snapshot time form (BACKUP_TIME_RE), UTC to the second."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_pbs_snapshots(text: str, group_id: str) -> list[RemoteSnapshot]:
    """`proxmox-backup-client snapshot list GROUP --output-format json`: a list of
    SnapshotListItem (backup-type, backup-id, backup-time as Unix seconds, files, size,
    owner, protected, ...). Unfinished snapshots (no index.json.blob, a backup that died)
    are left out; anything malformed is reason "garbage"."""
    found: list[RemoteSnapshot] = []
    for item in _json_objects(text, "snapshot list"):
        kind, ident, stamp, files = (item.get("backup-type"), item.get("backup-id"), item.get("backup-time"),
                                     item.get("files"))
        if not isinstance(kind, str) or not isinstance(ident, str) or isinstance(stamp, bool) \
                or not isinstance(stamp, int) or not 0 < stamp < 1 << 40 or not isinstance(files, list):
            raise TargetError(f"snapshot list: unreadable entry {json.dumps(item)[:160]}", "garbage")
        if kind != "host" or ident != group_id:
            continue
        names = [entry.get("filename") if isinstance(entry, dict) else entry for entry in files]
        if "index.json.blob" not in names:
            continue
        when = datetime.fromtimestamp(stamp, UTC)
        found.append(RemoteSnapshot(f"host/{ident}/{pbs_time(when)}", when, name_at(when)))
    found.sort(key=lambda snap: snap.time)
    return found


class PbsTarget:
    """A datastore (and namespace) on a Proxmox Backup Server; see the module docstring."""

    kind = "pbs"

    def __init__(self, name: str, repository: str, namespace: str | None, fingerprint: str | None,
                 runner: Runner, password: Path, node: str, cache_dir: Path) -> None:
        self.name = name
        self.repository = repository
        self.namespace = namespace
        self.fingerprint = fingerprint
        self.runner = runner
        self.password = password
        self.node = node
        self.cache_dir = cache_dir

    def __repr__(self) -> str:
        return f"PbsTarget({self.name!r})"

    def _env(self) -> dict[str, str]:
        env = _base_env(self.cache_dir)
        env["PBS_PASSWORD_FILE"] = str(self.password)
        if self.fingerprint:
            env["PBS_FINGERPRINT"] = self.fingerprint
        return env

    def _where(self) -> list[str]:
        return ["--repository", self.repository, *(["--ns", self.namespace] if self.namespace else [])]

    def _run(self, args: Sequence[str], budget: _Budget, max_output: int = MAX_OUTPUT) -> Completed:
        env = self._env()
        argv = [_tool("proxmox-backup-client", env["PATH"]), *args]
        _private_dir(self.cache_dir)
        try:
            return self.runner.run(argv, timeout=budget.left(), check=False, env=env, max_output=max_output)
        except CommandError as exc:
            raise _not_run(f"target {self.name}: proxmox-backup-client {args[0]}", exc) from None

    def _failure(self, what: str, result: Completed) -> TargetError:
        reason = _classify(result.stderr)
        hint = {"password": " (the password file does not log in to the server)",
                "mismatch": " (the server's certificate is not the one `fingerprint` names)"}
        return TargetError(f"target {self.name}: {what} failed{hint.get(reason, '')}: {_tail(result)}", reason)

    def backup(self, share: str, source: Path, snapshot: str, when: datetime, timeout: float) -> RemoteSnapshot:
        key, name, utc = _check_share(share), _check_snapshot_name(snapshot), _check_when(when)
        source = _check_source(source)
        stamp = int(utc.timestamp())
        moment = datetime.fromtimestamp(stamp, UTC)
        if time_of(name) != moment:
            raise TargetError(f"target {self.name}: snapshot {name} is not named after its time {pbs_time(moment)} "
                              f"({name_at(moment)}); PBS keeps only the time, so it could not be told apart",
                              "mismatch")
        budget = _Budget(f"target {self.name}: backup of {share} snapshot {name}", timeout)
        group = backup_id(key)
        result = self._run(["backup", f"{ARCHIVE}.pxar:{source}", *self._where(), "--backup-type", "host",
                            "--backup-id", group, "--backup-time", str(stamp)], budget)
        if not result.ok:
            raise self._failure(f"backup of {share} snapshot {name}", result)
        return RemoteSnapshot(f"host/{group}/{pbs_time(moment)}", moment, name)

    def _list(self, key: str, budget: _Budget) -> list[RemoteSnapshot]:
        group = backup_id(key)
        result = self._run(["snapshot", "list", f"host/{group}", "--output-format", "json", *self._where()],
                           budget, max_output=MAX_LIST_OUTPUT)
        if not result.ok:
            raise self._failure("snapshot list", result)
        return parse_pbs_snapshots(result.stdout, group)

    def snapshots(self, share: str, timeout: float) -> list[RemoteSnapshot]:
        key = _check_share(share)
        return self._list(key, _Budget(f"target {self.name}: listing {share}", timeout))

    def restore(self, share: str, remote: RemoteSnapshot, files: Sequence[str] | None, into: Path,
                timeout: float) -> Path:
        key, wanted = _check_share(share), _relative_files(files)
        target = _restore_target(into, remote)
        group = backup_id(key)
        prefix = f"host/{group}/"
        if not remote.id.startswith(prefix) or not _PBS_TIME.fullmatch(remote.id[len(prefix):]):
            raise TargetError(f"{remote.id!r} is not a snapshot of share {share} on target {self.name}", "mismatch")
        budget = _Budget(f"target {self.name}: restore of {share} snapshot {remote.snapshot}", timeout)
        args = ["restore", remote.id, f"{ARCHIVE}.pxar", str(target), *self._where()]
        patterns = [arg for path in wanted or () for arg in ("--pattern", "/" + _GLOB_SPECIAL.sub(r"\\\1", str(path)))]
        result = self._run([*args, *patterns], budget)
        if not result.ok and patterns and "'pattern'" in result.stderr and "additional properties" in result.stderr:
            # A client before 3.3 has no --pattern: restore everything (a superset).
            with contextlib.suppress(OSError):
                target.rmdir()
            result = self._run(args, budget)
        if not result.ok:
            raise self._failure(f"restore of {remote.id}", result)
        return _check_restored(target, wanted, remote)

    def forget(self, share: str, keep: Mapping[str, int], timeout: float) -> None:
        key, rules = _check_share(share), keep_arguments(keep)
        budget = _Budget(f"target {self.name}: prune for {share}", timeout)
        args = ["prune", f"host/{backup_id(key)}", *rules]
        result = self._run([*args, "--output-format", "json", *self._where()], budget)
        if not result.ok:
            raise self._failure(f"prune for {share}", result)


# ---- making a target from agent.toml -------------------------------------------------------


def _setting(settings: Mapping[str, Any], key: str, name: str, required: bool = False) -> str | None:
    value = settings.get(key)
    if value is None:
        if required:
            raise TargetError(f"target {name}: `{key}` is missing", "config")
        return None
    if not isinstance(value, str) or not value or any(c in value for c in "\0\n\r"):
        raise TargetError(f"target {name}: `{key}` must be a non-empty one-line string", "config")
    return value


def make_target(name: str, settings: Mapping[str, Any], runner: Runner, password: Path, node: str,
                cache_dir: Path, host: Callable[[str], Path] | None = None) -> Target:
    """A target from its `[backup.targets.NAME]` table (as `table.parse_agent_table` gives
    it, or raw); `password` is what `password_path` returned, `cache_dir` a directory of
    the agent's own for this target (restic's cache, the tools' HOME). `host` (Paths.host)
    maps a local restic repository under the --root sandbox."""
    kind = settings.get("type")
    if kind not in TYPES:
        raise TargetError(f"target {name}: type must be one of {', '.join(TYPES)}, not {kind!r}", "config")
    if not isinstance(node, str) or not _NODE.fullmatch(node):
        raise TargetError(f"target {name}: {node!r} is not a node name", "config")
    repository = _setting(settings, "repository", name, required=True)
    assert repository is not None
    if settings.get("keep") is not None:
        keep_rules(settings["keep"])
    if kind == "restic":
        local = _local_repository(repository)
        if local is not None and host is not None:
            repository = str(host(local))
        return ResticTarget(name, repository, runner, password, node, cache_dir)
    if not _PBS_REPOSITORY.fullmatch(repository) or len(repository) > 256:
        raise TargetError(f"target {name}: {repository!r} is not a PBS repository "
                          "([[user@realm!token@]host[:port]:]datastore)", "config")
    namespace = _setting(settings, "namespace", name)
    if namespace is not None and (not _NAMESPACE.fullmatch(namespace) or len(namespace) > 256):
        raise TargetError(f"target {name}: {namespace!r} is not a PBS namespace (e.g. pve1 or pve1/shares)",
                          "config")
    fingerprint = _setting(settings, "fingerprint", name)
    if fingerprint is not None and not _FINGERPRINT.fullmatch(fingerprint):
        raise TargetError(f"target {name}: fingerprint must be the certificate's SHA-256 fingerprint, 32 "
                          "hex bytes separated by ':'", "config")
    return PbsTarget(name, repository, namespace, fingerprint, runner, password, node, cache_dir)

"""A vzdump hook script: snapshot the shares a guest serves just before vzdump backs it up.

A share of `mode = "lxc"` or `"vm"` is served by a guest, and its data usually lives
outside that guest (a bind mount, a dataset on the node). vzdump copies the guest, not
that data: without a snapshot of the share taken at the same moment, a restore would
bring back the guest of one night with the share's files of another. With this hook,
`backup-start` of each guest takes `smbgwctl snapshot SHARE` for every share the guest
serves, so the share's data as of the backup's start is there next to the guest's
backup (and is sent off-host by `[backup] target` if the share has one).

How vzdump calls a hook, as checked against Proxmox's own example and code: github
proxmox/pve-manager at commit 14a22df35955 (2026-08-21, version 9.2.11), files
`vzdump-hook-script.pl` (last changed in 138cae897ae9; installed on a node as
/usr/share/doc/pve-manager/examples/vzdump-hook-script.pl), `PVE/VZDump.pm`
(`sub run_hook_script` and its callers), `configs/vzdump.conf` (`script: FILENAME`) and
`PVE/API2/Backup.pm` (only root@pam may set `script` on a backup job):

- `SCRIPT PHASE` for the phases of the whole job: `job-init` (since pve-manager 7.1-11),
  `job-start`, `job-end`, `job-abort`;
- `SCRIPT PHASE MODE VMID` for the phases of one guest: `backup-start`, `pre-stop`,
  `pre-restart`, `post-restart`, `backup-end`, `backup-abort`, `log-end`; MODE is
  `stop`, `suspend` or `snapshot`. `backup-start` comes before vzdump stops, suspends or
  snapshots the guest, in every mode;
- the environment is *emptied* (`local %ENV`) and then holds only `STOREID`, `DUMPDIR`
  (each when known), and for the guest phases `VMTYPE` (`lxc` or `qemu`), `HOSTNAME`
  (the guest's), `TARGET` (`backup-end` only), `LOGFILE` (`log-end` only); pve-common's
  `PVE::Cmd::run` adds `LC_ALL=C`. There is no PATH: smbgwctl is looked up in the
  usual system directories, and settings such as
  SMBGW_VZDUMP_HOOK_STRICT reach the hook only through its wrapper script (which reads
  /etc/default/smbgw-vzdump-hook);
- what the script prints, on stdout and stderr alike, goes to the task log line by line
  (`INFO: ...`, through run_command's logfunc); a non-zero exit makes vzdump fail that
  phase: at `backup-start` the guest's backup fails (`backup-abort` follows) and the job
  goes on with the next guest.

Which shares a guest serves: share files (shares.d, or `[agent] shares_dir`) of mode
`lxc` with `[lxc] vmid = VMID` (VMTYPE lxc) or of mode `vm` with `[vm] vmid = VMID`
(VMTYPE qemu), and the shares the mode plugins list under that VMID in status.json
(`plugins.mode_lxc.shares.NAME.vmid`, `plugins.mode_vm.shares.NAME.vmid`: VMIDs the
plugins allocate themselves are in no share file). A share without `[backup]` has no
snapshots to take and is skipped; so is one whose `node` is another node's.

Strict by default, and deliberately so: when a snapshot fails at `backup-start`, the
hook exits 1 and vzdump fails that guest's backup. A backup of the guest without its
share's data as of the same moment is an inconsistent backup that looks like a good one;
a failed backup is visible (the task, the notification mail) and is retried the next
night. An administrator who prefers the guest backed up anyway sets
`SMBGW_VZDUMP_HOOK_STRICT=0`: the failure is then only a warning in the task log.

Every other phase does nothing and exits 0, and so does an unknown phase (a phase a
later Proxmox adds must not fail every backup). Bad input never ends in a traceback:
one line saying what is wrong, and exit 2 when `backup-start` cannot tell which guest it
is for (in strict mode). An unreadable share file is a warning in the task log, not a
failure: the agent reports it too (`smbgwctl status`), and failing the backup of every
guest on the node for one broken file would do more harm than the one snapshot it might
stand for (a share the mode plugins list in status.json is still found there).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from smbgw_agent.model.config import default_node_name
from smbgw_agent.model.errors import FieldError
from smbgw_agent.model.paths import DEFAULT_SHARES_DIR, Paths
from smbgw_agent.model.printable import printable
from smbgw_agent.model.smbvalues import check_share_name
from smbgw_agent.model.tomlsource import InputFileError, read_toml
from smbgw_agent.model.units import parse_duration
from smbgw_agent.reconcile.scanner import is_share_file_name

PROG = "smbgw-vzdump-hook"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
JOB_PHASES = ("job-init", "job-start", "job-end", "job-abort")
GUEST_PHASES = ("backup-start", "pre-stop", "pre-restart", "post-restart", "backup-end", "backup-abort", "log-end")
START = "backup-start"
# VMTYPE -> the share mode (and its table) whose guests are of that type.
MODE_OF_VMTYPE = {"lxc": "lxc", "qemu": "vm"}
STATUS_PLUGIN_OF_MODE = {"lxc": "mode_lxc", "vm": "mode_vm"}
VMID = re.compile(r"[1-9][0-9]{2,8}")  # PVE's pve-vmid: 100 to 999999999
# vzdump empties the environment: where smbgwctl is on a Debian node (/usr/sbin) and
# elsewhere, searched after the caller's own PATH if it has one.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STRICT_ENV = "SMBGW_VZDUMP_HOOK_STRICT"
DEFAULT_SNAPSHOT_TIMEOUT = 600.0  # [backup] snapshot_timeout's default (table.py)
TIMEOUT_SLACK = 60.0  # smbgwctl waits for the job a little longer than the job may run
BUSY_RETRY = 5.0  # seconds between attempts while a scheduled snapshot of the share runs
ALREADY_RUNNING = "is already running"  # the agent's refusal while the job runs (reconciler.start_command)
NO_BACKUP_TABLE = "has no [backup] table"  # the backup plugin's refusal (BackupPlugin._share)
MAX_STATUS_BYTES = 64 << 20  # as smbgwctl: status.json of 20,000 shares is a few MB
USAGE = f"usage: {PROG} [--root DIR] PHASE [MODE VMID]  (called by vzdump: script: in /etc/vzdump.conf)"


@dataclass(frozen=True)
class Completed:
    """What a command did: its exit status and output (text)."""

    returncode: int
    stdout: str = ""
    stderr: str = ""


# argv, time limit in seconds, environment -> what it did. Injected by tests.
Runner = Callable[[Sequence[str], float, Mapping[str, str]], Completed]


def run_command(argv: Sequence[str], timeout: float, env: Mapping[str, str]) -> Completed:
    """Run `argv` (never through a shell) with a time limit; a command that cannot be
    started or does not finish is a failed command, not an exception."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, errors="replace", timeout=timeout,
                              env=dict(env), stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return Completed(124, "", f"{argv[0]} did not finish within {timeout:g} s")
    except OSError as exc:
        return Completed(127, "", f"cannot run {argv[0]}: {exc.strerror or exc}")
    return Completed(done.returncode, done.stdout, done.stderr)


class UsageError(Exception):
    """The hook was called in a way vzdump never calls it."""


def info(text: str) -> None:
    """A line for the task log (vzdump logs the hook's output as it comes)."""
    print(f"{PROG}: {printable(text)}", flush=True)


def warn(text: str) -> None:
    print(f"{PROG}: {printable(text)}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Settings:
    """What the hook needs from agent.toml."""

    shares_dir: Path
    node: str
    snapshot_timeout: float


@dataclass(frozen=True)
class ShareFile:
    """What a share file says about who serves it."""

    name: str
    file: Path
    mode: str
    vmid: int | None  # [lxc] vmid or [vm] vmid, for those modes
    node: str | None
    backup: bool


@dataclass(frozen=True)
class Wanted:
    """A share to snapshot, and where the hook learnt that it is the guest's."""

    name: str
    source: str


def parse_args(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """`--root DIR` (or `--root=DIR`) before the words vzdump passes; UsageError otherwise."""
    root: str | None = None
    items = list(argv)
    index = 0
    while index < len(items):
        item = items[index]
        index += 1
        if item == "--":
            return root, _words(items[index:])
        if item == "--root":
            if index >= len(items) or not items[index]:
                raise UsageError("--root needs a directory")
            root = items[index]
            index += 1
        elif item.startswith("--root="):
            root = item.partition("=")[2]
            if not root:
                raise UsageError("--root needs a directory")
        elif item.startswith("-"):
            raise UsageError(f"unknown option {item[:40]!r}")
        else:
            return root, _words(items[index - 1:])
    return root, _words([])


def _words(words: list[str]) -> list[str]:
    if not words:
        raise UsageError("no phase given")
    return words


def strict_from(environ: Mapping[str, str]) -> bool:
    """SMBGW_VZDUMP_HOOK_STRICT: 0/false/no/off only warn; anything else is strict."""
    value = environ.get(STRICT_ENV, "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value not in ("", "1", "true", "yes", "on"):
        warn(f"{STRICT_ENV}={value[:40]!r} is neither 0 nor 1; staying strict")
    return True


def vmid_of(value: object) -> int | None:
    """A VMID from a command line word or a TOML/JSON value (an integer, or its digits)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 100 <= value <= 999_999_999 else None
    if isinstance(value, str) and VMID.fullmatch(value):
        return int(value)
    return None


def load_settings(paths: Paths) -> Settings:
    """shares_dir, node and [backup] snapshot_timeout from agent.toml; the defaults (with
    a warning) when it cannot be read, as the agent would not run with it either."""
    shares_dir, node, timeout = DEFAULT_SHARES_DIR, default_node_name(), DEFAULT_SNAPSHOT_TIMEOUT
    config = paths.agent_config
    if not os.path.lexists(config):
        return Settings(paths.host(shares_dir), node, timeout)
    try:
        data = read_toml(config).data
    except InputFileError as exc:
        warn(f"{exc}; using the default shares directory {shares_dir}")
        return Settings(paths.host(shares_dir), node, timeout)
    agent = data.get("agent")
    if isinstance(agent, dict):
        value = agent.get("shares_dir")
        if isinstance(value, str) and value.startswith("/") and "\x00" not in value:
            shares_dir = value
        elif value is not None:
            warn(f"{config}: agent.shares_dir is not an absolute path; using {shares_dir}")
        if isinstance(agent.get("node"), str) and agent["node"]:
            node = agent["node"]
    backup = data.get("backup")
    if isinstance(backup, dict) and "snapshot_timeout" in backup:
        try:
            timeout = parse_duration(backup["snapshot_timeout"], minimum=5.0, maximum=86400.0)
        except FieldError as exc:
            warn(f"{config}: backup.snapshot_timeout: {exc}; waiting up to {timeout:g} s")
    return Settings(paths.host(shares_dir), node, timeout)


def read_share_files(directory: Path) -> list[ShareFile]:
    """Every share file that can be read; a warning for each that cannot."""
    try:
        names = sorted(entry.name for entry in os.scandir(directory))
    except FileNotFoundError:
        return []
    except OSError as exc:
        warn(f"cannot list {directory}: {exc.strerror or exc}; no share files read")
        return []
    found = []
    for file_name in names:
        if not is_share_file_name(file_name):
            continue
        path = directory / file_name
        try:
            data = read_toml(path).data
        except InputFileError as exc:
            warn(f"skipping {exc} (cannot tell which guest serves it)")
            continue
        name = data.get("name", file_name[: -len(".toml")])
        try:
            if not isinstance(name, str):
                raise FieldError("the share name is not a string")
            check_share_name(name)
        except FieldError as exc:
            warn(f"skipping {path}: {exc}")
            continue
        mode = data.get("mode", "native")
        mode = mode if isinstance(mode, str) else ""
        table = data.get(mode) if mode in STATUS_PLUGIN_OF_MODE else None
        vmid = vmid_of(table.get("vmid")) if isinstance(table, dict) else None
        node = data.get("node") if isinstance(data.get("node"), str) else None
        found.append(ShareFile(name, path, mode, vmid, node, isinstance(data.get("backup"), dict)))
    return found


def status_shares(paths: Paths, modes: Sequence[str], vmid: int) -> list[str]:
    """Shares the mode plugins list for `vmid` in status.json (none if it is missing)."""
    file = paths.status_file
    try:
        with open(file, "rb") as handle:
            raw = handle.read(MAX_STATUS_BYTES + 1)
    except FileNotFoundError:
        return []
    except OSError as exc:
        warn(f"cannot read {file}: {exc.strerror or exc}")
        return []
    if len(raw) > MAX_STATUS_BYTES:
        warn(f"{file} is larger than {MAX_STATUS_BYTES} bytes: not reading it")
        return []
    try:
        status = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        warn(f"{file} is not valid JSON ({str(exc)[:80]}): not reading it")
        return []
    found = []
    plugins = status.get("plugins") if isinstance(status, dict) else None
    for mode in modes:
        section = plugins.get(STATUS_PLUGIN_OF_MODE[mode]) if isinstance(plugins, dict) else None
        shares = section.get("shares") if isinstance(section, dict) else None
        if not isinstance(shares, dict):
            continue
        for name, entry in sorted(shares.items()):
            if not isinstance(entry, dict) or vmid_of(entry.get("vmid")) != vmid:
                continue
            try:
                found.append(check_share_name(name))
            except FieldError as exc:
                warn(f"{file}: skipping {exc}")
    return found


def shares_of_guest(paths: Paths, settings: Settings, modes: Sequence[str], vmid: int) -> list[Wanted]:
    """The shares to snapshot for guest `vmid`, each once, in a stable order."""
    files = read_share_files(settings.shares_dir)
    by_name = {f.name.casefold(): f for f in files}
    wanted: dict[str, Wanted] = {}
    for file in files:
        if file.mode in modes and file.vmid == vmid:
            wanted.setdefault(file.name.casefold(), Wanted(file.name, f"{file.file.name}: [{file.mode}] vmid"))
    for name in status_shares(paths, modes, vmid):
        wanted.setdefault(name.casefold(), Wanted(name, "status.json"))
    chosen = []
    for key, share in sorted(wanted.items()):
        known = by_name.get(key)
        if known is not None and known.node is not None and known.node != settings.node:
            info(f"share {share.name} of guest {vmid} is served by node {known.node}, not this node "
                 f"({settings.node}): no snapshot here")
        elif known is not None and not known.backup:
            info(f"share {share.name} of guest {vmid} has no [backup] table: no snapshot to take")
        else:
            chosen.append(share)
    return chosen


def one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


@dataclass
class Hook:
    """One call of the hook: where it looks (`root`), how strict it is, and how it runs
    smbgwctl and waits (injected by tests)."""

    root: str | None
    environ: Mapping[str, str]
    strict: bool = True
    runner: Runner = run_command
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def ctl(self) -> tuple[list[str], dict[str, str]]:
        """smbgwctl (the caller's PATH first, then the system directories; this Python's
        own `-m smbgw_agent.cli` if there is none) and the environment to run it in."""
        search = ":".join(part for part in (self.environ.get("PATH"), SYSTEM_PATH) if part)
        found = shutil.which("smbgwctl", path=search)
        argv = [found] if found else [sys.executable, "-m", "smbgw_agent.cli"]
        if self.root is not None:
            argv += ["--root", self.root]
        return argv, {**self.environ, "PATH": search}

    def snapshot(self, share: Wanted, vmid: int, settings: Settings) -> bool:
        """`smbgwctl snapshot SHARE`, retried while a scheduled snapshot of the share runs
        (it ends within snapshot_timeout). True if a snapshot was taken, or there is none
        to take."""
        ctl, env = self.ctl()
        deadline = self.clock() + settings.snapshot_timeout
        while True:
            done = self.runner([*ctl, "snapshot", share.name], settings.snapshot_timeout + TIMEOUT_SLACK, env)
            if done.returncode == 0:
                info(f"guest {vmid}: {one_line(done.stdout) or f'snapshot of share {share.name} taken'}")
                return True
            if NO_BACKUP_TABLE in done.stderr and share.source == "status.json":
                info(f"share {share.name} of guest {vmid} has no [backup] table: no snapshot to take")
                return True
            if ALREADY_RUNNING in done.stderr and self.clock() + BUSY_RETRY < deadline:
                self.sleep(BUSY_RETRY)
                continue
            said = one_line(done.stderr) or one_line(done.stdout) or f"smbgwctl exited with {done.returncode}"
            warn(f"guest {vmid}: share {share.name} ({share.source}): snapshot FAILED: {said[:2000]}")
            return False

    def backup_start(self, words: Sequence[str]) -> int:
        if len(words) < 3:
            raise UsageError(f"{START} needs MODE and VMID after it (vzdump passes them)")
        vmid = vmid_of(words[2])
        if vmid is None:
            raise UsageError(f"{words[2][:40]!r} is not a VMID (100 to 999999999)")
        vmtype = self.environ.get("VMTYPE", "")
        if vmtype in MODE_OF_VMTYPE:
            modes: tuple[str, ...] = (MODE_OF_VMTYPE[vmtype],)
        elif not vmtype:
            modes = tuple(MODE_OF_VMTYPE.values())  # run by hand: the VMID alone names the guest
        else:
            info(f"guest {vmid} is of type {vmtype[:40]!r}: smbgw-agent serves shares from lxc and qemu "
                 "guests only; nothing to do")
            return EXIT_OK
        paths = Paths.under(self.root)
        settings = load_settings(paths)
        failed = [share.name for share in shares_of_guest(paths, settings, modes, vmid)
                  if not self.snapshot(share, vmid, settings)]
        if not failed:
            return EXIT_OK
        names = ", ".join(failed)
        if self.strict:
            warn(f"guest {vmid}: no snapshot of share(s) {names}: failing this guest's backup, which would not "
                 f"match its shares' data ({STRICT_ENV}=0 in /etc/default/{PROG} backs it up anyway)")
            return EXIT_FAILED
        warn(f"guest {vmid}: no snapshot of share(s) {names}; backing the guest up anyway ({STRICT_ENV}=0)")
        return EXIT_OK


def main(argv: Sequence[str], environ: Mapping[str, str], *, runner: Runner = run_command,
         sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> int:
    """Run the hook for vzdump's `argv` (without the program name) and environment:
    the exit status vzdump acts on."""
    if list(argv[:1]) in (["-h"], ["--help"]):
        print(USAGE)
        return EXIT_OK
    try:
        root, words = parse_args(argv)
    except UsageError as exc:
        warn(f"{exc}; {USAGE}")
        return EXIT_USAGE
    phase = words[0]
    if phase != START:
        if phase not in JOB_PHASES and phase not in GUEST_PHASES:
            warn(f"unknown vzdump phase {phase[:60]!r}: nothing to do")
        return EXIT_OK  # only backup-start acts, and only it can fail a backup
    hook = Hook(root, environ, strict_from(environ), runner, sleep, clock)
    try:
        return hook.backup_start(words)
    except UsageError as exc:
        warn(f"{exc}; {USAGE}")
        return EXIT_USAGE if hook.strict else EXIT_OK
    except Exception as exc:  # never a traceback in the task log: one line
        warn(f"internal error: {type(exc).__name__}: {str(exc)[:200]}")
        return EXIT_FAILED if hook.strict else EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], os.environ))

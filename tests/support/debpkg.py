"""The Debian package under test: building it, installing it on a systemd host, reaching it.

Why this shape:

* The .deb is built by the project's own ``make deb`` (dpkg-buildpackage in a copy of
  the tree, output in build/deb/), so the tests exercise exactly what CI and a release
  produce. It is rebuilt whenever a packaged source is newer than the .deb, and builders
  in concurrent test processes serialise on a lock file.
* The container image already holds samba and Debian's python3-* libraries (debootstrap
  fetches them on the host while it builds the image), so ``apt-get install ./x.deb``
  inside the container resolves every dependency from what is installed: the container
  has no network (apt says "Need to get 0 B"), and the versions used are Debian's own.
  (``--no-download`` cannot be used: apt 2.6 then fails on a local .deb with "Internal
  Error, Pathname to install is not absolute".)
* "From outside the container" means from another network namespace: the test creates a
  server namespace (the container's network) and a client namespace joined by a veth
  pair, both its own, with addresses that exist only inside them. Nothing is added to the
  host's root namespace; deleting the two namespaces removes the veth pair as well.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tests.support.nspawn import DEFAULT_PACKAGES, SystemdContainer

REPO = Path(__file__).resolve().parents[2]
DEB_DIR = REPO / "build" / "deb"
PACKAGE = "smbgw-agent"
UNIT = "smbgw-agent.service"
UNIT_SOURCE = REPO / "systemd" / UNIT
# Everything that ends up in the package; a change to any of it makes the .deb stale.
PACKAGED_SOURCES: tuple[str, ...] = (
    "smbgw_agent", "plugins", "debian", "systemd", "docs", "etc", "pyproject.toml", "README.md",
)
# What the package depends on, already in the image, so apt needs no download.
CONTAINER_PACKAGES: tuple[str, ...] = (
    *DEFAULT_PACKAGES,
    "python3-pluggy",
    "python3-prometheus-client",
    "python3-pydbus",
    "python3-gi",
    "python3-pyroute2",
    "python3-watchdog",
    "python3-jinja2",
)
CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
T = TypeVar("T")


class PackagingError(RuntimeError):
    """The package could not be built, installed or reached."""


# --------------------------------------------------------------------------- building


def deb_path() -> Path | None:
    found = sorted(DEB_DIR.glob(f"{PACKAGE}_*_all.deb"))
    return found[-1] if found else None


def changes_path() -> Path | None:
    found = sorted(DEB_DIR.glob(f"{PACKAGE}_*.changes"))
    return found[-1] if found else None


def _newest_source_mtime() -> float:
    newest = 0.0
    for name in PACKAGED_SOURCES:
        top = REPO / name
        if top.is_file():
            newest = max(newest, top.stat().st_mtime)
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if d != "__pycache__" and not d.startswith(".")]
            for filename in filenames:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.stat(os.path.join(dirpath, filename)).st_mtime)
    return newest


def deb_is_current() -> bool:
    deb, changes = deb_path(), changes_path()
    return (
        deb is not None
        and changes is not None
        and deb.stat().st_mtime >= _newest_source_mtime()
    )


@dataclass(frozen=True)
class BuildResult:
    deb: Path
    changes: Path
    seconds: float  # 0.0 when an up-to-date package was reused
    log: str


def ensure_deb(timeout: float = 900.0) -> BuildResult:
    """The built package; `make deb` first if there is none or a source is newer."""
    DEB_DIR.parent.mkdir(parents=True, exist_ok=True)
    lock = DEB_DIR.parent / ".deb.lock"
    with lock.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            if deb_is_current():
                deb, changes = deb_path(), changes_path()
                assert deb is not None and changes is not None
                return BuildResult(deb, changes, 0.0, "")
            started = time.monotonic()
            env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
            proc = subprocess.run(
                ["make", "-C", str(REPO), "--no-print-directory", "deb"],
                capture_output=True, text=True, timeout=timeout, env=env, check=False,
                stdin=subprocess.DEVNULL,
            )
            log = proc.stdout + proc.stderr
            deb, changes = deb_path(), changes_path()
            if proc.returncode != 0 or deb is None or changes is None:
                raise PackagingError(f"`make deb` failed ({proc.returncode}):\n{log[-6000:]}")
            return BuildResult(deb, changes, time.monotonic() - started, log)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def deb_field(deb: Path, name: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True
    ).stdout.strip()


def deb_contents(deb: Path) -> list[str]:
    """Paths in the package, as ``/etc/...`` (directories end with ``/``)."""
    out = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    paths = []
    for line in out.splitlines():
        path = line.split(None, 5)[5].split(" -> ")[0]
        paths.append(path.removeprefix("."))
    return paths


@contextlib.contextmanager
def extracted(deb: Path) -> Iterator[Path]:
    """The package's files unpacked into a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="smbgw-deb-") as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        yield Path(tmp)


# --------------------------------------------------------------------------- static checks


@dataclass(frozen=True)
class Checked:
    argv: list[str]
    returncode: int
    output: str


def run_lintian(changes: Path) -> Checked:
    """Every tag at every level (incl. pedantic and experimental), failing on W/E."""
    argv = [
        "lintian", "--fail-on", "error,warning", "--info", "--pedantic", "--display-experimental",
        str(changes),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=_clean_env())
    return Checked(argv, proc.returncode, proc.stdout + proc.stderr)


def lintian_overrides(changes: Path) -> Checked:
    """The overridden tags with the explanations written above them (informational)."""
    argv = ["lintian", "--show-overrides", str(changes)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=_clean_env())
    return Checked(argv, proc.returncode, proc.stdout + proc.stderr)


def verify_unit(deb: Path) -> Checked:
    """`systemd-analyze verify` of the unit as shipped, with the package's files in place.

    The package's /usr (the executables, man pages) is overlaid on the host's /usr in a
    private mount namespace, so ExecStart=, ExecReload= and the man: links are checked
    against real files while the host itself is never touched.
    """
    with extracted(deb) as root:
        unit = root / "usr/lib/systemd/system" / UNIT
        script = 'mount -t overlay overlay -o "lowerdir=$1/usr:/usr" /usr && shift && exec "$@"'
        argv = [
            "unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-ec", script, "sh",
            str(root), "systemd-analyze", "verify", str(unit),
        ]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=_clean_env())
    return Checked(argv, proc.returncode, proc.stdout + proc.stderr)


_EXPOSURE = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)")


def security_exposure(unit_file: Path) -> tuple[float, Checked]:
    argv = ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit_file)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=_clean_env())
    out = proc.stdout + proc.stderr
    match = _EXPOSURE.search(out)
    if not match:
        raise PackagingError(f"no exposure level in the output of {' '.join(argv)}:\n{out}")
    return float(match.group(1)), Checked(argv, proc.returncode, out)


def _clean_env() -> dict[str, str]:
    return {"PATH": CLEAN_PATH, "LANG": "C.UTF-8", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}


# --------------------------------------------------------------------------- installing


def install_deb(container: SystemdContainer, deb: Path, *, reinstall: bool = False) -> str:
    """Copy the .deb into the container and install it with apt, offline."""
    inside = f"/root/{deb.name}"
    container.write_file(inside, deb.read_bytes())
    argv = [
        "apt-get", "install", "--yes", "-o", "Dpkg::Options::=--force-confold",
        *(["--reinstall"] if reinstall else []), inside,
    ]
    proc = container.run(["env", "DEBIAN_FRONTEND=noninteractive", *argv], check=False, timeout=300)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise PackagingError(f"{' '.join(argv)} failed ({proc.returncode}):\n{out[-6000:]}")
    return out


# --------------------------------------------------------------------------- units


def unit_properties(container: SystemdContainer, unit: str, *names: str) -> dict[str, str]:
    out = container.run(["systemctl", "show", unit, *(f"--property={n}" for n in names)]).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def main_pid(container: SystemdContainer, unit: str = UNIT) -> int:
    return int(unit_properties(container, unit, "MainPID")["MainPID"])


def wait_for(what: str, check: Callable[[], T], timeout: float = 20.0, interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


def journal_entries(container: SystemdContainer, unit: str = UNIT) -> list[tuple[str, str]]:
    """(cursor, message) of every journal entry of ``unit``, the agent's and systemd's about it."""
    out = container.run(
        ["journalctl", "--no-pager", "-o", "json", "--output-fields=MESSAGE", "-u", unit]
    ).stdout
    entries = []
    for line in out.splitlines():
        entry = json.loads(line)
        message = entry.get("MESSAGE", "")
        if isinstance(message, list):  # not valid UTF-8: journald gives the bytes
            message = bytes(message).decode("utf-8", "replace")
        entries.append((str(entry["__CURSOR"]), str(message)))
    return entries


def journal_mark(container: SystemdContainer, unit: str = UNIT) -> frozenset[str]:
    """What is in the unit's journal now; pass it to :func:`journal` to see only what is new.

    A set of cursors rather than one cursor to read "after": journald orders entries from
    different sources (the agent's stderr stream, PID 1) by arrival, and
    ``journalctl -u UNIT --after-cursor`` was seen to skip the agent's last line before
    a restart. A set cannot miss anything.
    """
    return frozenset(cursor for cursor, _ in journal_entries(container, unit))


def journal(container: SystemdContainer, unit: str = UNIT, *, since: frozenset[str] | None = None) -> str:
    """The unit's journal messages, one per line (``journalctl -u UNIT -o cat``)."""
    return "\n".join(
        message for cursor, message in journal_entries(container, unit) if since is None or cursor not in since
    )


# --------------------------------------------------------------------------- networking


NETNS_PREFIX = "smbgwdeb"
CLIENT_ADDRESS = "10.213.7.1"
SERVER_ADDRESS = "10.213.7.2"
PREFIX_LENGTH = 30


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False, env=_clean_env())
    if check and proc.returncode != 0:
        raise PackagingError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_namespaces() -> list[str]:
    """Namespaces an earlier, killed test run of ours left behind (its pid is gone)."""
    removed = []
    listing = _ip("netns", "list", check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        match = re.fullmatch(rf"{NETNS_PREFIX}(\d+)x[0-9a-f]+[cs]", name)
        if match and not _pid_alive(int(match.group(1))):
            _ip("netns", "delete", name, check=False)
            removed.append(name)
    return removed


@dataclass
class NetPair:
    """Two namespaces of our own, joined by one veth pair; the container gets `server`."""

    client: str
    server: str
    client_address: str = CLIENT_ADDRESS
    server_address: str = SERVER_ADDRESS

    @property
    def server_netns_path(self) -> str:
        return f"/run/netns/{self.server}"

    def in_client(self, argv: Sequence[str], *, timeout: float = 60.0, check: bool = False,
                  input: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["ip", "netns", "exec", self.client, *argv], capture_output=True, text=True,
            timeout=timeout, check=False, env=_clean_env(), input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise PackagingError(f"{' '.join(argv)} in {self.client} failed ({proc.returncode}):\n"
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def popen_in_client(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[str]:
        return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
            ["ip", "netns", "exec", self.client, *argv], text=True, env=_clean_env(), **kwargs
        )


@contextlib.contextmanager
def client_server_network() -> Iterator[NetPair]:
    """Create the two namespaces and the veth pair; always delete them again."""
    remove_stale_namespaces()
    tag = f"{NETNS_PREFIX}{os.getpid()}x{uuid.uuid4().hex[:4]}"
    net = NetPair(client=f"{tag}c", server=f"{tag}s")
    created: list[str] = []
    try:
        for name in (net.client, net.server):
            _ip("netns", "add", name)
            created.append(name)
        # Created inside the namespaces directly: the host's root namespace never has them.
        _ip("-n", net.client, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", net.server)
        _ip("-n", net.client, "addr", "add", f"{net.client_address}/{PREFIX_LENGTH}", "dev", "eth0")
        _ip("-n", net.server, "addr", "add", f"{net.server_address}/{PREFIX_LENGTH}", "dev", "eth0")
        for name in (net.client, net.server):
            _ip("-n", name, "link", "set", "lo", "up")
            _ip("-n", name, "link", "set", "eth0", "up")
        yield net
    finally:
        for name in reversed(created):
            _ip("netns", "delete", name, check=False)


def smbclient_argv(net: NetPair, share: str, user: str, password: str, commands: str) -> list[str]:
    return [
        "smbclient", f"//{net.server_address}/{share}", "-U", f"{user}%{password}",
        "-m", "SMB3", "-c", commands,
    ]


def have_tools(*tools: str) -> list[str]:
    return [tool for tool in tools if shutil.which(tool, path=CLEAN_PATH) is None]

"""Throwaway Debian containers (12 "bookworm", 13 "trixie") with systemd as PID 1, for tests.

Why containers: the agent talks to a real systemd over a real D-Bus, and a test can only
prove that against the real thing. The host of the test runner has no systemd, so each test
boots its own, with ``systemd-nspawn``.

Why this shape:

* The base image is built once by debootstrap (~65 s) and reused; its directory name
  carries a hash of everything that shapes it, so a changed package list can never reuse
  a stale image. It is built in a temporary directory and renamed into place, so an
  interrupted build is never mistaken for a finished one, and builders in concurrent test
  processes serialise on a lock file instead of racing.
* Each container is an overlayfs clone (lower = base image, upper/work in a private temp
  directory), so tests cannot damage the image or each other, and booting costs ~1 s.
* The overlay is mounted inside a private mount namespace created for ``systemd-nspawn``
  alone: the host never sees the mount, and it disappears with the namespace even if the
  test runner is killed -- nothing is left to unmount.
* debootstrap runs in a private mount namespace too, for the same reason: its /proc and
  /sys mounts inside the target vanish with it, so removing a half-built tree can never
  wander into the host's /proc.
* Teardown signals only processes this module started, by pid: ``systemd-nspawn`` itself
  and, if it does not stop in time, the container's PID 1 (which takes the whole container
  PID namespace with it).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from smbgw_agent.effects.fileio import fsync_dir

DEFAULT_PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "samba",
    "smbclient",
    "python3",
    "iproute2",
    "procps",
    "libnss-myhostname",
)
SUITE = "bookworm"
MACHINES_DIR = Path("/var/lib/machines")
# Units that would fight the tests (nmbd wants a network, samba-ad-dc conflicts with smbd)
# or start work at random times (timers).  All *.timer units are masked in addition.
# Prometheus and Alertmanager are in the release-pass image for promtool and amtool only.
MASKED_UNITS: tuple[str, ...] = (
    "nmbd.service", "samba-ad-dc.service", "prometheus.service", "prometheus-alertmanager.service",
)
# Bump whenever the image preparation below changes, so old images are not reused.
_RECIPE_VERSION = "1"
_MARKER = ".smbgw-testbed-image.json"
_CONTAINER_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
}
_REQUIRED_TOOLS = ("systemd-nspawn", "debootstrap", "nsenter", "unshare", "mount")


class NspawnError(RuntimeError):
    """A container could not be built, booted or used."""


class CommandFailed(NspawnError):
    """A command inside the container exited non-zero; carries its output for the report."""

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"{' '.join(self.argv)!r} exited {returncode}\n"
            f"--- stdout ---\n{stdout[-4000:]}\n--- stderr ---\n{stderr[-4000:]}"
        )


# --------------------------------------------------------------------------- requirements


def missing_requirements() -> list[str]:
    """Why containers cannot run here (empty when they can), for a precise pytest.skip."""
    missing: list[str] = []
    if os.geteuid() != 0:
        missing.append("must run as root")
    missing.extend(f"{tool} not found" for tool in _REQUIRED_TOOLS if shutil.which(tool) is None)
    if not _overlayfs_available():
        missing.append("overlayfs not supported by this kernel")
    return missing


def _overlayfs_available() -> bool:
    def listed() -> bool:
        with contextlib.suppress(OSError):
            return any(
                line.split()[-1] == "overlay"
                for line in Path("/proc/filesystems").read_text().splitlines()
                if line.strip()
            )
        return False

    if listed():
        return True
    if shutil.which("modprobe"):
        subprocess.run(["modprobe", "-q", "overlay"], check=False, capture_output=True)
    return listed()


# --------------------------------------------------------------------------- base image


def image_key(packages: Sequence[str] = DEFAULT_PACKAGES, suite: str = SUITE, apt: Sequence[str] = ()) -> str:
    """Hash of everything that shapes the image, so a different recipe gets another dir."""
    recipe: dict[str, object] = {
        "suite": suite,
        "packages": sorted(set(packages)),
        "masked": sorted(MASKED_UNITS),
        "recipe": _RECIPE_VERSION,
    }
    if apt:
        recipe["apt"] = sorted(set(apt))
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def base_image_path(packages: Sequence[str] = DEFAULT_PACKAGES, suite: str = SUITE, apt: Sequence[str] = ()) -> Path:
    return MACHINES_DIR / f"smbgw-base-{image_key(packages, suite, apt)}"


def _image_complete(path: Path) -> bool:
    return (path / _MARKER).is_file() and (path / "usr/lib/systemd/systemd").exists()


def ensure_base_image(
    packages: Sequence[str] = DEFAULT_PACKAGES,
    suite: str = SUITE,
    *,
    apt: Sequence[str] = (),
    mirror: str | None = None,
    timeout: float = 1800.0,
) -> Path:
    """Return the base image for ``packages``, building it first if it does not exist yet.

    ``apt`` are installed with apt-get after debootstrap, in the image: debootstrap's own
    dependency handling fails to configure some package sets (lintian's Perl modules on
    trixie), apt's does not.

    Safe against concurrent callers (a lock file serialises builders; the loser finds the
    finished image) and against interrupted builds (only a complete tree is renamed into
    its final name; leftovers of a dead build are removed under the lock).
    """
    final = base_image_path(packages, suite, apt)
    if _image_complete(final):
        return final
    MACHINES_DIR.mkdir(parents=True, exist_ok=True)
    with _locked(MACHINES_DIR / f".{final.name}.lock", timeout) as lock_fd:
        if _image_complete(final):
            return final
        for stale in MACHINES_DIR.glob(f".{final.name}.tmp-*"):
            _remove_tree(stale)
        if final.exists():  # ours by name but without the marker: never trust it
            _remove_tree(final)
        tmp = MACHINES_DIR / f".{final.name}.tmp-{os.getpid()}"
        log = MACHINES_DIR / f".{final.name}.build.log"
        try:
            _debootstrap(tmp, packages, suite, mirror or host_mirror(suite), log, timeout, lock_fd)
            if apt:
                _apt_install(tmp, apt, log, timeout)
            _prepare_image(tmp)
            (tmp / _MARKER).write_text(
                json.dumps(
                    {"suite": suite, "packages": sorted(set(packages)), "built": time.time()},
                    indent=2,
                )
                + "\n"
            )
            os.sync()  # a power cut must not leave a renamed-but-empty image behind
            os.rename(tmp, final)
            fsync_dir(MACHINES_DIR)
        except BaseException:
            _remove_tree(tmp)
            raise
    return final


def host_mirror(suite: str, apt_dir: Path = Path("/etc/apt")) -> str | None:
    """The Debian archive this machine's own apt uses for `suite`'s family, or None
    (debootstrap then uses its built-in default). Read from deb822 `*.sources` files and
    the one-line `sources.list` format; no archive host name lives in this repository."""
    family = {"bookworm", "trixie", "bullseye", "sid", "testing", "stable", "oldstable"}
    candidates: list[tuple[str, list[str]]] = []
    for file in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for stanza in file.read_text(errors="replace").split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                key, sep, value = line.partition(":")
                if sep and not line.startswith((" ", "#")):
                    fields[key.strip().lower()] = value.strip()
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes").lower() != "no":
                for uri in fields.get("uris", "").split():
                    candidates.append((uri, fields.get("suites", "").split()))
    legacy = apt_dir / "sources.list"
    if legacy.exists():
        for line in legacy.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb":
                uri_index = next((i for i, p in enumerate(parts[1:], 1) if "://" in p), None)
                if uri_index is not None and uri_index + 1 < len(parts):
                    candidates.append((parts[uri_index], [parts[uri_index + 1]]))
    for uri, suites in candidates:
        if any(s in family or s == suite for s in suites) and uri.startswith(("http://", "https://", "file:")):
            return uri
    return None


@contextlib.contextmanager
def _locked(path: Path, timeout: float) -> Iterator[int]:
    """Exclusive flock on ``path``; yields the locked fd.

    The fd is handed to debootstrap as well: if this process dies mid-build, the orphaned
    debootstrap keeps holding the lock, so the next builder waits for it instead of
    deleting a tree that is still being written.
    """
    with path.open("a") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise NspawnError(f"timed out waiting for the build lock {path}") from None
                time.sleep(0.5)
        try:
            yield fh.fileno()
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _debootstrap(
    target: Path, packages: Sequence[str], suite: str, mirror: str | None, log: Path, timeout: float, lock_fd: int
) -> None:
    argv = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(sorted(set(packages)))}",
        suite,
        str(target),
        *([mirror] if mirror else []),
    ]
    env = dict(os.environ, LANG="C.UTF-8", LC_ALL="C.UTF-8", DEBIAN_FRONTEND="noninteractive")
    with log.open("w") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            pass_fds=(lock_fd,),
        )
        try:
            rc = proc.wait(timeout)
        except BaseException:
            _kill_group(proc)
            raise
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise NspawnError(f"debootstrap failed with exit code {rc} (log {log}):\n{tail}")


def _apt_install(root: Path, packages: Sequence[str], log: Path, timeout: float) -> None:
    """apt-get install in the half-built image (not booted; the host's network)."""
    argv = [
        "systemd-nspawn", "--quiet", "--directory", str(root), "--register=no", "--keep-unit",
        "--setenv=DEBIAN_FRONTEND=noninteractive", "--",
        "/bin/sh", "-ec",
        'apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" && apt-get clean',
        "sh", *sorted(set(packages)),
    ]
    with log.open("a") as out:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                              timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise NspawnError(f"apt-get install {' '.join(packages)} failed ({proc.returncode}; log {log}):\n{tail}")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process we started in its own session, with everything it spawned."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(30)


def _prepare_image(root: Path) -> None:
    units = set(MASKED_UNITS)
    for unit_dir in ("lib/systemd/system", "usr/lib/systemd/system", "etc/systemd/system"):
        base = root / unit_dir
        if base.is_dir():
            units.update(p.name for p in base.rglob("*.timer"))
    etc_units = root / "etc/systemd/system"
    etc_units.mkdir(parents=True, exist_ok=True)
    for unit in sorted(units):
        link = etc_units / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")
    # Every clone gets its own machine-id (written into its upper layer at boot).
    (root / "etc/machine-id").write_text("")


def _mounts_below(path: Path) -> list[str]:
    prefix = str(path.resolve())
    found: list[str] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mount_point = line.split()[4].encode().decode("unicode_escape")
            if mount_point == prefix or mount_point.startswith(prefix + "/"):
                found.append(mount_point)
    return found


def _remove_tree(path: Path) -> None:
    """rm -rf that refuses to descend into anything still mounted below ``path``."""
    if not path.exists() and not path.is_symlink():
        return
    for mount_point in sorted(_mounts_below(path), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mount_point], check=False, capture_output=True)
    if _mounts_below(path):
        raise NspawnError(f"refusing to remove {path}: still mounted: {_mounts_below(path)}")
    shutil.rmtree(path)


# --------------------------------------------------------------------------- containers

_LIVE: set[SystemdContainer] = set()


@atexit.register
def _stop_leftovers() -> None:
    """Last resort when a caller forgot teardown: never leave containers running."""
    for container in list(_LIVE):
        with contextlib.suppress(Exception):
            container.stop()


class SystemdContainer:
    """One booted container; use :func:`boot_container` to get one."""

    def __init__(self, image: Path, name: str, workdir: Path) -> None:
        self.image = image
        self.name = name
        self.workdir = workdir
        self.upper = workdir / "upper"
        self.work = workdir / "work"
        self.merged = workdir / "merged"
        self.log_path = workdir / "console.log"
        self.boot_seconds: float | None = None
        self.system_state: str | None = None
        self.failed_units: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._leader: int | None = None

    # -- information ----------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """Pid of systemd-nspawn on the host (the process this helper started)."""
        if self._proc is None:
            raise NspawnError("container not started")
        return self._proc.pid

    @property
    def leader(self) -> int:
        """Host pid of the container's PID 1 (systemd)."""
        if self._leader is None:
            raise NspawnError("container has no leader (not booted or already stopped)")
        return self._leader

    @property
    def root(self) -> Path:
        """The container's / as seen from the host (valid while it runs)."""
        return Path(f"/proc/{self.leader}/root")

    @property
    def bus_address(self) -> str:
        """D-Bus address of the container's system bus, usable from the host."""
        return f"unix:path=/proc/{self.leader}/root/run/dbus/system_bus_socket"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def console_log(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- use ------------------------------------------------------------------------------

    def _nsenter(self, argv: Sequence[str]) -> list[str]:
        return ["nsenter", "--target", str(self.leader), "--all", "--", *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the container (all its namespaces), capture its output."""
        proc = subprocess.run(
            self._nsenter(argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_CONTAINER_ENV,
            check=False,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise CommandFailed(argv, proc.returncode, proc.stdout, proc.stderr)
        return proc

    def path(self, inside: str) -> Path:
        """Host path of ``inside`` (an absolute path in the container), for reading.

        Careful: an absolute symlink met on the way resolves on the *host* (e.g. /var/run).
        To write, use :meth:`write_file`, which resolves inside the container.
        """
        return self.root / inside.lstrip("/")

    def write_file(self, inside: str, data: str | bytes, mode: int = 0o644) -> None:
        """Create or replace a file in the running container (parents created as needed)."""
        payload = data.encode() if isinstance(data, str) else data
        script = 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1" && chmod "$2" "$1"'
        argv = ["/bin/sh", "-c", script, "sh", inside, f"{mode:o}"]
        proc = subprocess.run(
            self._nsenter(argv), input=payload, capture_output=True, timeout=60, env=_CONTAINER_ENV, check=False
        )
        if proc.returncode != 0:
            raise CommandFailed(argv, proc.returncode, "", proc.stderr.decode(errors="replace"))

    def read_file(self, inside: str) -> str:
        return self.run(["cat", "--", inside]).stdout

    # -- lifecycle ------------------------------------------------------------------------

    def _stage_files(self, files: Mapping[str, str | bytes]) -> None:
        """Write files into the upper layer before boot, so units exist when systemd starts.

        Parent directories created in the upper layer take mode and owner from the image,
        because an upper directory's attributes win in the merged view.
        """
        for inside, data in files.items():
            rel = Path(inside.lstrip("/"))
            if not rel.parts or ".." in rel.parts:
                raise ValueError(f"bad container path {inside!r}")
            upper_dir = self.upper
            lower_dir = self.image
            for part in rel.parts[:-1]:
                upper_dir /= part
                lower_dir /= part
                if lower_dir.is_symlink():
                    # A real directory in the upper layer would replace the link (say /lib ->
                    # usr/lib) in the merged view and break the container.
                    raise ValueError(f"{inside!r} goes through the symlink /{lower_dir.relative_to(self.image)}")
                if not upper_dir.exists():
                    upper_dir.mkdir()
                    if lower_dir.is_dir():
                        st = lower_dir.stat()
                        os.chown(upper_dir, st.st_uid, st.st_gid)
                        upper_dir.chmod(stat.S_IMODE(st.st_mode))
            target = self.upper / rel
            target.write_bytes(data.encode() if isinstance(data, str) else data)
            target.chmod(0o644)

    def _start(
        self,
        files: Mapping[str, str | bytes],
        private_network: bool,
        nspawn_args: Sequence[str],
    ) -> None:
        for part in (self.image, self.upper, self.work, self.merged):
            if any(c in str(part) for c in ",:\\ \n"):
                raise ValueError(f"path unusable in overlay options: {part}")
        for d in (self.upper, self.work, self.merged):
            d.mkdir()
        self._stage_files({"/etc/machine-id": uuid.uuid4().hex + "\n", **files})
        script = 'mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3" "$4"; shift 4; exec "$@"'
        argv = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-ec",
            script,
            "sh",
            str(self.image),
            str(self.upper),
            str(self.work),
            str(self.merged),
            "systemd-nspawn",
            "--quiet",
            "--directory",
            str(self.merged),
            "--machine",
            self.name,
            "--register=no",
            "--keep-unit",
            "--boot",
            "--console=passive",
            *(["--private-network"] if private_network else []),
            *nspawn_args,
        ]
        with self.log_path.open("wb") as log:
            # start_new_session = setsid: the container must not share our terminal's
            # process group, or a Ctrl-C meant for pytest would hit it mid-teardown.
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _LIVE.add(self)

    def _find_leader(self) -> int | None:
        """The child of nspawn that is PID 1 of a new PID namespace.

        nspawn briefly has another (outer) child while it sets up; only the inner child
        shows ``1`` as the last NSpid entry.
        """
        parent = str(self.pid)
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                status = Path(entry.path, "status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if fields.get("PPid", "").strip() != parent:
                continue
            nspid = fields.get("NSpid", "").split()
            if len(nspid) > 1 and nspid[-1] == "1":
                return int(entry.name)
        return None

    def wait_until_running(self, timeout: float) -> None:
        started = time.monotonic()
        deadline = started + timeout
        state = ""
        while time.monotonic() < deadline:
            if not self.running:
                raise NspawnError(
                    f"systemd-nspawn exited with {self._proc.returncode if self._proc else '?'}"
                    f" during boot:\n{self.console_log()}"
                )
            if self._leader is None:
                self._leader = self._find_leader()
            if self._leader is not None:
                try:
                    proc = self.run(["systemctl", "is-system-running"], check=False, timeout=10)
                    state = proc.stdout.strip()
                except subprocess.TimeoutExpired:
                    state = "timeout"
                if state in ("running", "degraded") and Path(self.bus_address.removeprefix("unix:path=")).exists():
                    self.system_state = state
                    if state == "degraded":
                        failed = self.run(
                            ["systemctl", "list-units", "--failed", "--plain", "--no-legend"],
                            check=False,
                        )
                        self.failed_units = [line.split()[0] for line in failed.stdout.splitlines() if line.strip()]
                    return
            time.sleep(0.05)
        raise NspawnError(
            f"container {self.name} not running after {timeout:g}s (last state {state!r}):\n{self.console_log()}"
        )

    def stop(self, timeout: float = 20.0) -> None:
        """Power the container off, kill it if it does not comply, remove its files.

        Idempotent, and it never signals a process this helper did not start.
        """
        proc = self._proc
        try:
            if proc is not None and proc.poll() is None:
                # SIGTERM to nspawn = orderly poweroff of the container's systemd.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    leader = self._leader
                    # Only while nspawn lives can the leader pid not have been reused.
                    if leader is not None and proc.poll() is None:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(leader, signal.SIGKILL)  # ends the whole PID namespace
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    proc.wait(30)
        finally:
            self._leader = None
            _LIVE.discard(self)
            if self.workdir.exists():
                _remove_tree(self.workdir)

    def __enter__(self) -> SystemdContainer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        nspawn = self._proc.pid if self._proc else None
        return f"<SystemdContainer {self.name} nspawn={nspawn} leader={self._leader}>"


def boot_container(
    image: Path,
    *,
    name: str | None = None,
    files: Mapping[str, str | bytes] | None = None,
    private_network: bool = True,
    nspawn_args: Sequence[str] = (),
    boot_timeout: float = 90.0,
    tmp_root: Path | None = None,
) -> SystemdContainer:
    """Boot an overlay clone of ``image`` and wait until its systemd is up.

    ``files`` (container path -> content) are placed before boot, e.g. unit files.
    ``private_network=False`` lets callers pass their own network options in
    ``nspawn_args`` (e.g. ``--network-namespace-path=/run/netns/n1``).
    On any failure the half-started container is torn down before the error propagates.
    """
    machine = name or f"smbgw-{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix=f"nspawn-{machine}-", dir=tmp_root))
    container = SystemdContainer(image, machine, workdir)
    started = time.monotonic()
    try:
        container._start(files or {}, private_network, nspawn_args)
        container.wait_until_running(boot_timeout)
    except BaseException:
        container.stop()
        raise
    container.boot_seconds = time.monotonic() - started
    return container


# What the ``systemd_container_factory`` fixture yields: keyword arguments of boot_container.
ContainerFactory = Callable[..., SystemdContainer]

__all__ = [
    "DEFAULT_PACKAGES",
    "MASKED_UNITS",
    "CommandFailed",
    "ContainerFactory",
    "NspawnError",
    "SystemdContainer",
    "base_image_path",
    "boot_container",
    "ensure_base_image",
    "image_key",
    "missing_requirements",
]

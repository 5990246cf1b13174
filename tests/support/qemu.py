"""Throwaway QEMU guests running Debian's own kernel, for tests a container cannot do.

Why a virtual machine: containers share the host's kernel, so anything that depends on the
kernel itself -- XFS and ext4 project quotas, loading modules, mounting file systems, the
agent on a node that is a VM -- needs a kernel of its own. This module boots Debian 12's
stock ``linux-image-amd64`` under QEMU (TCG: the test machines have no usable KVM).

Why this shape:

* The guest image is built once (~2 min) and cached by content: its directory name is a hash
  of the package list, the suite and the recipe (version constant, the init script, the
  initramfs modules), so a changed recipe can never reuse a stale image. It is built in a
  temporary directory and renamed into place with a completion marker inside, so a half-built
  image is never used (it is removed and rebuilt), and concurrent test sessions serialise on
  a lock file instead of building twice.
* The image is three files: ``base.raw`` (an ext4 root made with ``mkfs.ext4 -d``, no loop
  mount needed), ``vmlinuz`` and ``initrd.img``. QEMU boots the kernel directly; no boot
  loader, no partition table.
* The guest does not boot systemd: its PID 1 is a small shell script (``test-init``) that
  mounts the essentials, runs the test's script from a 9p share of a host run directory,
  writes the exit code next to it and powers off. A run is ~15 s under TCG instead of ~42 s
  for a systemd boot. (Tests that want systemd can still ``exec /lib/systemd/systemd``.)
* Every run writes to a throwaway qcow2 overlay, so runs cannot damage the image or each
  other; the overlay and the scratch disks are deleted after the run whatever happens.
* The only process ever signalled is the ``qemu-system-x86_64`` this module started, by its
  pid (we are its parent, so the pid cannot have been reused before we reap it).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from smbgw_agent.effects.fileio import fsync_dir
from tests.support import nspawn

SUITE = "bookworm"
IMAGES_DIR = Path("/var/lib/smbgw-test/qemu")
# Bump whenever the image preparation below changes in a way the hash cannot see.
_RECIPE_VERSION = "2"
_MARKER = "image.json"
# debootstrap's --include: what any bootable, udev-populated minimal root needs.
BOOTSTRAP_PACKAGES: tuple[str, ...] = ("systemd-sysv", "udev", "kmod", "dbus")
# Installed with apt in a chroot afterwards (--no-install-recommends).
GUEST_PACKAGES: tuple[str, ...] = (
    "linux-image-amd64", "initramfs-tools", "xfsprogs", "quota", "e2fsprogs", "samba", "smbclient",
    "iproute2", "procps", "attr", "acl", "python3", "netbase",
    # The agent's Debian runtime dependencies, so the agent itself can run in the guest.
    "python3-pluggy", "python3-prometheus-client", "python3-jinja2", "python3-watchdog",
    "python3-pyroute2", "python3-pydbus", "python3-gi",
    # The VM mode's guest (booted with systemd by the qm stand-in, tests/support/qm_standin):
    # configured by cloud-init (NoCloud) and driven through the QEMU guest agent.
    "cloud-init", "qemu-guest-agent", "ifupdown", "isc-dhcp-client", "samba-vfs-modules", "winbind",
    "libnss-winbind",
    # cloud-init's ifupdown renderer writes the name servers as `dns-nameservers` lines, which
    # only resolvconf turns into /etc/resolv.conf (a VM joining a domain finds its DCs by DNS).
    "resolvconf",
)
# The initrd only has to find an ext4 root on virtio: 6 MB instead of 36 MB, ~3 s less a boot.
# (crc32c_generic: ext4 metadata checksums.) test-init loads 9p and virtio_net from the root fs.
INITRAMFS_MODULES: tuple[str, ...] = ("virtio_pci", "virtio_blk", "ext4", "crc32c_generic")
GUEST_HOSTNAME = "smbgw-guest"
ROOT_MIN_BYTES = 3 << 30
TEST_INIT = "/usr/local/sbin/test-init"

# Test-image settings for the guests that boot systemd (the qm stand-in's VMs), each a file
# no package owns (path in the root -> content, mode):
# * cloud-init 22.4 looks for NoCloud (the stand-in's seed drive) and nothing else: no
#   network data sources to time out on; its locale module fails on a minimal root without
#   `locale: C.UTF-8` (and `cloud-init status` then says error).
# * /sbin/mount.virtiofs: the stand-in maps a VM's virtiofs0 to virtio-9p (virtiofsd is not
#   packaged for Debian 12), so a guest's fstab line `TAG /path virtiofs defaults,nofail 0 0`
#   or `mount -t virtiofs TAG /path` mounts the 9p share with the same tag instead.
GUEST_FILES: dict[str, tuple[str, int]] = {
    "etc/cloud/cloud.cfg.d/90-smbgw-test.cfg": (
        "# smbgw test image (tests/support/qemu.py): the qm stand-in's NoCloud seed only\n"
        "datasource_list: [ NoCloud, None ]\nlocale: C.UTF-8\n", 0o644),
    "sbin/mount.virtiofs": ("""#!/bin/sh
# smbgw test image (tests/support/qemu.py): virtiofs is virtio-9p under the qm test stand-in
# (virtiofsd is not packaged for Debian 12), with the same tag. mount(8) calls this as
# mount.virtiofs TAG DIR [-sfnvr] [-o OPTIONS]; options 9p does not know are dropped.
tag=$1 dir=$2
shift 2
given=
while [ $# -gt 0 ]; do
    case $1 in
        -o) given=$2; shift 2 ;;
        -o*) given=${1#-o}; shift ;;
        *) shift ;;
    esac
done
opts=trans=virtio,version=9p2000.L,access=client,msize=262144
old_ifs=$IFS IFS=,
for o in $given; do
    case $o in
        ro|rw|noexec|nosuid|nodev|sync|dirsync|noatime|relatime) opts=$opts,$o ;;
    esac
done
IFS=$old_ifs
modprobe -q -a 9pnet_virtio 9p
exec mount -i -t 9p -o "$opts" "$tag" "$dir"
""", 0o755),
}
# Units a test VM never needs, masked so a systemd boot under TCG is shorter (not cloud-init,
# qemu-guest-agent, smbd, nmbd or winbind: the VM mode uses them).
MASKED_UNITS: tuple[str, ...] = (
    "apt-daily.timer", "apt-daily-upgrade.timer", "apt-daily.service", "apt-daily-upgrade.service",
    "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer", "man-db.timer", "dpkg-db-backup.timer",
    "samba-ad-dc.service", "xfs_scrub_all.timer", "systemd-networkd-wait-online.service",
    "sys-kernel-debug.mount", "sys-kernel-tracing.mount",
    "getty@tty1.service", "systemd-pstore.service", "modprobe@drm.service", "logrotate.timer",
)

# PID 1 of every guest. Output goes to the serial console (console.log on the host).
TEST_INIT_SCRIPT = f"""#!/bin/sh
# PID 1 of a test guest (tests/support/qemu.py): run /mnt/host/run.sh, record its exit code
# in /mnt/host/rc, power off. The host reads rc and out.log from its run directory.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LANG=C.UTF-8 HOME=/root TERM=dumb
export PATH LANG HOME TERM

off() {{ sync; echo o > /proc/sysrq-trigger; sleep 30; }}
mnt() {{ mountpoint -q "$3" || mount -t "$1" -o "$2" "$1" "$3"; }}

mnt proc nosuid,nodev,noexec /proc
mnt sysfs nosuid,nodev,noexec /sys
mnt devtmpfs mode=755,nosuid /dev
mkdir -p /dev/pts /dev/shm
mnt devpts gid=5,mode=620,ptmxmode=000 /dev/pts
mnt tmpfs mode=1777,nosuid,nodev /dev/shm
mnt tmpfs mode=755,nosuid,nodev /run
mnt tmpfs mode=1777,nosuid,nodev /tmp
# No udev runs, so nothing loads modules for devices: load the ones we use. File systems
# (xfs: ~2 s under TCG) load on demand when mounted; the kernel calls modprobe for them.
modprobe -q -a 9pnet_virtio 9p
if grep -qsx 0x0001 /sys/bus/virtio/devices/*/device; then modprobe -q virtio_net; fi
echo {GUEST_HOSTNAME} > /proc/sys/kernel/hostname
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then  # QEMU user networking: fixed addresses
    ip link set eth0 up
    ip addr add 10.0.2.15/24 dev eth0
    ip route add default via 10.0.2.2
fi
mkdir -p /mnt/host /mnt/src
if ! mount -t 9p -o trans=virtio,version=9p2000.L host /mnt/host; then
    echo "test-init: cannot mount the host run directory (9p tag host)"
    off
fi
if grep -qs '^src' /sys/bus/virtio/drivers/9pnet_virtio/*/mount_tag; then
    mount -t 9p -o trans=virtio,version=9p2000.L,ro src /mnt/src
fi
cd /mnt/host
echo "test-init: running run.sh"
sh /mnt/host/run.sh > /mnt/host/out.log 2>&1 < /dev/null
echo $? > /mnt/host/rc
echo "test-init: run.sh exited $(cat /mnt/host/rc)"
cd /
off
"""

# How apt runs in the half-built root: a private mount namespace, so /proc, /sys and /dev
# mounted for the chroot vanish with it, and a policy-rc.d forbids starting services.
_CHROOT_INSTALL = r"""
root=$1; shift
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"
exec chroot "$root" /bin/sh -ec '
apt-get update -qq
apt-get install -y -qq --no-install-recommends "$@"
apt-get clean' sh "$@"
"""
_CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "DEBCONF_NONINTERACTIVE_SEEN": "true",
}
_REQUIRED_TOOLS = ("qemu-system-x86_64", "qemu-img", "debootstrap", "mkfs.ext4", "unshare", "chroot")
_RESERVED_FILES = frozenset({"run.sh", "out.log", "rc"})


class QemuError(RuntimeError):
    """A guest image could not be built or a guest could not be started."""


# --------------------------------------------------------------------------- requirements


def missing_requirements() -> list[str]:
    """Why guests cannot run here (empty when they can), for a precise pytest.skip."""
    missing: list[str] = []
    if os.geteuid() != 0:
        missing.append("must run as root")
    missing.extend(f"{tool} not found" for tool in _REQUIRED_TOOLS if shutil.which(tool) is None)
    return missing


# --------------------------------------------------------------------------- image


@dataclass(frozen=True)
class GuestImage:
    """A finished, cached guest image (never modified after it was built)."""

    path: Path
    key: str
    base: Path
    kernel: Path
    initrd: Path
    kernel_version: str
    packages: tuple[str, ...]


def guest_packages(extra_packages: Sequence[str] = ()) -> tuple[str, ...]:
    """The apt packages of an image with ``extra_packages``, sorted and deduplicated."""
    return tuple(sorted(set(GUEST_PACKAGES) | set(extra_packages)))


def image_key(extra_packages: Sequence[str] = (), suite: str = SUITE) -> str:
    """Hash of everything that shapes the image, so a different recipe gets another dir."""
    recipe = {
        "suite": suite,
        "bootstrap": sorted(BOOTSTRAP_PACKAGES),
        "packages": list(guest_packages(extra_packages)),
        "initramfs": list(INITRAMFS_MODULES),
        "init": TEST_INIT_SCRIPT,
        "files": GUEST_FILES,
        "masked": sorted(MASKED_UNITS),
        "recipe": _RECIPE_VERSION,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def _load_image(path: Path) -> GuestImage | None:
    """The image at ``path`` if its build completed (marker present), else None."""
    try:
        meta = json.loads((path / _MARKER).read_text())
    except (OSError, ValueError):
        return None
    image = GuestImage(
        path=path,
        key=path.name,
        base=path / "base.raw",
        kernel=path / "vmlinuz",
        initrd=path / "initrd.img",
        kernel_version=str(meta["kernel_version"]),
        packages=tuple(meta["packages"]),
    )
    if not all(p.is_file() for p in (image.base, image.kernel, image.initrd)):
        return None
    return image


def ensure_guest_image(
    extra_packages: Sequence[str] = (), *, suite: str = SUITE, timeout: float = 1800.0
) -> GuestImage:
    """Return the guest image with ``extra_packages``, building it first if needed (~2 min).

    Safe against concurrent callers (a lock file serialises builders; the loser finds the
    finished image) and against interrupted builds (only a complete directory, marker
    inside, is renamed to its final name; leftovers of a dead build are removed under the
    lock). Packages come only through debootstrap and apt, from this machine's apt mirror.
    """
    key = image_key(extra_packages, suite)
    final = IMAGES_DIR / key
    image = _load_image(final)
    if image is not None:
        return image
    IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    with nspawn._locked(IMAGES_DIR / f".{key}.lock", timeout) as lock_fd:
        image = _load_image(final)
        if image is not None:
            return image
        for stale in [*IMAGES_DIR.glob(f".{key}.tmp-*"), final]:
            nspawn._remove_tree(stale)  # ours by name but without a marker: never trust it
        tmp = IMAGES_DIR / f".{key}.tmp-{os.getpid()}"
        tmp.mkdir()
        try:
            _build_image(tmp, guest_packages(extra_packages), suite, IMAGES_DIR / f".{key}.build.log",
                         timeout, lock_fd)
            os.sync()  # a power cut must not leave a renamed-but-empty image behind
            os.rename(tmp, final)
            fsync_dir(IMAGES_DIR)
        except BaseException:
            nspawn._remove_tree(tmp)
            raise
    image = _load_image(final)
    if image is None:
        raise QemuError(f"image {final} incomplete right after its build")
    return image


def _build_image(
    out: Path, packages: Sequence[str], suite: str, log: Path, timeout: float, lock_fd: int
) -> None:
    """debootstrap, apt in a chroot, then the three image files and the marker in ``out``."""
    started = time.monotonic()
    root = out / "root"
    nspawn._debootstrap(root, BOOTSTRAP_PACKAGES, suite, nspawn.host_mirror(suite), log, timeout, lock_fd)
    _prepare_install(root)
    _chroot_install(root, packages, log, timeout, lock_fd)
    _finish_root(root)
    kernel_version = _copy_boot_files(root, out)
    _make_root_fs(root, out / "base.raw", log)
    nspawn._remove_tree(root)
    meta = {
        "suite": suite,
        "packages": list(packages),
        "kernel_version": kernel_version,
        "built": time.time(),
        "build_seconds": round(time.monotonic() - started, 1),
    }
    (out / _MARKER).write_text(json.dumps(meta, indent=2) + "\n")


def _prepare_install(root: Path) -> None:
    """Before apt: no service may start in the chroot, and the initrd is built small once.

    The initramfs settings go into files no package owns (conf.d, modules.d), so dpkg never
    meets a changed conffile.
    """
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    conf_d = root / "etc/initramfs-tools/conf.d"
    conf_d.mkdir(parents=True, exist_ok=True)
    (conf_d / "smbgw-test").write_text("MODULES=list\n")
    modules_d = root / "usr/share/initramfs-tools/modules.d"
    modules_d.mkdir(parents=True, exist_ok=True)
    (modules_d / "smbgw-test").write_text("".join(f"{m}\n" for m in INITRAMFS_MODULES))


def _chroot_install(root: Path, packages: Sequence[str], log: Path, timeout: float, lock_fd: int) -> None:
    """apt-get install in the half-built root (the host's network and apt mirror)."""
    argv = ["unshare", "--mount", "--propagation", "private", "--",
            "/bin/sh", "-ec", _CHROOT_INSTALL, "sh", str(root), *packages]
    with log.open("a") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=_CHROOT_ENV, start_new_session=True, pass_fds=(lock_fd,))
        try:
            rc = proc.wait(timeout)
        except BaseException:
            nspawn._kill_group(proc)
            raise
    if rc != 0:
        raise QemuError(f"apt-get install in the guest root failed ({rc}; log {log}):\n{_tail(log, 40)}")


def _finish_root(root: Path) -> None:
    """Make the root a guest's: our init, our name, no host leftovers, services startable."""
    (root / "usr/sbin/policy-rc.d").unlink()
    init = root / TEST_INIT.lstrip("/")
    init.parent.mkdir(parents=True, exist_ok=True)
    init.write_text(TEST_INIT_SCRIPT)
    init.chmod(0o755)
    (root / "etc/hostname").write_text(GUEST_HOSTNAME + "\n")
    (root / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {GUEST_HOSTNAME}\n::1 localhost\n")
    # debootstrap copied the host's resolver: a guest must fail a lookup at once, not time out.
    # (resolvconf's link to the file it writes at boot stays: it holds what cloud-init gave.)
    resolv = root / "etc/resolv.conf"
    if not resolv.is_symlink():
        resolv.write_text("")
    (root / "etc/fstab").write_text("")
    (root / "etc/machine-id").write_text("")  # a systemd boot generates its own
    for rel, (content, mode) in GUEST_FILES.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        target.chmod(mode)
    systemd_dir = root / "etc/systemd/system"
    for unit in MASKED_UNITS:
        link = systemd_dir / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")


def _copy_boot_files(root: Path, out: Path) -> str:
    """Copy the one installed kernel and its initrd to ``out``; return the kernel version."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise QemuError(f"expected one kernel in the guest root, found {[k.name for k in kernels]}")
    version = kernels[0].name.removeprefix("vmlinuz-")
    initrd = root / "boot" / f"initrd.img-{version}"
    if not initrd.is_file():
        raise QemuError(f"no initrd for kernel {version}")
    shutil.copyfile(kernels[0], out / "vmlinuz")
    shutil.copyfile(initrd, out / "initrd.img")
    return version


def _make_root_fs(root: Path, target: Path, log: Path) -> None:
    """An ext4 file system filled from the ``root`` tree (mkfs.ext4 -d: no loop mount)."""
    used = int(subprocess.run(["du", "-sx", "--block-size=1", str(root)], capture_output=True, text=True,
                              check=True).stdout.split()[0])
    size = max(ROOT_MIN_BYTES, 2 * used)
    with target.open("wb") as fh:
        fh.truncate(size)
    with log.open("a") as out:
        proc = subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(root), str(target)],
                              stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise QemuError(f"mkfs.ext4 -d failed ({proc.returncode}; log {log}):\n{_tail(log, 20)}")
    target.chmod(0o444)  # only ever a read-only backing file


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- guests


@dataclass(frozen=True)
class GuestRun:
    """What one guest run left behind.

    ``rc`` is the script's exit code, or None when it never finished (timeout, kernel panic,
    test-init failure); ``output`` is the script's stdout and stderr; ``console`` the tail of
    the serial console (kernel and test-init messages); ``qemu_log`` QEMU's own stderr.
    ``run_dir`` no longer exists unless the run was started with ``keep_run_dir=True``.
    """

    rc: int | None
    output: str
    console: str
    duration: float
    run_dir: Path
    timed_out: bool
    qemu_pid: int
    qemu_log: str

    def report(self) -> str:
        """Everything a failing assertion should show."""
        return (
            f"rc={self.rc} timed_out={self.timed_out} after {self.duration:.1f}s\n"
            f"--- output ---\n{self.output[-4000:]}\n--- console (tail) ---\n{self.console}\n"
            f"--- qemu ---\n{self.qemu_log[-2000:]}"
        )


_LIVE: set[Guest] = set()


@atexit.register
def _stop_leftovers() -> None:
    """Last resort when a caller forgot teardown: never leave a guest running."""
    for guest in list(_LIVE):
        with contextlib.suppress(Exception):
            guest.close()


class Guest:
    """One running guest; use :func:`boot_guest` (or :func:`run_in_guest`) to get one.

    Layout of ``run_dir``: ``host/`` is the 9p share (``/mnt/host`` in the guest: run.sh,
    the caller's files, out.log, rc), ``disks/`` the overlay and scratch disks (not exported,
    deleted on close), and console.log, qemu.log, qemu.pid beside them.
    """

    def __init__(self, run_dir: Path, keep_run_dir: bool) -> None:
        self.run_dir = run_dir
        self.host_dir = run_dir / "host"
        self.disks_dir = run_dir / "disks"
        self.keep_run_dir = keep_run_dir
        self._proc: subprocess.Popen[bytes] | None = None
        self._started = 0.0
        self._timed_out = False

    @property
    def pid(self) -> int:
        """Pid of qemu-system-x86_64 (the process this helper started)."""
        if self._proc is None:
            raise QemuError("guest not started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, argv: Sequence[str]) -> None:
        """Start QEMU; its own session, so a Ctrl-C meant for pytest does not hit it."""
        with (self.run_dir / "qemu.log").open("wb") as log:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        self._started = time.monotonic()
        _LIVE.add(self)

    def wait(self, timeout: float) -> GuestRun:
        """Wait until the guest powers off; kill it after ``timeout`` seconds (rc None)."""
        if self._proc is None:
            raise QemuError("guest not started")
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._timed_out = True
            self.kill()
        return self.result()

    def kill(self) -> None:
        """SIGKILL our QEMU (the guest is throwaway) and reap it. Idempotent."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(30)

    def result(self) -> GuestRun:
        """The run as it stands (rc None while the script has not finished)."""
        if self._proc is None:
            raise QemuError("guest not started")
        return GuestRun(
            rc=_read_rc(self.host_dir / "rc"),
            output=_read_text(self.host_dir / "out.log"),
            console=_tail(self.run_dir / "console.log", 60),
            duration=time.monotonic() - self._started,
            run_dir=self.run_dir,
            timed_out=self._timed_out,
            qemu_pid=self._proc.pid,
            qemu_log=_read_text(self.run_dir / "qemu.log"),
        )

    def close(self) -> None:
        """Kill QEMU if it still runs, delete the disks, and the run dir unless kept."""
        try:
            self.kill()
        finally:
            _LIVE.discard(self)
            shutil.rmtree(self.disks_dir, ignore_errors=True)
            if not self.keep_run_dir:
                shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> Guest:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Guest {self.run_dir} qemu={self._proc.pid if self._proc else None}>"


def _read_rc(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _opt(value: str | Path) -> str:
    """A value inside a QEMU -option list: commas are escaped by doubling them."""
    return str(value).replace(",", ",,")


def _write_files(host_dir: Path, script: str, files: Mapping[str, str | bytes]) -> None:
    """run.sh and the caller's files into the 9p share (``/mnt/host/NAME`` in the guest)."""
    for name, data in files.items():
        rel = Path(name)
        if rel.is_absolute() or not rel.parts or ".." in rel.parts or rel.parts[0] in _RESERVED_FILES:
            raise ValueError(f"bad or reserved guest file name {name!r}")
        target = host_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.encode() if isinstance(data, str) else data)
    (host_dir / "run.sh").write_text(script)


def _make_disks(image: GuestImage, disks_dir: Path, disks: Sequence[tuple[str, int]]) -> list[str]:
    """The root overlay and the scratch disks; returns their -drive options, root first."""
    overlay = disks_dir / "root.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.base), "-F", "raw", str(overlay)],
                   check=True, capture_output=True)
    drives = [f"file={_opt(overlay)},format=qcow2,if=virtio,cache=unsafe"]
    for index, (name, size) in enumerate(disks):
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"bad scratch disk name {name!r}")
        path = disks_dir / f"{index}-{name}.raw"
        with path.open("wb") as fh:
            fh.truncate(size)  # sparse
        drives.append(f"file={_opt(path)},format=raw,if=virtio,cache=unsafe")
    return drives


def _network_args(hostfwd: Mapping[int, int]) -> list[str]:
    """User-mode networking, no way out (restrict=on); forwards only from 127.0.0.1."""
    netdev = "user,id=n0,restrict=on" + "".join(
        f",hostfwd=tcp:127.0.0.1:{host}-:{guest}" for host, guest in hostfwd.items()
    )
    return ["-netdev", netdev, "-device", "virtio-net-pci,netdev=n0"]


def qemu_argv(
    image: GuestImage,
    guest: Guest,
    drives: Sequence[str],
    *,
    share: Path | None,
    memory_mb: int,
    cpus: int,
    network: bool,
    hostfwd: Mapping[int, int],
) -> list[str]:
    """The QEMU command line (TCG: KVM is unusable on the test machines)."""
    argv = [
        "qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max", "-m", str(memory_mb),
        "-smp", str(cpus), "-nodefaults", "-display", "none", "-no-reboot",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd),
        "-append", f"console=ttyS0 root=/dev/vda rw panic=-1 net.ifnames=0 init={TEST_INIT}",
    ]
    for drive in drives:
        argv += ["-drive", drive]
    argv += ["-virtfs", f"local,path={_opt(guest.host_dir)},mount_tag=host,security_model=none,id=host"]
    if share is not None:
        argv += ["-virtfs", f"local,path={_opt(share)},mount_tag=src,security_model=none,readonly=on,id=src"]
    if network:
        argv += _network_args(hostfwd)
    argv += ["-serial", f"file:{guest.run_dir / 'console.log'}", "-pidfile", str(guest.run_dir / "qemu.pid")]
    return argv


def boot_guest(
    image: GuestImage,
    script: str,
    *,
    files: Mapping[str, str | bytes] | None = None,
    disks: Sequence[tuple[str, int]] = (),
    share: Path | None = None,
    memory_mb: int = 1024,
    cpus: int = 2,
    network: bool = False,
    hostfwd: Mapping[int, int] | None = None,
    tmp_root: Path | None = None,
    keep_run_dir: bool = False,
) -> Guest:
    """Start a guest that runs ``script`` (with ``sh``) and powers off; do not wait for it.

    For tests that talk to the guest while it runs (e.g. over ``hostfwd``); use it as a
    context manager so the guest is killed and its disks deleted however the test ends.
    See :func:`run_in_guest` for the arguments.
    """
    if hostfwd and not network:
        raise ValueError("hostfwd needs network=True")
    if share is not None and not share.is_dir():
        raise ValueError(f"share {share} is not a directory")
    base = tmp_root or Path("/var/tmp")  # not /tmp: the overlay and disks may be large
    guest = Guest(Path(tempfile.mkdtemp(prefix="smbgw-qemu-", dir=base)), keep_run_dir)
    try:
        guest.host_dir.mkdir()
        guest.disks_dir.mkdir()
        _write_files(guest.host_dir, script, files or {})
        drives = _make_disks(image, guest.disks_dir, disks)
        guest.start(qemu_argv(image, guest, drives, share=share, memory_mb=memory_mb, cpus=cpus,
                              network=network, hostfwd=hostfwd or {}))
    except BaseException:
        guest.close()
        raise
    return guest


def run_in_guest(
    image: GuestImage,
    script: str,
    *,
    files: Mapping[str, str | bytes] | None = None,
    disks: Sequence[tuple[str, int]] = (),
    share: Path | None = None,
    timeout: float = 300.0,
    memory_mb: int = 1024,
    cpus: int = 2,
    network: bool = False,
    hostfwd: Mapping[int, int] | None = None,
    tmp_root: Path | None = None,
    keep_run_dir: bool = False,
) -> GuestRun:
    """Boot a throwaway guest, run ``script`` in it with ``sh`` as root, return what it did.

    * ``files``: name -> content, written to the run directory: ``/mnt/host/NAME`` in the
      guest (the script runs there, and may leave files there for the host to read when
      ``keep_run_dir`` is set; the caller then removes ``run.run_dir``).
    * ``disks``: (name, size in bytes) scratch disks, sparse raw files attached in order as
      ``/dev/vdb``, ``/dev/vdc``, ... (``/dev/vda`` is the root). Always deleted afterwards.
    * ``share``: a host directory exported read-only at ``/mnt/src`` (e.g. the checkout).
    * ``network``: a virtio NIC on QEMU user networking (eth0 = 10.0.2.15/24, gateway
      10.0.2.2), with ``restrict=on`` so the guest reaches nothing outside; ``hostfwd`` maps
      host ports on 127.0.0.1 to guest TCP ports. No network device at all by default.
    * ``timeout``: seconds from start; then QEMU (and only it, by pid) is killed, ``rc`` is None.
    """
    with boot_guest(image, script, files=files, disks=disks, share=share, memory_mb=memory_mb, cpus=cpus,
                    network=network, hostfwd=hostfwd, tmp_root=tmp_root, keep_run_dir=keep_run_dir) as guest:
        return guest.wait(timeout)


__all__ = [
    "BOOTSTRAP_PACKAGES",
    "GUEST_PACKAGES",
    "Guest",
    "GuestImage",
    "GuestRun",
    "QemuError",
    "boot_guest",
    "ensure_guest_image",
    "guest_packages",
    "image_key",
    "missing_requirements",
    "qemu_argv",
    "run_in_guest",
]

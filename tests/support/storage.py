"""Real file systems for quota tests: images mounted inside a test's sandbox.

Each image is a sparse file in /var/tmp. btrfs is mounted with `-o loop` (the loop
device is detached by the kernel when the file system is unmounted: autoclear). ZFS runs
in zfs-fuse (a pool on the file). Unmounted however the test ends, lazily if smbd still
holds a directory in it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def _unmount(where: Path) -> None:
    for _ in range(50):
        if subprocess.run(["umount", str(where)], capture_output=True, check=False).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(where)], check=False)


@contextlib.contextmanager
def btrfs_image(where: Path, size: str = "256M", quotas: bool = True) -> Iterator[Path]:
    """A fresh btrfs mounted on `where` (created if needed), quotas enabled if asked."""
    if shutil.which("mkfs.btrfs") is None:
        raise RuntimeError("mkfs.btrfs is missing: apt-get install btrfs-progs (make deps does)")
    where.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="smbgw-btrfs-", dir="/var/tmp") as scratch:
        image = Path(scratch) / "btrfs.img"
        subprocess.run(["truncate", "-s", size, str(image)], check=True)
        subprocess.run(["mkfs.btrfs", "-q", "-f", str(image)], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(where)], check=True)
        try:
            if quotas:
                subprocess.run(["btrfs", "quota", "enable", str(where)], check=True, capture_output=True)
            yield where
        finally:
            _unmount(where)


def _zfs_fuse_running() -> bool:
    return subprocess.run(["pgrep", "-x", "zfs-fuse"], capture_output=True, check=False).returncode == 0


@contextlib.contextmanager
def zfs_fuse_daemon(scratch: Path) -> Iterator[None]:
    """The zfs-fuse daemon, started for the test and stopped by its own pid afterwards.
    One already running (not ours) is used and left alone."""
    if _zfs_fuse_running():
        yield
        return
    pidfile = scratch / "zfs-fuse.pid"
    subprocess.run(["zfs-fuse", "--no-kstat-mount", "--pidfile", str(pidfile)], check=True, timeout=30)
    deadline = time.monotonic() + 30
    while subprocess.run(["zpool", "list"], capture_output=True, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError("zfs-fuse did not answer within 30 s")
        time.sleep(0.2)
    try:
        yield
    finally:
        pid = int(pidfile.read_text().strip())
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)


def _destroy_pool(pool: str) -> None:
    """zfs-fuse keeps a pool busy for a while after its datasets are unmounted: retry."""
    deadline = time.monotonic() + 150
    while True:
        done = subprocess.run(["zpool", "destroy", "-f", pool], capture_output=True, text=True, check=False)
        if done.returncode == 0 or "no such pool" in done.stderr or time.monotonic() > deadline:
            return
        time.sleep(1)


@contextlib.contextmanager
def zfs_pool(where: Path, size: str = "512M") -> Iterator[str]:
    """A fresh ZFS pool (zfs-fuse, on a sparse file) mounted at `where`; yields its name."""
    for tool in ("zfs-fuse", "zpool", "zfs"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is missing: apt-get install zfs-fuse (make deps does)")
    where.mkdir(parents=True, exist_ok=True)
    pool = f"smbgwt{os.getpid()}x{int(time.monotonic() * 1000) % 100000}"
    with tempfile.TemporaryDirectory(prefix="smbgw-zfs-", dir="/var/tmp") as scratch, \
            zfs_fuse_daemon(Path(scratch)):
        image = Path(scratch) / "pool.img"
        subprocess.run(["truncate", "-s", size, str(image)], check=True)
        subprocess.run(["zpool", "create", "-m", str(where), pool, str(image)], check=True, capture_output=True)
        try:
            yield pool
        finally:
            _destroy_pool(pool)
            for mount in reversed(subprocess.run(["findmnt", "-rn", "-o", "TARGET", "-R", str(where)],
                                                 capture_output=True, text=True, check=False).stdout.split()):
                _unmount(Path(mount))

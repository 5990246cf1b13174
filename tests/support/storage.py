"""Real file systems for quota tests: loop images mounted inside a test's sandbox.

Each image is a sparse file in /var/tmp, mounted with `-o loop` (the loop device is
detached by the kernel when the file system is unmounted: autoclear). Unmounted however
the test ends, lazily if smbd still holds a directory in it.
"""

from __future__ import annotations

import contextlib
import shutil
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

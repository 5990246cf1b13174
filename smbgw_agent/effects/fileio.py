"""Crash-safe file writes.

Every file the agent produces is written to a temporary file in the same directory,
fsynced and renamed over the target, so a SIGKILL or power loss leaves either the old
or the new content, never half of one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import tempfile
from pathlib import Path

from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.paths import Paths
from smbgw_agent.model.shares import check_resolved


def write_new(path: Path, data: bytes | str, mode: int = 0o644, fsync: bool = True) -> None:
    """Write a file in place, without the rename (for staging areas nobody reads yet)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    _fill(fd, path, data, mode, fsync)


def _fill(fd: int, path: Path, data: bytes, mode: int, fsync: bool) -> None:
    """Write `data` to the open `fd` (closed afterwards) for the file `path`: a full disk
    fails write() or fsync() with no file name, so the error gets `path`'s."""
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            if fsync:
                os.fsync(handle.fileno())
    except OSError as exc:
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644, durable: bool = True) -> None:
    """Replace `path` whole: a reader sees the old file or the new one, never a part.
    `durable=False` skips the fsyncs, for files that are regenerated anyway (under /run)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        _fill(fd, path, data, mode, durable)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename durable; renames live in the directory, not in the file."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


READ_BACK_LIMIT = 1 << 20


class TooLarge(OSError):
    """A file holds more than its reader accepts: not what the file should be."""


def read_limited(path: Path, limit: int) -> bytes | None:
    """The bytes of a file read as input (another program's output, a list kept by
    Proxmox): None when it does not exist, `TooLarge` when it holds more than `limit`
    bytes (found by reading one byte past it, never the whole file), OSError when it
    cannot be read."""
    with contextlib.suppress(FileNotFoundError), path.open("rb") as handle:
        data = handle.read(limit + 1)
        if len(data) > limit:
            raise TooLarge(f"{path} is larger than {limit} bytes")
        return data
    return None


def read_back(path: Path, limit: int = READ_BACK_LIMIT) -> str | None:
    """A file the agent wrote, read back as input to compare with what it should hold:
    None when it is missing; bounded (one byte past `limit`, so a longer file never
    equals any wanted text); undecodable bytes and read errors mean "different"."""
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"<unreadable: {exc}>"
    return data.decode("utf-8", errors="replace")


def replace_or_rewrite(target: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Replace `target` atomically where its directory is writable; where only the file is
    (systemd's `ReadWritePaths=` on one file in a read-only /etc: a rename over it fails),
    rewrite it in place: new content first, then cut to its length, then flushed. A crash
    in between leaves a file whose content differs from what was meant, which the next
    pass, comparing content, rewrites. FileNotFoundError when it must be rewritten in
    place and does not exist (it cannot be created there)."""
    try:
        atomic_write(target, data, mode=mode)
        return
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EBUSY, errno.EXDEV, errno.EACCES):
            raise
        if not target.is_file():
            raise FileNotFoundError(errno.ENOENT, f"{target} does not exist", str(target)) from None
    encoded = data.encode("utf-8") if isinstance(data, str) else data
    fd = os.open(target, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        written = 0
        while written < len(encoded):
            written += os.pwrite(fd, encoded[written:], written)
        os.ftruncate(fd, len(encoded))
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temporaries(directory: Path, target: str = "") -> list[Path]:
    """Delete leftovers of `atomic_write`s interrupted by a crash (`.NAME.XXXX.tmp`).

    `target` limits it to temporaries of one file (in a directory the agent shares with
    others, such as /etc/samba). Only the process that writes there may call this.
    """
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    prefix = f".{target}." if target else "."
    for entry in directory.iterdir():
        if entry.name.startswith(prefix) and entry.name.endswith(".tmp") and entry.is_file():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


BATCH_SYNC_THRESHOLD = 64


def syncs_one_by_one(count: int) -> bool:
    """Whether `count` new files are best made durable by an fsync each. If not (a cold
    start of 2,000 shares), the caller writes them all and then makes one `syncfs` of
    their file system instead of 2,000 fsyncs."""
    return count <= BATCH_SYNC_THRESHOLD


def write_files(files: dict[Path, str], fsync: bool) -> None:
    """`write_new` for each file: a part of a batch whose caller syncs it as a whole."""
    for path, text in files.items():
        write_new(path, text, fsync=fsync)


def syncfs(directory: Path) -> None:
    """syncfs(2) through libc; falls back to sync(2) where it is unavailable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        if libc.syncfs(fd) != 0:
            os.sync()
    except (OSError, AttributeError):
        os.sync()
    finally:
        os.close(fd)


def make_share_directory(host_path: Path, declared: str, config: AgentConfig, paths: Paths) -> None:
    """Create a share directory (0755) exactly where validation said it would be.

    The parent is opened first and the directory is made relative to that descriptor, so
    a parent swapped for a symbolic link between the check and the mkdir cannot redirect
    it: what is checked (the real path of the open descriptor) is where it lands. The
    parent must exist: a missing one is storage that is not there, never created here.
    """
    fd = os.open(host_path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        real_parent = os.readlink(f"/proc/self/fd/{fd}")
        check_resolved(declared, declared, os.path.join(real_parent, host_path.name), config, paths)
        os.mkdir(host_path.name, 0o755, dir_fd=fd)
    finally:
        os.close(fd)

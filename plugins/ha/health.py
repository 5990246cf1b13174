"""Can this node serve a share right now? The question a virtual IP is gated on.

A node holds a share's address only while a client that reaches it would be served:
smbd is running and the share's directory can be read. A directory on a storage that
hangs (an NFS server gone) must not hang the agent with it, so the read runs on a
helper thread with a time limit, and a check still stuck from before is reported as
hanging without starting another.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from smbgw_agent.model.paths import Paths
from smbgw_agent.platform.context import PassContext

PATH_TIMEOUT = 2.0
SMBD_PID = "/run/samba/smbd.pid"


def _read_directory(path: Path) -> str | None:
    try:
        with os.scandir(path) as entries:
            next(entries, None)
    except FileNotFoundError:
        return f"{path} does not exist"
    except NotADirectoryError:
        return f"{path} is not a directory"
    except OSError as exc:
        return f"{path} cannot be read: {exc.strerror or exc}"
    return None


class PathCheck:
    """Reads of share directories, each bounded by `timeout` seconds."""

    def __init__(self, read: Callable[[Path], str | None] = _read_directory, timeout: float = PATH_TIMEOUT) -> None:
        self._read = read
        self._timeout = timeout
        self._lock = threading.Lock()
        self._pending: dict[Path, threading.Thread] = {}

    def problem(self, path: Path) -> str | None:
        """None when `path` is a readable directory, else why not."""
        with self._lock:
            stuck = self._pending.get(path)
            if stuck is not None and stuck.is_alive():
                return f"{path} does not answer (a read has been hanging for more than {self._timeout:g}s)"
        answer: list[str | None] = []
        worker = threading.Thread(target=lambda: answer.append(self._read(path)), daemon=True,
                                  name="smbgw-vip-path")
        worker.start()
        worker.join(self._timeout)
        if worker.is_alive():
            with self._lock:
                self._pending[path] = worker
            return f"{path} does not answer within {self._timeout:g}s"
        with self._lock:
            self._pending.pop(path, None)
        return answer[0] if answer else f"{path}: the check failed"


def _pid_alive(pid_file: Path) -> bool:
    """smbd's pid file names a live smbd (for a node whose smbd systemd cannot report on:
    a sandbox, a container without systemd)."""
    try:
        pid = int(pid_file.read_text(encoding="ascii", errors="replace")[:32].strip())
        comm = Path(f"/proc/{pid}/comm").read_text(encoding="ascii", errors="replace")
    except (OSError, ValueError):
        return False
    return pid > 1 and comm.strip().startswith("smbd")


def smbd_problem(ctx: PassContext) -> str | None:
    """None while smbd runs; asks systemd (or whoever owns smbd), else smbd's pid file."""
    running = ctx.smbd.is_running(ctx) if ctx.smbd is not None else None
    if running is None:
        running = _pid_alive(smbd_pid_file(ctx.paths))
    return None if running else "smbd is not running"


def smbd_pid_file(paths: Paths) -> Path:
    return paths.host(SMBD_PID)

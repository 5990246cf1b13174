"""A root-only Unix socket through which `smbgwctl reconcile` asks for a pass.

One JSON object per line each way. The request is handed to the main loop (the only
thread that reconciles) and the reply carries that pass's result.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
MAX_REQUEST = 4096


@dataclass
class Request:
    command: str
    done: threading.Event = field(default_factory=threading.Event)
    reply: dict[str, Any] = field(default_factory=dict)


class ControlServer:
    def __init__(self, path: Path, requests: queue.Queue[Request], wake: threading.Event) -> None:
        self.path = path
        self.requests = requests
        self.wake = wake
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old_umask)
        sock.listen(8)
        sock.settimeout(0.5)
        self._socket = sock
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        if self._socket is not None:
            self._socket.close()
        if self._thread is not None:
            self._thread.join(timeout=2)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _serve(self) -> None:
        assert self._socket is not None
        while not self._stopping:
            try:
                conn, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                data = conn.makefile("rb").readline(MAX_REQUEST)
                message = json.loads(data.decode("utf-8"))
                command = message.get("command") if isinstance(message, dict) else None
            except (OSError, ValueError, UnicodeDecodeError):
                command = None
            if command not in ("reconcile", "ping"):
                reply: dict[str, Any] = {"ok": False, "error": "unknown or malformed request"}
            elif command == "ping":
                reply = {"ok": True}
            else:
                request = Request(command)
                self.requests.put(request)
                self.wake.set()
                if request.done.wait(timeout=300):
                    reply = request.reply
                else:
                    reply = {"ok": False, "error": "the agent did not finish the pass in 300s"}
            with contextlib.suppress(OSError):
                conn.settimeout(5)
                conn.sendall(json.dumps(reply).encode() + b"\n")


def request(path: Path, command: str, timeout: float = 310.0) -> dict[str, Any]:
    """Client side; raises OSError when no agent listens."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps({"command": command}).encode() + b"\n")
        data = sock.makefile("rb").readline(1 << 20)
    reply = json.loads(data.decode("utf-8"))
    if not isinstance(reply, dict):
        raise ValueError("malformed reply from the agent")
    return reply

"""A root-only Unix socket through which `smbgwctl reconcile` asks for a pass, and
plugin verbs (`smbgwctl snapshot SHARE`) ask for a job.

One JSON object per line each way. A `reconcile` request is acknowledged at once
(`{"accepted": true}`), handed to the main loop (the only thread that reconciles), and
answered with that pass's result. The acknowledgement lets a client tell a busy agent
from a dead or mute one within seconds instead of waiting out a whole pass. A `run`
request (`{"command": "run", "verb": "snapshot", "arguments": {"share": "finance"}}`)
is acknowledged the same way; the main loop starts the plugin's job between passes, and
the reply is the job's outcome once it ends (bounded by the job's own time limit).

Bounded everywhere: a listen backlog for bursts, at most `MAX_CLIENTS` handled at once
(more wait their turn), a 5 s limit to send the request, and a bounded wait for the pass.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
MAX_REQUEST = 4096
MAX_REPLY = 16 << 20
MAX_CLIENTS = 32
BACKLOG = 128
PASS_WAIT = 300.0


@dataclass
class Request:
    command: str
    payload: dict[str, Any] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    reply: dict[str, Any] = field(default_factory=dict)
    # Set by the main loop for a `run` request: waits for the job and gives the reply.
    follow: Callable[[], dict[str, Any]] | None = None


class ControlServer:
    def __init__(self, path: Path, requests: queue.Queue[Request], wake: threading.Event) -> None:
        self.path = path
        self.requests = requests
        self.wake = wake
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)

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
        sock.listen(BACKLOG)
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
            except OSError as exc:
                if self._stopping or exc.errno in (errno.EBADF, errno.EINVAL):
                    return
                time.sleep(0.1)  # out of descriptors or memory: wait, do not give up
                continue
            # At the cap, wait for a slot: clients queue in the listen backlog (and retry
            # while it is full) instead of being turned away.
            while not self._slots.acquire(timeout=0.5):
                if self._stopping:
                    conn.close()
                    return
            threading.Thread(target=self._handle_bounded, args=(conn,), daemon=True).start()

    def _handle_bounded(self, conn: socket.socket) -> None:
        try:
            self._handle(conn)
        finally:
            self._slots.release()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                with conn.makefile("rb") as reader:
                    data = reader.readline(MAX_REQUEST)
                message = json.loads(data.decode("utf-8"))
                command = message.get("command") if isinstance(message, dict) else None
            except (OSError, ValueError, UnicodeDecodeError):
                message, command = None, None
            if command not in ("reconcile", "ping", "run"):
                reply: dict[str, Any] = {"ok": False, "error": "unknown or malformed request"}
            elif command == "ping":
                reply = {"ok": True}
            else:
                with contextlib.suppress(OSError):
                    conn.sendall(b'{"accepted": true}\n')
                assert isinstance(message, dict)
                request = Request(command, message)
                self.requests.put(request)
                self.wake.set()
                if request.done.wait(timeout=PASS_WAIT):
                    reply = request.follow() if request.follow is not None else request.reply
                else:
                    reply = {"ok": False, "error": f"the agent did not finish the pass in {PASS_WAIT:g}s"}
            with contextlib.suppress(OSError):
                conn.settimeout(5)
                conn.sendall(json.dumps(reply).encode() + b"\n")


def _connect(path: Path, timeout: float) -> socket.socket:
    """Connect, retrying while the listen backlog is full (EAGAIN) up to `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            sock.connect(str(path))
            return sock
        except BlockingIOError:
            sock.close()
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{path}: the agent accepted no connection within {timeout:g}s") from None
            time.sleep(0.05)
        except BaseException:
            sock.close()
            raise


def _read_line(sock: socket.socket, timeout: float, what: str) -> dict[str, Any]:
    sock.settimeout(timeout)
    data = bytearray()
    while not data.endswith(b"\n"):
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise TimeoutError(f"the agent sent no {what} within {timeout:g}s") from None
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REPLY:
            raise ValueError(f"the agent's {what} is larger than {MAX_REPLY} bytes")
    if not data:
        raise ValueError(f"the agent closed the connection without a {what}")
    reply = json.loads(bytes(data).decode("utf-8"))
    if not isinstance(reply, dict):
        raise ValueError(f"malformed {what} from the agent")
    return reply


def request(
    path: Path, command: str, connect_timeout: float = 5.0, ack_timeout: float = 10.0,
    timeout: float = PASS_WAIT + 10.0, **fields: Any,
) -> dict[str, Any]:
    """Client side; raises OSError (no agent, no answer) or ValueError (a garbled one).

    A mute socket costs `ack_timeout`, not a whole pass: a live agent acknowledges a
    reconcile request at once and only then runs the pass.
    """
    with _connect(path, connect_timeout) as sock:
        sock.settimeout(connect_timeout)
        sock.sendall(json.dumps({**fields, "command": command}).encode() + b"\n")
        first = _read_line(sock, ack_timeout, "acknowledgement")
        if not first.get("accepted"):
            return first
        return _read_line(sock, timeout, "result")

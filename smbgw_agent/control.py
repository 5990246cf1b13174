"""A root-only Unix socket through which `smbgwctl reconcile` asks for a pass, and
plugin verbs (`smbgwctl snapshot SHARE`) ask for a job.

One JSON object per line each way. A `reconcile` request is acknowledged at once
(`{"accepted": true}`), handed to the main loop (the only thread that reconciles), and
answered with that pass's result. The acknowledgement lets a client tell a busy agent
from a dead or mute one within seconds instead of waiting out a whole pass. A `run`
request (`{"command": "run", "verb": "snapshot", "arguments": {"share": "finance"}}`)
is acknowledged the same way; the main loop starts the plugin's job between passes, and
the reply is the job's outcome once it ends (bounded by the job's own time limit). A
`run` request that asks for it with `"progress": true` also gets, while the job runs,
a line `{"progress": "waiting for 3 sessions to end"}` each time the job's progress
text changes, before the reply: someone draining a node sees it move. A client that
does not ask gets exactly the two lines it always got.

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
SEND_WAIT = 5.0

# Called with each new progress text of the job a `run` request follows.
OnProgress = Callable[[str], None]


class ClientGone(Exception):
    """The client of a `run` request stopped reading: stop following its job (which runs
    on) and free the connection slot instead of holding it for the job's whole life."""


@dataclass
class Request:
    command: str
    payload: dict[str, Any] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    reply: dict[str, Any] = field(default_factory=dict)
    # Set by the main loop for a `run` request: waits for the job, telling `on_progress`
    # what it reports meanwhile, and gives the reply.
    follow: Callable[[OnProgress], dict[str, Any]] | None = None


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
                assert isinstance(message, dict)
                answer = self._queue(conn, command, message)
                if answer is None:
                    return
                reply = answer
            with contextlib.suppress(OSError):
                conn.settimeout(SEND_WAIT)
                conn.sendall(json.dumps(reply).encode() + b"\n")

    def _queue(self, conn: socket.socket, command: str, message: dict[str, Any]) -> dict[str, Any] | None:
        """Acknowledge, hand the request to the main loop and wait for its reply (for a
        `run`: follow the job, streaming its progress if asked); None if the client
        went away meanwhile."""
        with contextlib.suppress(OSError):
            conn.sendall(b'{"accepted": true}\n')
        request = Request(command, message)
        self.requests.put(request)
        self.wake.set()
        if not request.done.wait(timeout=PASS_WAIT):
            return {"ok": False, "error": f"the agent did not finish the pass in {PASS_WAIT:g}s"}
        if request.follow is None:
            return request.reply
        try:
            return request.follow(_progress_sender(conn, message.get("progress") is True))
        except ClientGone as exc:
            log.info("a %s client stopped reading (%s); its job runs on", command, exc)
            return None


def _progress_sender(conn: socket.socket, wanted: bool) -> OnProgress:
    """What a followed job's progress becomes: a line to the client that asked for it
    (bounded by SEND_WAIT: a client that stops reading is gone), nothing for one that
    did not (an older smbgwctl reads exactly one line after the acknowledgement)."""
    def send(text: str) -> None:
        if not wanted:
            return
        try:
            conn.settimeout(SEND_WAIT)
            conn.sendall(json.dumps({"progress": text}).encode() + b"\n")
        except OSError as exc:
            raise ClientGone(str(exc)) from exc
    return send


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


class _Lines:
    """The agent's lines, one JSON object each, read through one buffer: a line may
    arrive in pieces, and several (the acknowledgement, progress, the reply) in one
    piece. Each line is bounded by MAX_REPLY."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()

    def read(self, timeout: float, what: str, deadline: float | None = None) -> dict[str, Any]:
        """The next line, within `timeout` seconds (or by `deadline`, a monotonic time,
        when several lines share one `timeout`)."""
        deadline = time.monotonic() + timeout if deadline is None else deadline
        complete = b"\n" in self._buffer
        while not complete and len(self._buffer) <= MAX_REPLY:
            self._sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                raise TimeoutError(f"the agent sent no {what} within {timeout:g}s") from None
            if not chunk:
                break
            self._buffer += chunk
            complete = b"\n" in chunk
        line, newline, rest = bytes(self._buffer).partition(b"\n")
        if len(line) > MAX_REPLY:
            raise ValueError(f"the agent's {what} is larger than {MAX_REPLY} bytes")
        if not line and not newline:
            raise ValueError(f"the agent closed the connection without a {what}")
        self._buffer = bytearray(rest)
        reply = json.loads(line.decode("utf-8"))
        if not isinstance(reply, dict):
            raise ValueError(f"malformed {what} from the agent")
        return reply


def _is_progress(line: dict[str, Any]) -> bool:
    return set(line) == {"progress"}


def request(
    path: Path, command: str, connect_timeout: float = 5.0, ack_timeout: float = 10.0,
    timeout: float = PASS_WAIT + 10.0, on_progress: OnProgress | None = None, **fields: Any,
) -> dict[str, Any]:
    """Client side; raises OSError (no agent, no answer) or ValueError (a garbled one).

    A mute socket costs `ack_timeout`, not a whole pass: a live agent acknowledges a
    reconcile request at once and only then runs the pass. With `on_progress`, the
    request asks for the progress of the job it runs and `on_progress` gets each text
    as it comes; `timeout` bounds the whole wait for the result, progress included.
    """
    with _connect(path, connect_timeout) as sock:
        sock.settimeout(connect_timeout)
        asked = {"progress": True} if on_progress is not None else {}
        sock.sendall(json.dumps({**fields, **asked, "command": command}).encode() + b"\n")
        lines = _Lines(sock)
        first = lines.read(ack_timeout, "acknowledgement")
        if not first.get("accepted"):
            return first
        deadline = time.monotonic() + timeout
        while True:
            line = lines.read(timeout, "result", deadline)
            if not _is_progress(line):
                return line
            if on_progress is not None:
                on_progress(str(line["progress"]))

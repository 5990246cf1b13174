"""TEST STAND-IN (never shipped): a client of the QEMU guest agent's protocol, as the
`qm` stand-in's `guest cmd` and `guest exec` speak it to a VM's agent socket.

The protocol (QEMU's qga/qapi-schema.json, and how Proxmox's PVE::QemuServer::Agent and
PVE::QMPClient use it): JSON objects over a virtio-serial port, one request at a time.
A client first synchronises with ``guest-sync-delimited``: the agent answers with a
0xFF byte (it may have half-written output from an earlier client in the channel),
then ``{"return": ID}``; everything before the 0xFF is discarded. Then:

- ``guest-ping`` -> ``{"return": {}}``;
- ``guest-exec`` {path, arg, input-data (base64), capture-output} -> ``{"return": {"pid": N}}``;
- ``guest-exec-status`` {pid} -> ``{"return": {"exited": bool, "exitcode": N,
  "out-data": base64, "err-data": base64, "out-truncated": bool, ...}}``;
- an error is ``{"error": {"class": ..., "desc": ...}}``.
"""

from __future__ import annotations

import base64
import json
import random
import socket
import time
from typing import Any

DELIMITER = b"\xff"
MAX_REPLY = 16 << 20


class AgentError(RuntimeError):
    """The agent did not answer, or answered with an error."""


class AgentClient:
    def __init__(self, sock: socket.socket, timeout: float = 10.0) -> None:
        self.sock = sock
        self.sock.settimeout(timeout)
        self._buffer = b""

    @classmethod
    def connect(cls, path: str, timeout: float = 10.0) -> AgentClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise AgentError(f"cannot reach the guest agent socket {path}: {exc}") from None
        client = cls(sock, timeout)
        client.sync()
        return client

    def close(self) -> None:
        self.sock.close()

    def _send(self, request: dict[str, Any]) -> None:
        try:
            self.sock.sendall(json.dumps(request).encode() + b"\n")
        except OSError as exc:
            raise AgentError(f"cannot write to the guest agent: {exc}") from None

    def _read_object(self) -> dict[str, Any]:
        decoder = json.JSONDecoder()
        while True:
            text = self._buffer.decode(errors="replace").lstrip()
            if text:
                try:
                    value, end = decoder.raw_decode(text)
                except ValueError:
                    value, end = None, 0
                if value is not None:
                    self._buffer = text[end:].encode()
                    if not isinstance(value, dict):
                        raise AgentError(f"the guest agent sent {str(value)[:80]!r}, not an object")
                    return value
            if len(self._buffer) > MAX_REPLY:
                raise AgentError("the guest agent sent more than 16 MiB without a whole reply")
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise AgentError("the guest agent did not answer in time") from None
            if not chunk:
                raise AgentError("the guest agent closed the channel")
            self._buffer += chunk

    def sync(self) -> None:
        """guest-sync-delimited: drop whatever an earlier client left in the channel."""
        token = random.randrange(1, 1 << 31)
        self._send({"execute": "guest-sync-delimited", "arguments": {"id": token}})
        deadline = time.monotonic() + (self.sock.gettimeout() or 10.0)
        while DELIMITER not in self._buffer:
            if time.monotonic() > deadline:
                raise AgentError("the guest agent did not answer guest-sync-delimited")
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise AgentError("the guest agent did not answer guest-sync-delimited") from None
            if not chunk:
                raise AgentError("the guest agent closed the channel")
            self._buffer += chunk
        self._buffer = self._buffer.split(DELIMITER)[-1]
        reply = self._read_object()
        if reply.get("return") != token:
            raise AgentError(f"the guest agent answered the sync with {reply!r}")

    def call(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self._send(request)
        reply = self._read_object()
        if "error" in reply:
            error = reply["error"] if isinstance(reply["error"], dict) else {}
            raise AgentError(f"{command}: {error.get('desc') or reply['error']}")
        if "return" not in reply:
            raise AgentError(f"{command}: the guest agent answered {str(reply)[:80]!r}")
        return reply["return"]

    def ping(self) -> None:
        self.call("guest-ping")

    def exec(self, argv: list[str], stdin: bytes | None = None) -> int:
        arguments: dict[str, Any] = {"path": argv[0], "arg": argv[1:], "capture-output": True}
        if stdin is not None:
            arguments["input-data"] = base64.b64encode(stdin).decode()
        result = self.call("guest-exec", arguments)
        if not isinstance(result, dict) or not isinstance(result.get("pid"), int):
            raise AgentError(f"guest-exec answered {result!r}, not a pid")
        return int(result["pid"])

    def exec_status(self, pid: int) -> dict[str, Any]:
        result = self.call("guest-exec-status", {"pid": pid})
        if not isinstance(result, dict):
            raise AgentError(f"guest-exec-status answered {result!r}")
        return result

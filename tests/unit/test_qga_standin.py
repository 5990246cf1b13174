"""The `qm` stand-in's guest agent client (tests/support/qm_standin/qga.py) against a
scripted agent on a socket pair: the delimited sync drops stale output, commands and
errors as QEMU's agent sends them."""

from __future__ import annotations

import base64
import json
import socket
import threading

import pytest

from tests.support.qm_standin.qga import AgentClient, AgentError


def agent(server: socket.socket, stale: bytes = b"", errors: bool = False) -> None:
    """A minimal agent: answers sync (after `stale` bytes), ping, exec, exec-status."""
    buffer = b""
    with server:
        while True:
            chunk = server.recv(65536)
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                request = json.loads(line)
                command = request["execute"]
                if command == "guest-sync-delimited":
                    server.sendall(stale + b"\xff" + json.dumps({"return": request["arguments"]["id"]}).encode())
                elif errors:
                    server.sendall(json.dumps({"error": {"class": "GenericError", "desc": "no such pid"}}).encode())
                elif command == "guest-ping":
                    server.sendall(b'{"return": {}}\n')
                elif command == "guest-exec":
                    given = base64.b64decode(request["arguments"].get("input-data", "")).decode()
                    server.sendall(json.dumps({"return": {"pid": 4321 if given == "pw\n" else 1}}).encode())
                elif command == "guest-exec-status":
                    out = base64.b64encode(b"Join is OK\n").decode()
                    server.sendall(json.dumps({"return": {"exited": True, "exitcode": 0, "out-data": out}}).encode())


def client(stale: bytes = b"", errors: bool = False) -> AgentClient:
    ours, theirs = socket.socketpair()
    threading.Thread(target=agent, args=(theirs, stale, errors), daemon=True).start()
    made = AgentClient(ours, timeout=5.0)
    made.sync()
    return made


def test_sync_drops_what_an_earlier_client_left_and_commands_answer() -> None:
    with_stale = client(stale=b'{"return": {"pid": 99}}  half a rep')
    with_stale.ping()
    assert with_stale.exec(["net", "ads", "testjoin"], stdin=b"pw\n") == 4321
    status = with_stale.exec_status(4321)
    assert status["exited"] is True and base64.b64decode(status["out-data"]) == b"Join is OK\n"
    with_stale.close()


def test_an_agent_error_is_raised_with_its_description() -> None:
    failing = client(errors=True)
    with pytest.raises(AgentError, match="guest-exec-status: no such pid"):
        failing.exec_status(7)


def test_a_silent_or_closed_agent_is_an_error() -> None:
    ours, theirs = socket.socketpair()
    silent = AgentClient(ours, timeout=0.3)
    with pytest.raises(AgentError, match="did not answer"):
        silent.sync()
    theirs.close()
    with pytest.raises(AgentError):
        AgentClient(ours, timeout=0.3).sync()

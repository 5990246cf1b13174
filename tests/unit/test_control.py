"""The control socket's `run` request: progress lines for a client that asks, exactly the
old two lines for one that does not, and a client side that reads bounded lines."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from smbgw_agent import control
from smbgw_agent.control import request
from smbgw_agent.platform.jobs import Job
from tests.support.jobloop import job_loop, short_directory


@pytest.fixture
def socket_path() -> Iterator[Path]:
    with short_directory() as directory:
        yield directory / "control.sock"


def test_a_client_that_asks_sees_each_progress_text_in_order_then_the_reply(socket_path: Path) -> None:
    seen_one = threading.Event()

    def drain(progress: Any) -> dict[str, Any]:
        progress.report("one")
        assert seen_one.wait(10)
        progress.report("two")
        return {"text": "drained pve1"}

    events: list[Any] = []

    def on_progress(text: str) -> None:
        events.append(text)
        if text == "one":
            seen_one.set()

    with job_loop(socket_path, Job("drain:pve1", drain, 30)) as loop:
        reply = request(socket_path, "run", on_progress=on_progress, verb="drain", arguments={"node": "pve1"})
        events.append(reply)
    assert events[:2] == ["one", "two"] and len(events) == 3
    assert reply["ok"] is True and reply["state"] == "succeeded" and reply["result"] == {"text": "drained pve1"}
    assert loop.payloads == [{"command": "run", "verb": "drain", "arguments": {"node": "pve1"}, "progress": True}]


def read_all(path: Path, message: dict[str, Any]) -> list[dict[str, Any]]:
    """Every line the agent sends for `message`, as a client written before progress
    lines existed would get them."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(20)
        sock.connect(str(path))
        sock.sendall(json.dumps(message).encode() + b"\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


def test_a_client_that_does_not_ask_gets_the_acknowledgement_and_the_reply_only(socket_path: Path) -> None:
    def drain(progress: Any) -> dict[str, Any]:
        for text in ("one", "two", "three"):
            progress.report(text)
            time.sleep(0.4)  # longer than a poll: each would be sent to a client that asked
        return {"text": "drained"}

    with job_loop(socket_path, Job("drain", drain, 30)):
        lines = read_all(socket_path, {"command": "run", "verb": "drain", "arguments": {}})
    assert len(lines) == 2 and lines[0] == {"accepted": True}
    assert lines[1]["ok"] is True and lines[1]["result"] == {"text": "drained"}


def test_a_client_that_stops_reading_frees_its_connection_and_the_job_runs_on(socket_path: Path) -> None:
    release = threading.Event()

    def drain(progress: Any) -> None:
        count = 0
        while not release.wait(0.05):
            count += 1
            progress.report(f"waiting, round {count}")

    with job_loop(socket_path, Job("drain", drain, 30)) as loop:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(socket_path))
            sock.sendall(b'{"command": "run", "verb": "drain", "arguments": {}, "progress": true}\n')
            assert sock.recv(100).startswith(b'{"accepted": true}')
        assert loop.followed.wait(10), "the server noticed the client was gone"
        assert loop.follows == ["ClientGone"]
        record = loop.jobs.record("drain")
        assert record is not None and record.state == "running"
        release.set()
        assert loop.jobs.wait("drain", 10) is not None


# ---- the client side, against an agent that says exactly what a test wants ---------------------


def fake_agent(path: Path, answer: Callable[[socket.socket, dict[str, Any]], None]) -> threading.Thread:
    """Serve one connection: read the request, let `answer` write whatever it likes."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn, conn.makefile("rb") as reader:
                answer(conn, json.loads(reader.readline()))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_lines_that_arrive_together_are_read_one_by_one(socket_path: Path) -> None:
    asked: list[dict[str, Any]] = []

    def answer(conn: socket.socket, message: dict[str, Any]) -> None:
        asked.append(message)
        conn.sendall(b'{"accepted": true}\n{"progress": "one"}\n{"progress": 2}\n{"ok": true, "job": "drain"}\n')

    thread = fake_agent(socket_path, answer)
    seen: list[str] = []
    reply = request(socket_path, "run", on_progress=seen.append, timeout=5, verb="drain", arguments={})
    thread.join(5)
    assert seen == ["one", "2"] and reply == {"ok": True, "job": "drain"}
    assert asked[0]["progress"] is True


def test_a_reply_that_comes_in_pieces_is_put_together(socket_path: Path) -> None:
    def answer(conn: socket.socket, message: dict[str, Any]) -> None:
        for piece in (b'{"accep', b'ted": true}\n{"prog', b'ress": "one"}\n{"ok"', b': false}\n'):
            conn.sendall(piece)
            time.sleep(0.05)

    thread = fake_agent(socket_path, answer)
    seen: list[str] = []
    assert request(socket_path, "run", on_progress=seen.append, timeout=5, verb="x") == {"ok": False}
    thread.join(5)
    assert seen == ["one"]


def test_a_client_that_does_not_ask_ignores_progress_lines_it_gets_anyway(socket_path: Path) -> None:
    def answer(conn: socket.socket, message: dict[str, Any]) -> None:
        assert "progress" not in message
        conn.sendall(b'{"accepted": true}\n{"progress": "one"}\n{"ok": true}\n')

    thread = fake_agent(socket_path, answer)
    assert request(socket_path, "run", timeout=5, verb="x") == {"ok": True}
    thread.join(5)


def test_a_line_over_the_limit_is_refused_without_reading_on(socket_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "MAX_REPLY", 1000)

    def answer(conn: socket.socket, message: dict[str, Any]) -> None:
        conn.sendall(b'{"accepted": true}\n{"progress": "' + b"x" * 5000)
        time.sleep(1)

    thread = fake_agent(socket_path, answer)
    with pytest.raises(ValueError, match="larger than 1000 bytes"):
        request(socket_path, "run", on_progress=lambda text: None, timeout=5, verb="x")
    thread.join(5)


@pytest.mark.parametrize("garbage", [b"[1, 2]\n", b"not json\n", b"\xff\xfe\n", b""])
def test_a_garbled_or_missing_line_is_a_value_error(socket_path: Path, garbage: bytes) -> None:
    def answer(conn: socket.socket, message: dict[str, Any]) -> None:
        conn.sendall(b'{"accepted": true}\n{"progress": "one"}\n' + garbage)

    thread = fake_agent(socket_path, answer)
    with pytest.raises(ValueError):
        request(socket_path, "run", on_progress=lambda text: None, timeout=5, verb="x")
    thread.join(5)


def test_progress_does_not_extend_the_wait_for_the_result(socket_path: Path) -> None:
    stop = threading.Event()

    def answer(conn: socket.socket, message: dict[str, Any]) -> None:
        conn.sendall(b'{"accepted": true}\n')
        with contextlib.suppress(OSError):  # until the client gives up and closes
            while not stop.wait(0.05):
                conn.sendall(b'{"progress": "still here"}\n')

    thread = fake_agent(socket_path, answer)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"no result within 0\.5s"):
        request(socket_path, "run", on_progress=lambda text: None, timeout=0.5, verb="x")
    assert time.monotonic() - started < 3
    thread.join(5)
    stop.set()

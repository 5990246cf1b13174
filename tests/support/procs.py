"""Helpers for tests that drive the real agent process: restarts, sd_notify, snapshots.

`tests/support/agent.py` starts an agent once; the tests here also restart it (after
SIGTERM or SIGKILL), run it under a notify socket, and compare the sandbox before and
after a command to prove the command had no effects.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.sandbox import Sandbox, free_port
from tests.support.agent import REPO, AgentProcess
from tests.support.proctree import descendants, kill_survivors

SDNOTIFY_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
# What testparm prints for a configuration smbd would not load as written (it exits 0
# for unknown parameters, so stderr is read too).
TESTPARM_ERRORS = re.compile(
    r"Unknown parameter|Ignoring unknown parameter|Error loading|not boolean|invalid .*value|"
    r"^ERROR|Can't load|Can't find include file|Unable to open",
    re.IGNORECASE | re.MULTILINE,
)


def agent_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name in SDNOTIFY_VARS:
        env.pop(name, None)
    env.update(extra or {})
    return env


def run_agent_once(root: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m smbgw_agent --root ROOT ARGS`, waited for, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "smbgw_agent", "--root", str(root), *args],
        capture_output=True, text=True, timeout=timeout, env=agent_env(), check=False,
        stdin=subprocess.DEVNULL,
    )


def smbgwctl(root: Path | None, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    prefix = ["--root", str(root)] if root is not None else []
    return subprocess.run(
        [sys.executable, "-m", "smbgw_agent.cli", *prefix, *args],
        capture_output=True, text=True, timeout=timeout, env=agent_env(), check=False,
        stdin=subprocess.DEVNULL,
    )


class RestartableAgent(AgentProcess):
    """An agent that can be started again after it stopped or was killed.

    `start()` waits for a pass of *this* process (status.json's `updated` is newer than
    the start), not for a status file a previous process left behind.
    """

    def __init__(
        self, box: Sandbox, env: dict[str, str] | None = None, extra_args: list[str] | None = None,
        prefix: list[str] | None = None,
    ) -> None:
        super().__init__(box, extra_args)
        self.env = env or {}
        # Put in front of the command, e.g. ["prlimit", "--nofile=1024:1024", "--"].
        self.prefix = prefix or []

    def start(self, wait: bool = True, timeout: float = 60) -> None:  # type: ignore[override]
        assert self.proc is None or self.proc.poll() is not None, "agent already running"
        since = time.time()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", "smbgw_agent", "--root", str(self.box.root),
                 "--log-level", "debug", *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=agent_env(self.env),
            )
        if wait:
            self.wait_status(lambda s: s.get("updated", 0) >= since and s.get("pass") is not None, timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_status(self, predicate: Callable[[dict[str, Any]], Any], timeout: float = 30) -> dict[str, Any]:
        """Wait until status.json satisfies `predicate`; fail early if the agent died."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while True:
            status = self.status()
            if status is not None:
                last = status
                if predicate(status):
                    return status
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"agent exited with {self.proc.returncode}; log tail:\n{self.log_text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                summary = json.dumps({k: last.get(k) for k in ("pass", "passes")} if last else None)
                raise AssertionError(f"status condition not met within {timeout}s; last: {summary[:2000]}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as after a crash or an OOM kill."""
        if self.proc is not None and self.proc.poll() is None:
            started = descendants(self.proc.pid)
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            kill_survivors(started)


# ---- sd_notify ---------------------------------------------------------------------------


@dataclass
class Notification:
    at: float  # time.monotonic() of arrival
    fields: dict[str, str]


@dataclass
class NotifySocket:
    """A real AF_UNIX datagram socket playing systemd's side of sd_notify(3)."""

    path: Path
    messages: list[Notification] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self._sock.settimeout(0.2)
        self._stop = False
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = {}
            for line in data.decode("utf-8", "replace").splitlines():
                key, _, value = line.partition("=")
                fields[key] = value
            with self._lock:
                self.messages.append(Notification(time.monotonic(), fields))

    def snapshot(self) -> list[Notification]:
        with self._lock:
            return list(self.messages)

    def wait(self, predicate: Callable[[Notification], bool], timeout: float = 20, after: int = 0) -> int:
        """Index of the first message at or after `after` matching `predicate`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for index, message in enumerate(self.snapshot()[after:], start=after):
                if predicate(message):
                    return index
            time.sleep(0.01)
        seen = [m.fields for m in self.snapshot()[after:]][-20:]
        raise AssertionError(f"no matching sd_notify message within {timeout}s; last seen: {seen}")

    def close(self) -> None:
        self._stop = True
        self._sock.close()
        self._thread.join(2)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


# ---- filesystem snapshots and checks -----------------------------------------------------


def snapshot_tree(root: Path, exclude: Iterable[Path] = ()) -> dict[str, tuple[Any, ...]]:
    """Every entry below `root` with its kind, mode, size, mtime and content digest."""
    excluded = [p.resolve() for p in exclude]
    entries: dict[str, tuple[Any, ...]] = {}
    for directory, dirnames, filenames in os.walk(root):
        here = Path(directory)
        dirnames[:] = [d for d in dirnames if (here / d).resolve() not in excluded]
        for name in [*dirnames, *filenames]:
            path = here / name
            if path.resolve() in excluded:
                continue
            info = path.lstat()
            digest = ""
            if path.is_file() and not path.is_symlink():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            entries[str(path.relative_to(root))] = (info.st_mode, info.st_size, info.st_mtime_ns, digest)
    return entries


def describe_difference(before: dict[str, tuple[Any, ...]], after: dict[str, tuple[Any, ...]]) -> str:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return f"added {added[:20]}, removed {removed[:20]}, changed {changed[:20]}"


def check_with_testparm(path: Path) -> tuple[str, ...]:
    """Errors `testparm -s` reports for one file (empty: the file is acceptable)."""
    result = subprocess.run(
        ["testparm", "-s", "--suppress-prompt", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    errors = [line for line in result.stderr.splitlines() if TESTPARM_ERRORS.search(line)]
    if result.returncode != 0:
        errors.append(f"testparm exited {result.returncode}")
    return tuple(errors)


def temporaries(*directories: Path) -> list[Path]:
    """Leftovers of interrupted atomic writes (`.name.XXXX.tmp`) in the given directories."""
    found: list[Path] = []
    for directory in directories:
        if directory.is_dir():
            found += [p for p in directory.iterdir() if p.name.endswith(".tmp")]
    return sorted(found)


def lasting_temporaries(*directories: Path, recheck_after: float = 1.0) -> list[Path]:
    """Temporaries that are still there `recheck_after` seconds later.

    While the agent runs it writes status.json every few seconds through a `.tmp` file;
    seeing one mid-write is not debris. A leftover is one that outlives the write.
    """
    first = temporaries(*directories)
    if not first:
        return []
    time.sleep(recheck_after)
    return sorted(set(first) & set(temporaries(*directories)))


def wait_served(box: Sandbox, share: str, timeout: float = 20.0) -> None:
    """Wait until smbclient can connect to `share`; on timeout, say what smbclient said."""
    deadline = time.monotonic() + timeout
    while True:
        result = box.smbclient(share, "ls", timeout=10)
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            logs = sorted((box.root / "var/log/samba").glob("log.*"))
            tail = "".join(p.read_text(errors="replace")[-1500:] for p in logs[-2:])
            raise AssertionError(
                f"[{share}] not served within {timeout}s: {(result.stdout + result.stderr)[-500:]}\n"
                f"smbd logs: {tail}"
            )
        time.sleep(0.05)


@contextlib.contextmanager
def private_sandbox() -> Iterator[Sandbox]:
    """Like the `sandbox` fixture, but rooted outside pytest's temporary directory.

    smbd serves as an unprivileged user, who must traverse every parent of the share
    paths. pytest makes /tmp/pytest-of-<user> 0700 again whenever *any* pytest session
    starts on the host, so a sandbox below it breaks while another session runs. A
    directory of our own under /var/tmp does not have that problem.
    """
    missing = [t for t in ("smbd", "smbclient", "testparm", "smbcontrol", "smbpasswd") if not shutil.which(t)]
    if missing:
        import pytest

        pytest.skip("Samba tools missing: " + ", ".join(missing))
    base = Path(tempfile.mkdtemp(prefix="smbgw-test-", dir="/var/tmp"))
    base.chmod(0o755)
    box = Sandbox(base / "root", free_port())
    try:
        box.prepare()
        box.start_smbd()
        yield box
    finally:
        box.stop_smbd()
        if not os.environ.get("SMBGW_KEEP_SANDBOX"):
            shutil.rmtree(base, ignore_errors=True)


# ---- agent.toml and metrics for reliability tests ----------------------------------------


def write_agent_toml(box: Sandbox, extra: str = "", port: int | None = None) -> int:
    """The sandbox's agent.toml with `[agent]` lines added and metrics on a port of its
    own (tests run one after another, but a port still in TIME_WAIT must not collide).
    Returns the metrics port."""
    port = port or free_port()
    (box.root / "etc/smbgw/agent.toml").write_text(
        f'[agent]\nnode = "sandbox"\nallowed_roots = ["/srv"]\n{extra}\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
    )
    return port


def scrape(port: int) -> str | None:
    """One plain-HTTP scrape of the agent's /metrics: the body, or None if it failed."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    return body.decode(errors="replace") if head.startswith(b"HTTP/1.0 200") else None


def wait_metric(port: int, line: str, timeout: float = 20) -> None:
    """Wait until a scrape holds `line` exactly (e.g. 'smbgw_x{a="b"} 1.0')."""
    deadline = time.monotonic() + timeout
    body: str | None = ""
    while time.monotonic() < deadline:
        body = scrape(port)
        if body is not None and line in body.splitlines():
            return
        time.sleep(0.2)
    name = line.split("{")[0].split(" ")[0]
    shown = [x for x in (body or "").splitlines() if x.startswith(name)]
    raise AssertionError(f"{line!r} not scraped within {timeout}s; saw {shown}")

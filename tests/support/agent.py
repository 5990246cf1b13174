"""A real agent process in front of a real smbd, in a sandbox root, for integration tests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devtools.sandbox import Sandbox
from tests.support.proctree import descendants, kill_survivors

REPO = Path(__file__).resolve().parents[2]


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def wait_served(agent: AgentProcess, name: str, timeout: float) -> float:
    """Seconds until share `name` is served; on a timeout its share and job records are
    printed (what the agent was doing) before the AssertionError."""
    began = time.monotonic()

    def served() -> bool:
        share = ((agent.status() or {}).get("shares") or {}).get(name) or {}
        return share.get("state") == "served"

    try:
        wait_for(served, timeout=timeout, interval=0.5)
    except AssertionError:
        print((agent.status() or {}).get("shares"), (agent.status() or {}).get("jobs"))
        raise
    return time.monotonic() - began


class AgentProcess:
    def __init__(self, box: Sandbox, extra_args: list[str] | None = None, env: dict[str, str] | None = None,
                 wrapper: list[str] | None = None) -> None:
        self.box = box
        self.extra_args = extra_args or []
        self.env = env or {}
        # A command the agent is started through, which must exec it (same pid), e.g.
        # `ip netns exec NS` to run it in a network namespace of the test's own.
        self.wrapper = wrapper or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = box.root / "agent.log"

    def start(self, timeout: float = 20) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), **self.env}
        env.pop("NOTIFY_SOCKET", None)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    *self.wrapper,
                    sys.executable,
                    "-m",
                    "smbgw_agent",
                    "--root",
                    str(self.box.root),
                    "--log-level",
                    "debug",
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        wait_for(lambda: (self.status() or {}).get("passes", 0) >= 1, timeout)

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            started = descendants(self.proc.pid)
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            # Commands the agent still ran (its runner gives each a session of its own).
            kill_survivors(started)
        code = self.proc.returncode
        self.proc = None
        return code

    def status(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.box.root / "run/smbgw/status.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        return subprocess.run(
            [sys.executable, "-m", "smbgw_agent.cli", "--root", str(self.box.root), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )


def served(box: Sandbox, share: str) -> bool:
    """smbd answers a tree connect to the share (what a client needs), not just a listing."""
    result = box.smbclient(share, "ls", timeout=10)
    return result.returncode == 0


def write_share(box: Sandbox, file: str, body: str) -> Path:
    path = box.shares_dir / file
    path.write_text(body)
    return path


def upload(box: Sandbox, share: str, name: str, size: int) -> subprocess.CompletedProcess[str]:
    """Put `size` random bytes as `name` on the share (incompressible: file systems that
    compress count what is stored)."""
    local = box.root / f"upload-{size}"
    if not local.exists():
        local.write_bytes(os.urandom(size))
    return box.smbclient(share, f"put {local} {name}")


def disk(box: Sandbox, share: str) -> tuple[int, int]:
    """(size, free) in bytes, as an SMB client is told (smbclient's `du` footer)."""
    out = box.smbclient(share, "du").stdout
    match = re.search(r"(\d+) blocks of size (\d+)\. (\d+) blocks available", out)
    assert match, out
    blocks, size, available = (int(g) for g in match.groups())
    return blocks * size, available * size


def add_agent_config(agent: AgentProcess, text: str) -> None:
    """Append `text` to the running agent's agent.toml and have it reload (SIGHUP)."""
    config = agent.box.root / "etc/smbgw/agent.toml"
    config.write_text(config.read_text() + "\n" + text)
    assert agent.proc is not None
    before = agent.log_text().count("reloaded agent configuration")
    os.kill(agent.proc.pid, signal.SIGHUP)
    wait_for(lambda: agent.log_text().count("reloaded agent configuration") > before)

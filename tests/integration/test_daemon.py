"""The daemon as systemd runs it: signals, agent.toml reloads, sd_notify, the control socket.

Real agent process, real smbd on loopback in a sandbox root, real smbclient.
"""

from __future__ import annotations

import itertools
import json
import signal
import socket
import time
from pathlib import Path

import pytest

from devtools.sandbox import Sandbox
from tests.support.agent import AgentProcess, served, wait_for, write_share
from tests.support.procs import (
    NotifySocket,
    RestartableAgent,
    run_agent_once,
    smbgwctl,
    wait_served,
)

pytestmark = pytest.mark.integration

BASE_AGENT_TOML = '[agent]\nnode = "sandbox"\nallowed_roots = ["/srv"]\nresync_interval = "60s"\n'


def agent_toml(box: Sandbox) -> Path:
    return box.root / "etc/smbgw/agent.toml"


def globals_conf(box: Sandbox) -> Path:
    return box.paths.samba_dir / "globals.conf"


def generated_file_of(box: Sandbox, share: str) -> Path:
    """The generated file that declares `[share]` (its name is the plugin's business)."""
    for path in box.paths.samba_dir.glob("*.conf"):
        if f"[{share}]" in path.read_text().splitlines():
            return path
    raise AssertionError(f"no generated file declares [{share}]")


def add_share(box: Sandbox, name: str, extra: str = "") -> None:
    box.share_dir(name)
    write_share(box, f"{name}.toml", f'path = "/srv/smb/{name}"\n{extra}')



# ---- signals -----------------------------------------------------------------------------------


def test_sigterm_exits_zero_and_leaves_shares_served(sandbox: Sandbox, agent: AgentProcess) -> None:
    add_share(sandbox, "stays")
    wait_served(sandbox, "stays")
    generated = {p: p.read_text() for p in sandbox.paths.samba_dir.glob("*.conf")}
    smb_conf = sandbox.smb_conf.read_text()
    assert agent.stop(signal.SIGTERM) == 0
    assert served(sandbox, "stays"), "the share must outlive the agent"
    assert {p: p.read_text() for p in sandbox.paths.samba_dir.glob("*.conf")} == generated
    assert sandbox.smb_conf.read_text() == smb_conf
    assert not sandbox.paths.control_socket.exists()


def test_sighup_rereads_agent_toml_and_resyncs(sandbox: Sandbox, agent: AgentProcess) -> None:
    add_share(sandbox, "hup")
    wait_served(sandbox, "hup")
    assert "server signing = mandatory" not in globals_conf(sandbox).read_text()
    # Drift the watcher cannot see (it watches shares.d only): SIGHUP is a full resync.
    generated_file_of(sandbox, "hup").unlink()
    agent_toml(sandbox).write_text(BASE_AGENT_TOML + '\n[samba]\nsecurity_profile = "high"\n')
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "server signing = mandatory" in globals_conf(sandbox).read_text(), 20)
    text = globals_conf(sandbox).read_text()
    assert "server smb encrypt = required" in text
    wait_for(lambda: generated_file_of(sandbox, "hup").exists(), 20)
    status = agent.status() or {}
    assert status["config"]["problems"] == []
    wait_served(sandbox, "hup")


def test_invalid_agent_toml_on_sighup_keeps_the_running_config(sandbox: Sandbox, agent: AgentProcess) -> None:
    add_share(sandbox, "steady")
    wait_served(sandbox, "steady")
    before = globals_conf(sandbox).read_text()
    config = agent_toml(sandbox)
    config.write_text(BASE_AGENT_TOML + '\n[samba]\nsecurity_profile = "paranoid"\n')
    line = config.read_text().splitlines().index('security_profile = "paranoid"') + 1
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGHUP)
    status = wait_for(lambda: (s := agent.status()) and s["config"]["problems"] and s, 20)
    [problem] = status["config"]["problems"]
    assert problem.startswith(f"{config}:{line}: samba.security_profile: ")
    assert "paranoid" in problem
    assert agent.proc.poll() is None, "a bad agent.toml on reload must not stop the agent"
    assert globals_conf(sandbox).read_text() == before
    assert served(sandbox, "steady")
    # `smbgwctl status` tells the admin too.
    result = agent.ctl("status")
    assert f"{config}:{line}" in result.stdout
    # The old configuration keeps working: a new share is still picked up.
    add_share(sandbox, "later")
    wait_served(sandbox, "later")
    # Fixed and reloaded: the problem clears and the new setting applies.
    config.write_text(BASE_AGENT_TOML + '\n[samba]\nsecurity_profile = "high"\n')
    agent.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: (s := agent.status()) and s["config"]["problems"] == [], 20)
    wait_for(lambda: "server signing = mandatory" in globals_conf(sandbox).read_text(), 20)


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ('[agent]\nnode = "n1"\nbogus = 1\n', 3, "agent.bogus"),
        ('[agent]\nnode = "n1\n', 2, "TOML syntax error"),
        ('[agent]\nnode = "n1"\n\n[samba]\nsecurity_profile = "paranoid"\n', 5, "samba.security_profile"),
    ],
    ids=["unknown-key", "syntax", "bad-value"],
)
def test_broken_agent_toml_at_startup_exits_2_naming_file_and_line(
    tmp_path: Path, text: str, line: int, fragment: str
) -> None:
    root = tmp_path / "root"
    config = root / "etc/smbgw/agent.toml"
    (root / "etc/smbgw/shares.d").mkdir(parents=True)
    config.write_text(text)
    result = run_agent_once(root, timeout=30)
    assert result.returncode == 2, result.stderr
    assert f"{config}:{line}: " in result.stderr
    assert fragment in result.stderr
    assert not (root / "run/smbgw/status.json").exists()
    assert not (root / "etc/samba").exists()


# ---- sd_notify ----------------------------------------------------------------------------------


def test_sd_notify_ready_status_watchdog_reloading_stopping(sandbox: Sandbox, tmp_path: Path) -> None:
    add_share(sandbox, "notified")
    notify = NotifySocket(tmp_path / "notify.sock")
    agent = RestartableAgent(sandbox, env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"})
    try:
        agent.start()
        ready = notify.wait(lambda m: m.fields.get("READY") == "1")
        assert notify.snapshot()[ready].fields.get("STATUS"), "READY=1 comes with a STATUS line"
        notify.wait(lambda m: "served" in m.fields.get("STATUS", ""), after=ready)
        wait_served(sandbox, "notified")

        # Idle: the watchdog is pinged at least every 200 ms (WATCHDOG_USEC/2).
        time.sleep(0.3)
        start = time.monotonic()
        time.sleep(1.6)
        end = time.monotonic()
        pings = [m.at for m in notify.snapshot() if m.fields.get("WATCHDOG") == "1" and start <= m.at <= end]
        edges = [start, *pings, end]
        gaps = [b - a for a, b in itertools.pairwise(edges)]
        assert len(pings) >= 7, f"only {len(pings)} watchdog pings in 1.6 s"
        assert max(gaps) <= 0.2, f"watchdog gap of {max(gaps) * 1000:.0f} ms"

        # SIGHUP: RELOADING=1 (with MONOTONIC_USEC, as Type=notify-reload wants), then READY=1.
        mark = len(notify.snapshot())
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGHUP)
        reloading = notify.wait(lambda m: m.fields.get("RELOADING") == "1", after=mark)
        fields = notify.snapshot()[reloading].fields
        assert int(fields["MONOTONIC_USEC"]) > 0
        notify.wait(lambda m: m.fields.get("READY") == "1", after=reloading + 1)

        # The watchdog keeps going after a reload.
        mark = len(notify.snapshot())
        notify.wait(lambda m: m.fields.get("WATCHDOG") == "1", after=mark, timeout=1)

        # SIGTERM: STOPPING=1, exit 0.
        mark = len(notify.snapshot())
        assert agent.stop(signal.SIGTERM) == 0
        notify.wait(lambda m: m.fields.get("STOPPING") == "1", after=mark, timeout=2)
    finally:
        agent.stop()
        notify.close()


def test_no_watchdog_pings_for_another_pid(sandbox: Sandbox, tmp_path: Path) -> None:
    """WATCHDOG_PID names the process meant to ping; the agent must not ping for another."""
    notify = NotifySocket(tmp_path / "notify.sock")
    agent = RestartableAgent(
        sandbox, env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}
    )
    try:
        agent.start()
        notify.wait(lambda m: m.fields.get("READY") == "1")
        time.sleep(0.5)
        assert not [m for m in notify.snapshot() if "WATCHDOG" in m.fields]
    finally:
        agent.stop()
        notify.close()


# ---- the control socket --------------------------------------------------------------------------


def test_reconcile_through_the_control_socket_returns_the_pass(sandbox: Sandbox, agent: AgentProcess) -> None:
    add_share(sandbox, "ctl")
    wait_served(sandbox, "ctl")
    passes = (agent.status() or {})["passes"]
    generated_file_of(sandbox, "ctl").unlink()  # drift only a full pass notices
    result = agent.ctl("reconcile", "--json")
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["ok"] is True
    assert reply["changed"] == ["ctl"]
    assert reply["failed"] == {} and reply["errors"] == []
    assert reply["duration_seconds"] > 0
    assert generated_file_of(sandbox, "ctl").exists()
    assert served(sandbox, "ctl")
    assert (agent.status() or {})["passes"] > passes
    # Text output, nothing left to do.
    result = agent.ctl("reconcile")
    assert result.returncode == 0
    assert result.stdout.startswith("pass ok: changed nothing")


def test_reconcile_reports_a_failing_share_with_exit_1(sandbox: Sandbox, restartable: RestartableAgent) -> None:
    agent_toml(sandbox).write_text(BASE_AGENT_TOML + "allow_custom_options = true\n")
    restartable.start()
    add_share(sandbox, "fine")
    add_share(sandbox, "rejected", '[options]\n"bogus parameter" = "1"\n')
    restartable.wait_status(lambda s: s["shares"].get("rejected", {}).get("state") == "failed")
    assert served(sandbox, "fine")
    assert not served(sandbox, "rejected")
    result = restartable.ctl("reconcile", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    reply = json.loads(result.stdout)
    assert reply["ok"] is False
    assert "bogus parameter" in reply["failed"]["rejected"]
    share = (restartable.status() or {})["shares"]["rejected"]
    assert share["state"] == "failed" and "bogus parameter" in share["error"]
    assert share["retry_at"] is not None


def test_reconcile_without_an_agent_exits_3(tmp_path: Path) -> None:
    result = smbgwctl(tmp_path / "nothing-here", "reconcile")
    assert result.returncode == 3
    assert "cannot reach smbgw-agent" in result.stderr
    result = smbgwctl(tmp_path / "nothing-here", "reconcile", "--json")
    assert result.returncode == 3


def test_reconcile_after_the_agent_was_killed_exits_3(sandbox: Sandbox, restartable: RestartableAgent) -> None:
    restartable.start()
    restartable.kill()
    assert sandbox.paths.control_socket.exists(), "SIGKILL leaves the socket file behind"
    result = smbgwctl(sandbox.root, "reconcile")
    assert result.returncode == 3, result.stdout + result.stderr
    # A restarted agent takes the stale socket over.
    restartable.start()
    result = smbgwctl(sandbox.root, "reconcile", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ok"] is True


def test_control_socket_refuses_malformed_requests(sandbox: Sandbox, agent: AgentProcess) -> None:
    for payload in (b"not json\n", b'{"command": "rm -rf /"}\n', b"[1, 2]\n", b"\xff\xfe\n"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(sandbox.paths.control_socket))
            sock.sendall(payload)
            reply = json.loads(sock.makefile("rb").readline())
        assert reply["ok"] is False
    assert agent.proc is not None and agent.proc.poll() is None
    assert json.loads(agent.ctl("reconcile", "--json").stdout)["ok"] is True

"""Fail closed: what a local user with a little access, or a careless admin, can try.

Real agent, real smbd, real smbclient in a sandbox root. Each test reproduces one of the
attacks of the fail-closed review and checks the whole class it stands for:

- a share file naming a share the administrator wrote by hand in smb.conf,
- a share directory swapped for a symbolic link by a user who owns its parent,
- floods of idle and slow connections to the metrics port under a 1,024-descriptor limit,
- hostile things for `smbgwctl` to read (FIFOs, /dev/zero, huge files, a mute socket,
  terminal escape sequences in file names).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import resource
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from devtools.sandbox import Sandbox, free_port
from smbgw_agent.control import request
from tests.support.agent import served, wait_for
from tests.support.procs import RestartableAgent, scrape, wait_served, write_agent_toml

pytestmark = pytest.mark.integration


def agent_toml(box: Sandbox, extra: str = "", port: int | None = None) -> None:
    write_agent_toml(box, extra, port)


# ---- 1. a share file must never take over the administrator's own share ----------------------


def test_a_share_file_cannot_take_over_a_hand_written_share(sandbox: Sandbox, restartable: RestartableAgent) -> None:
    box = sandbox
    own = box.share_dir("payroll-a")
    (own / "salaries.txt").write_text("the admin's data\n")
    box.share_dir("payroll-b")
    admin_section = f"\n[Payroll]\n\tpath = {own}\n\tread only = yes\n\tvalid users = {box.user}\n"
    with open(box.smb_conf, "a") as handle:
        handle.write(admin_section)
    agent_toml(box)
    restartable.start()
    wait_for(lambda: served(box, "Payroll"))

    # validate refuses it, naming the admin's section and where it is.
    candidate = box.root / "payroll.toml"
    candidate.write_text('path = "/srv/smb/payroll-b"\n')
    result = restartable.ctl("validate", str(candidate))
    assert result.returncode == 1, result.stdout
    assert "already defined by hand as [Payroll]" in result.stdout and f"{box.smb_conf}:" in result.stdout

    # Dropped in (and in another case, by `name`), it is refused by a pass and by plan.
    shutil.copy(candidate, box.shares_dir / "payroll.toml")
    (box.shares_dir / "other.toml").write_text('name = "PAYROLL"\npath = "/srv/smb/payroll-b"\n')
    status = restartable.wait_status(
        lambda s: all(s.get("files", {}).get(f, {}).get("serving") == "refused" for f in ("payroll.toml", "other.toml"))
    )
    assert any(p["security"] for p in status["files"]["payroll.toml"]["problems"])
    plan = restartable.ctl("plan", "--json")
    assert plan.returncode == 1 and "payroll.toml" in json.loads(plan.stdout)["invalid_files"]
    assert not list(box.paths.samba_dir.glob("share-payroll*.conf"))

    # Clients still get the admin's share exactly: path A, read only.
    listing = box.smbclient("Payroll", "ls")
    assert "salaries.txt" in listing.stdout, listing.stdout + listing.stderr
    (box.root / "upload.txt").write_text("x")
    put = box.smbclient("Payroll", f"put {box.root / 'upload.txt'} upload.txt")
    assert "NT_STATUS_ACCESS_DENIED" in put.stdout + put.stderr
    assert admin_section in box.smb_conf.read_text()

    # A share the agent already serves goes down once the admin defines it by hand.
    box.share_dir("reports")
    (box.shares_dir / "reports.toml").write_text('path = "/srv/smb/reports"\n')
    wait_served(box, "reports")
    with open(box.smb_conf, "a") as handle:
        handle.write(f"\n[Reports]\n\tpath = {own}\n\tread only = yes\n")
    assert restartable.ctl("reconcile").returncode == 1
    status = restartable.wait_status(lambda s: s["shares"].get("reports", {}).get("state") == "refused")
    assert "[Reports]" in status["shares"]["reports"]["error"]
    assert not (box.paths.samba_dir / "share-reports.conf").exists()


# ---- 2. a symbolic link swapped in for a share directory ----------------------------------------


def test_a_share_swapped_for_a_symlink_goes_down_at_once(sandbox: Sandbox, restartable: RestartableAgent) -> None:
    box = sandbox
    user = pwd.getpwnam(box.user)
    team = box.root / "srv/smb/team"
    team.mkdir()
    os.chown(team, user.pw_uid, user.pw_gid)  # a local user owns the parent of the share
    docs = team / "docs"
    docs.mkdir()
    os.chown(docs, user.pw_uid, user.pw_gid)
    (box.root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    agent_toml(box)
    restartable.start()
    (box.shares_dir / "docs.toml").write_text('path = "/srv/smb/team/docs"\n')
    wait_served(box, "docs")
    # The risk is reported (warn by default), with why.
    # smbd can serve the share a moment before the pass that made it writes status.json.
    status = restartable.wait_status(lambda s: s.get("files", {}).get("docs.toml", {}).get("warnings"))
    warnings = status["files"]["docs.toml"]["warnings"]
    assert "/srv/smb/team is writable by its owner" in warnings[0]["message"]
    assert "symbolic link" in warnings[0]["message"]

    # The swap, as the user could do it: move the directory away, link /etc in its place.
    os.rename(docs, team / "docs.old")
    os.symlink(box.root / "etc", docs)
    swapped = time.monotonic()
    wait_for(lambda: not served(box, "docs"), timeout=10)
    taken_down_after = time.monotonic() - swapped
    got = box.smbclient("docs", f"get passwd {box.root / 'stolen'}")
    assert got.returncode != 0 and not (box.root / "stolen").exists()
    status = restartable.wait_status(lambda s: s["shares"].get("docs", {}).get("state") == "refused")
    assert "symbolic link" in status["shares"]["docs"]["error"]
    # A forced pass re-checks everything and says so; the file itself did not change.
    reconcile = restartable.ctl("reconcile")
    assert reconcile.returncode == 1, reconcile.stdout
    assert not (box.paths.samba_dir / "share-docs.conf").exists()
    assert restartable.ctl("status").returncode == 1
    print(f"share taken down {taken_down_after:.1f}s after the swap")

    # Undone, the share comes back by itself.
    docs.unlink()
    os.rename(team / "docs.old", docs)
    wait_served(box, "docs", timeout=15)


def test_strict_path_owners_refuses_a_share_a_user_could_redirect(
    sandbox: Sandbox, restartable: RestartableAgent
) -> None:
    box = sandbox
    user = pwd.getpwnam(box.user)
    team = box.root / "srv/smb/team"
    team.mkdir()
    os.chown(team, user.pw_uid, user.pw_gid)
    box.share_dir("safe")
    agent_toml(box, "strict_path_owners = true\n")
    restartable.start()
    (box.shares_dir / "docs.toml").write_text('path = "/srv/smb/team/docs"\n')
    (box.shares_dir / "safe.toml").write_text('path = "/srv/smb/safe"\n')
    wait_served(box, "safe")
    status = restartable.wait_status(lambda s: s["files"].get("docs.toml", {}).get("serving") == "refused")
    assert "writable by its owner" in status["files"]["docs.toml"]["problems"][0]["message"]
    assert not served(box, "docs") and not (team / "docs").exists()
    # Fixed by the admin (root owns the parent again): served.
    os.chown(team, 0, 0)
    assert restartable.ctl("reconcile").returncode == 0
    wait_served(box, "docs")


# ---- 3. the metrics port must not starve the agent --------------------------------------------


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


def test_a_connection_flood_on_the_metrics_port_does_not_stop_reconciling(
    sandbox: Sandbox, restartable: RestartableAgent
) -> None:
    box = sandbox
    port = free_port()
    agent_toml(box, port=port)
    restartable.prefix = ["prlimit", "--nofile=1024:1024", "--"]
    restartable.start()
    assert restartable.proc is not None
    pid = restartable.proc.pid
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), max(hard, 4096)))
    idle: list[socket.socket] = []
    try:
        for _ in range(1020):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        fds_under_flood = _fd_count(pid)
        # Reconciling goes on: a share dropped now is served.
        box.share_dir("during")
        (box.shares_dir / "during.toml").write_text('path = "/srv/smb/during"\n')
        wait_served(box, "during", timeout=20)
        assert restartable.running
        # Idle clients are cut after a few seconds.
        time.sleep(7)
        closed = 0
        for sock in idle[:50]:
            sock.settimeout(0.5)
            with contextlib.suppress(OSError):
                if sock.recv(1) == b"":
                    closed += 1
        assert closed >= 45, f"only {closed} of 50 idle connections were closed by the agent"
    finally:
        for sock in idle:
            sock.close()
    assert fds_under_flood < 200, f"the agent held {fds_under_flood} descriptors under the flood"

    # Slow-header clients: bounded threads, cut after the request deadline.
    slow: list[socket.socket] = []
    try:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
            slow.append(sock)
        peak = 0
        cut = 0
        started = time.monotonic()
        while time.monotonic() - started < 14:
            for sock in list(slow):
                try:
                    sock.sendall(b"a")
                except OSError:
                    slow.remove(sock)
                    cut += 1
            peak = max(peak, _threads(pid))
            time.sleep(1)
        assert peak < 60, f"{peak} threads under 300 slow clients"
        assert cut >= 250, f"only {cut} of 300 slow clients were cut off"
    finally:
        for sock in slow:
            sock.close()
    # And the endpoint works again.
    body = wait_for(lambda: scrape(port), timeout=15, interval=0.1)
    assert "smbgw_reconcile_total" in body
    assert restartable.running


# ---- 4. smbgwctl must not trust what it reads ---------------------------------------------------


def test_smbgwctl_refuses_hostile_status_files_quickly(sandbox: Sandbox, restartable: RestartableAgent) -> None:
    box = sandbox
    agent_toml(box)
    restartable.start()
    restartable.stop()
    status = box.root / "run/smbgw/status.json"
    cases = {
        "a FIFO": lambda: os.mkfifo(status),
        "a link to /dev/zero": lambda: os.symlink("/dev/zero", status),
        "a huge file": lambda: os.truncate(_touch(status), 200 << 20),
        "not JSON": lambda: status.write_bytes(b"\x1b[2J\x00garbage"),
        "a JSON list": lambda: status.write_text("[1, 2]"),
    }
    for what, make in cases.items():
        status.unlink(missing_ok=True)
        make()
        started = time.monotonic()
        result = restartable.ctl("status")
        elapsed = time.monotonic() - started
        assert result.returncode == 3, (what, result.stdout, result.stderr)
        assert elapsed < 10, f"{what}: took {elapsed:.1f}s"
        assert "\x1b" not in result.stdout + result.stderr
    # A malformed but JSON status does not crash the reader.
    status.unlink()
    status.write_text(json.dumps({"shares": {"x": 5}, "files": [], "pass": "no"}))
    result = restartable.ctl("status")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr


def _touch(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def test_a_mute_control_socket_is_noticed_within_seconds(sandbox: Sandbox, restartable: RestartableAgent) -> None:
    box = sandbox
    path = box.root / "run/smbgw/control.sock"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                held.append(conn)  # read nothing, answer nothing

    threading.Thread(target=accept, daemon=True).start()
    try:
        started = time.monotonic()
        result = restartable.ctl("reconcile")
        elapsed = time.monotonic() - started
    finally:
        listener.close()
        for conn in held:
            conn.close()
    assert result.returncode == 3, result.stdout + result.stderr
    assert "acknowledgement" in result.stderr
    assert elapsed < 20, f"a mute socket cost {elapsed:.0f}s"


def test_control_characters_in_file_names_are_escaped_on_the_terminal(
    sandbox: Sandbox, restartable: RestartableAgent
) -> None:
    box = sandbox
    agent_toml(box)
    restartable.start()
    evil = box.shares_dir / "evil\x1b[2J\x1b]0;owned\x07.toml"
    evil.write_text('path = "/srv/smb/evil"\n\x1b[31m = 1\n')
    restartable.wait_status(lambda s: any("evil" in f for f in s.get("files", {})))
    for args in (("status",), ("plan",), ("validate", str(evil)), ("status", "--json")):
        result = restartable.ctl(*args)
        shown = result.stdout + result.stderr
        assert "\x1b" not in shown and "\x07" not in shown, (args, shown)
        assert "evil" in shown
    assert "\\x1b" in restartable.ctl("status").stdout
    assert "\x1b" not in restartable.log_text()


def test_status_exit_codes_deleted_status_and_control_bursts(sandbox: Sandbox, restartable: RestartableAgent) -> None:
    box = sandbox
    agent_toml(box)
    restartable.start()
    assert restartable.ctl("status").returncode == 0
    # agent.toml broken and reloaded: the agent keeps running, status exits 1.
    config = box.root / "etc/smbgw/agent.toml"
    good = config.read_text()
    config.write_text(good + "\n[agent]\nbogus = 1\n")
    assert restartable.proc is not None
    restartable.proc.send_signal(signal.SIGHUP)
    restartable.wait_status(lambda s: s["config"]["problems"])
    result = restartable.ctl("status")
    assert result.returncode == 1 and "agent.toml" in result.stdout
    config.write_text(good)
    restartable.proc.send_signal(signal.SIGHUP)
    restartable.wait_status(lambda s: not s["config"]["problems"])
    assert restartable.ctl("status").returncode == 0

    # status.json deleted by hand comes back without waiting for a pass.
    status_file = box.root / "run/smbgw/status.json"
    status_file.unlink()
    wait_for(status_file.exists, timeout=5)

    # 200 clients at once all get an answer.
    socket_path = box.root / "run/smbgw/control.sock"
    answers: list[object] = []

    def ping() -> None:
        try:
            answers.append(request(socket_path, "ping")["ok"])
        except (OSError, ValueError) as exc:
            answers.append(exc)

    threads = [threading.Thread(target=ping) for _ in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    failures = [a for a in answers if a is not True]
    assert len(answers) == 200 and not failures, failures[:5]

"""The Debian package on a real systemd host, end to end.

One container with systemd as PID 1 per supported release (tests/support/nspawn.py):
Debian 12 "bookworm" (Proxmox VE 8) and Debian 13 "trixie" (Proxmox VE 9). Each gets the
.deb that `make deb` built, installed by apt with no network: every dependency comes from
that release's own packages already in the image. An SMB client in a network namespace of its
own reaches the container's smbd over a veth pair, like a client on the LAN reaches a
node. The tests then do to the installed unit what an administrator and an upgrade do:
drop share files, `systemctl reload`, restart and upgrade with a client connected, stop,
SIGKILL, hang the agent (SIGSTOP) until the watchdog fires, remove and purge.

The tests share the container (booting and installing once keeps the module at well
under a minute) and run in file order; each one first makes sure of the state it starts
from (the "finance" share served), so a failure does not cascade into the others.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import debpkg, nspawn, releases
from tests.support.debpkg import UNIT, NetPair, wait_for
from tests.support.nspawn import SystemdContainer

pytestmark = pytest.mark.integration

USER, PASSWORD = "alice", "Smbgw-e2e-Passw0rd"
SHARE_ROOT = "/srv/smbgw"
SHARES_D = "/etc/smbgw/shares.d"
SAMBA_DIR = "/etc/samba/smbgw"
HELLO = "hello from the finance share\n"
WATCHDOG_DROPIN = "/etc/systemd/system/smbgw-agent.service.d/50-e2e-watchdog.conf"


# What each release ships of the libraries the .deb depends on (Debian's own packages).
PLUGGY = {"bookworm": "1.0.0", "trixie": "1.5.0"}


@dataclass
class Node:
    container: SystemdContainer
    net: NetPair
    deb: Path
    install_output: str
    release: str
    timings: dict[str, float] = field(default_factory=dict)

    def run(self, *argv: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return self.container.run(list(argv), check=check, timeout=timeout)

    def systemctl(self, verb: str, *, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """`systemctl VERB smbgw-agent` after clearing the start rate limit: these tests
        start the unit far more often than StartLimitBurst allows within its interval
        (trixie's systemd is quick enough to hit it), which no administrator does."""
        self.run("systemctl", "reset-failed", UNIT, check=False)
        return self.run("systemctl", verb, UNIT, check=check, timeout=timeout)

    def exists(self, path: str) -> bool:
        return self.run("test", "-e", path, check=False).returncode == 0

    def props(self, *names: str, unit: str = UNIT) -> dict[str, str]:
        return debpkg.unit_properties(self.container, unit, *names)

    def status(self) -> dict[str, Any]:
        proc = self.run("cat", "/run/smbgw/status.json", check=False)
        try:
            return json.loads(proc.stdout) if proc.returncode == 0 else {}
        except ValueError:
            return {}

    def smbclient(self, share: str, commands: str) -> subprocess.CompletedProcess[str]:
        return self.net.in_client(debpkg.smbclient_argv(self.net, share, USER, PASSWORD, commands), timeout=60)


def _reason_to_skip() -> str | None:
    missing = nspawn.missing_requirements()
    missing += [f"{tool} not found" for tool in debpkg.have_tools("ip", "smbclient", "make", "dpkg-buildpackage")]
    return "; ".join(missing) or None


@pytest.fixture(scope="module", params=releases.RELEASES)
def node(request: pytest.FixtureRequest) -> Iterator[Node]:
    release: str = request.param
    reason = _reason_to_skip()
    if reason:
        pytest.skip(f"cannot run the package end to end: {reason}")
    timings: dict[str, float] = {}
    started = time.monotonic()
    build = debpkg.ensure_deb()
    timings["build .deb (0 = reused)"] = build.seconds
    began = time.monotonic()
    image = releases.package_test_image(release)
    timings["container image (built once, then reused)"] = time.monotonic() - began
    with debpkg.client_server_network() as net:
        began = time.monotonic()
        container = nspawn.boot_container(
            image, private_network=False, nspawn_args=[f"--network-namespace-path={net.server_netns_path}"]
        )
        try:
            timings["boot container"] = time.monotonic() - began
            began = time.monotonic()
            output = debpkg.install_deb(container, build.deb)
            timings["apt-get install ./smbgw-agent.deb"] = time.monotonic() - began
            container.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", USER])
            container.run(["smbpasswd", "-s", "-a", USER], input=f"{PASSWORD}\n{PASSWORD}\n")
            # The storage the shares live on, as an admin prepares it (a pool, a mount): the
            # agent creates share directories only in storage that exists.
            container.run(["mkdir", "-p", SHARE_ROOT])
            node = Node(container, net, build.deb, output, release, timings)
            timings["module setup total"] = time.monotonic() - started
            yield node
        finally:
            container.stop()


# ---- helpers ---------------------------------------------------------------------------


def share_file(path: str, comment: str) -> str:
    return f'path = "{path}"\ncomment = "{comment}"\nvalid_users = ["{USER}"]\n'


def served(node: Node, share: str, expect: str | None = None) -> bool:
    proc = node.smbclient(share, "ls")
    return proc.returncode == 0 and (expect is None or expect in proc.stdout)


def ensure_finance(node: Node) -> None:
    """The state most tests start from: the finance share declared, served, with a file."""
    if not node.exists(f"{SHARES_D}/finance.toml"):
        node.container.write_file(f"{SHARES_D}/finance.toml", share_file(f"{SHARE_ROOT}/finance", "Finance team"))
    wait_for("share-finance.conf", lambda: node.exists(f"{SAMBA_DIR}/share-finance.conf"), timeout=20)
    if not node.exists(f"{SHARE_ROOT}/finance/hello.txt"):
        node.container.write_file(f"{SHARE_ROOT}/finance/hello.txt", HELLO)
    wait_for("finance served", lambda: served(node, "finance", "hello.txt"), timeout=20, interval=0.3)


def wait_ready(node: Node, old_pid: int, timeout: float = 30.0) -> int:
    """A new main process that has finished its first pass; returns its pid."""

    def ready() -> int:
        props = node.props("MainPID", "ActiveState", "StatusText")
        pid = int(props["MainPID"])
        if pid not in (0, old_pid) and props["ActiveState"] == "active" and "last pass" in props["StatusText"]:
            return pid
        return 0

    return int(wait_for("a new smbgw-agent main process after its first pass", ready, timeout=timeout))


def managed_files(node: Node) -> dict[str, tuple[int, int, int]]:
    """(inode, mtime ns, size) of smb.conf and everything the agent wrote in /etc/samba/smbgw."""
    root = node.container.path(SAMBA_DIR)
    found = {}
    for path in [node.container.path("/etc/samba/smb.conf"), *sorted(root.iterdir())]:
        st = path.stat()
        found[path.name] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return found


def session_pid(node: Node) -> int | None:
    """The smbd process serving our client's session, from smbstatus in the container."""
    out = node.run("smbstatus", "-p").stdout
    for line in out.splitlines():
        if node.net.client_address in line and line.split()[0].isdigit():
            return int(line.split()[0])
    return None


@contextlib.contextmanager
def connected_client(node: Node) -> Iterator[int]:
    """An smbclient session to finance held open across what the block does.

    Yields the pid of the smbd process serving it. After the block the same session
    (same process, same TCP connection: smbclient never reconnects) must still list the
    share and read the file, or the test fails.
    """
    argv = ["smbclient", f"//{node.net.server_address}/finance", "-U", f"{USER}%{PASSWORD}", "-m", "SMB3"]
    proc = node.net.popen_in_client(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write("get hello.txt -\n")
        proc.stdin.flush()
        pid = int(wait_for("the client's SMB session", lambda: session_pid(node), timeout=20))
        yield pid
        assert session_pid(node) == pid, "the client's session is served by another smbd process now"
        proc.stdin.write("ls\nget hello.txt -\nexit\n")
        proc.stdin.close()
        out = proc.stdout.read()
        assert proc.wait(30) == 0, out
        assert out.count(HELLO.strip()) == 2, out
        assert "NT_STATUS" not in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def wait_journal(node: Node, mark: frozenset[str], pattern: str, timeout: float = 15.0) -> str:
    """The unit's journal since ``mark``, once a line matches ``pattern``."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        text = debpkg.journal(node.container, since=mark)
        if regex.search(text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"no journal line /{pattern}/ within {timeout:g} s; the unit's journal since:\n{text}")
        time.sleep(0.2)


# ---- the tests -------------------------------------------------------------------------


def test_installs_offline_with_debians_libraries_and_starts(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    out = node.install_output
    assert "Need to get 0 B" in out, out  # nothing downloaded: every dependency was already there
    assert "Setting up smbgw-agent (0.1.0-1)" in out, out
    status = node.run("dpkg-query", "-W", "-f=${Status} ${Version}", "smbgw-agent").stdout
    assert status == "install ok installed 0.1.0-1"
    assert "/etc/smbgw/agent.toml" in node.run("dpkg-query", "-W", "-f=${Conffiles}", "smbgw-agent").stdout

    # dh_installsystemd enabled and started it; it is up and has done its first pass.
    assert node.run("systemctl", "is-enabled", UNIT).stdout.strip() == "enabled"
    pid = wait_ready(node, 0)
    cmdline = node.run("cat", f"/proc/{pid}/cmdline").stdout.split("\0")
    assert cmdline[:2] == ["/usr/bin/python3", "/usr/sbin/smbgw-agent"]
    props = node.props("Type", "NotifyAccess", "WatchdogUSec", "Restart", "KillMode")
    assert props == {"Type": "notify", "NotifyAccess": "main", "WatchdogUSec": "30s",
                     "Restart": "on-failure", "KillMode": "mixed"}

    # The libraries it runs with are Debian's (the container has no pip, no network).
    probe = (
        "import importlib.metadata as m, pluggy, prometheus_client, pyroute2, watchdog, jinja2, pydbus, smbgw_agent\n"
        "for mod in (pluggy, prometheus_client, pyroute2, watchdog, jinja2, pydbus, smbgw_agent):\n"
        "    print(mod.__name__, mod.__file__)\n"
        "for dist in ('pluggy', 'prometheus-client', 'pyroute2', 'watchdog', 'Jinja2'):\n"
        "    print('version', dist, m.version(dist))\n"
    )
    libs = node.run("python3", "-c", probe).stdout
    for line in libs.splitlines():
        if not line.startswith("version"):
            assert " /usr/lib/python3/dist-packages/" in line, libs
    assert f"version pluggy {PLUGGY[node.release]}" in libs, libs

    # Files the package owns, and what the first pass did.
    for path in ("/usr/share/doc/smbgw-agent/examples/agent.toml", "/usr/share/doc/smbgw-agent/README.md",
                 "/usr/share/man/man8/smbgw-agent.8.gz",
                 "/usr/share/man/man8/smbgwctl.8.gz", SHARES_D):
        assert node.exists(path), path
    assert node.run("ls", "-A", SHARES_D).stdout == ""
    assert "include = /etc/samba/smbgw/globals.conf" in node.run("cat", "/etc/samba/smb.conf").stdout
    native = node.status()["plugins"]["mode_native"]
    assert native["reload_via"] == "systemd" and native["error"] is None, native

    # The unit as installed on a real systemd: verify clean, and how exposed it is.
    verify = node.run("systemd-analyze", "verify", "--man=no", UNIT, check=False)
    assert verify.returncode == 0 and verify.stdout + verify.stderr == "", verify
    security = node.run("systemd-analyze", "security", "--no-pager", UNIT, check=False).stdout
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security)
    assert match, security
    score = float(match.group(1))
    systemd = node.run("systemctl", "--version").stdout.split()[1]
    with capsys.disabled():
        print(f"\n[smbgw-agent .deb e2e, {node.release}] systemd {systemd}: systemd-analyze security "
              f"(installed unit): exposure {score}")
        for what, seconds in node.timings.items():
            print(f"[smbgw-agent .deb e2e, {node.release}] {what}: {seconds:.1f} s")
    assert score <= 4.0


def test_lintian_of_the_release_is_clean(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    """The package is checked by the lintian of each release it is installed on (each
    release adds tags): in the container where the image has it, else on the host (the
    host's release)."""
    argv = ["lintian", "--fail-on", "error,warning", "--info", "--pedantic", "--display-experimental"]
    if node.exists("/usr/bin/lintian"):
        proc = node.run(*argv, f"/root/{node.deb.name}", check=False, timeout=300)
    else:
        assert node.release == releases.HOST_RELEASE, f"the {node.release} image has no lintian"
        proc = subprocess.run([*argv, str(node.deb)], capture_output=True, text=True, check=False, timeout=300,
                              env={"PATH": debpkg.CLEAN_PATH, "LANG": "C.UTF-8"})
    if node.exists("/usr/bin/lintian"):
        version = node.run("lintian", "--version", check=False).stdout.strip()
    else:
        version = subprocess.run(["lintian", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    with capsys.disabled():
        print(f"\n[smbgw-agent .deb e2e, {node.release}] {version}: exit {proc.returncode}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tags = [line for line in (proc.stdout + proc.stderr).splitlines() if line[:2] in ("E:", "W:")]
    assert tags == [], tags


def test_dropped_share_file_is_served_to_a_client_outside_the_container(node: Node) -> None:
    began = time.monotonic()
    node.container.write_file(f"{SHARES_D}/finance.toml", share_file(f"{SHARE_ROOT}/finance", "Finance team"))
    wait_for("share-finance.conf", lambda: node.exists(f"{SAMBA_DIR}/share-finance.conf"), timeout=20)
    live = time.monotonic() - began
    assert node.exists(f"{SHARE_ROOT}/finance"), "the agent creates the share directory"
    node.container.write_file(f"{SHARE_ROOT}/finance/hello.txt", HELLO)
    proc = node.smbclient("finance", "get hello.txt -")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert HELLO.strip() in proc.stdout
    share = node.status()["shares"]["finance"]
    assert (share["state"], share["file"], share["path"]) == ("served", "finance.toml", f"{SHARE_ROOT}/finance")
    assert live < 10, f"the share took {live:.1f} s to go live"
    # The packaged tools work against the packaged daemon, inside its sandbox.
    status = node.run("smbgwctl", "status", check=False)
    assert status.returncode == 0 and "finance" in status.stdout, status.stdout + status.stderr
    reconcile = node.run("smbgwctl", "reconcile", check=False)
    assert reconcile.returncode == 0 and reconcile.stdout.startswith("pass ok"), reconcile.stdout + reconcile.stderr


def test_metrics_endpoint_is_reachable_inside_the_sandbox(node: Node) -> None:
    ensure_finance(node)
    announced = re.search(r"metrics on (http://\S+)", debpkg.journal(node.container))
    if announced is None:
        pytest.fail("the agent did not announce its metrics endpoint")
    fetch = f"import urllib.request; print(urllib.request.urlopen({announced.group(1)!r}, timeout=10).read().decode())"
    body = node.run("python3", "-c", fetch).stdout
    assert "smbgw_agent_info" in body, body[:2000]


def test_journal_shows_readable_lines_with_share_and_file_names(node: Node) -> None:
    ensure_finance(node)
    node.container.write_file("/etc/smbgw/shares.d/broken.toml", 'path = "/srv/smbgw/broken"\ncolour = "red"\n')
    try:
        def agent_entries() -> list[dict[str, Any]]:
            out = node.container.run(["journalctl", "--no-pager", "-o", "json", "-u", UNIT]).stdout
            entries = [json.loads(line) for line in out.splitlines()]
            return [e for e in entries if e.get("SYSLOG_IDENTIFIER") == "smbgw-agent"]

        invalid = wait_for(
            "the invalid file in the journal",
            lambda: [e for e in agent_entries() if "broken.toml:2: colour: unknown key" in str(e.get("MESSAGE"))],
            timeout=20,
        )
    finally:
        node.run("rm", "-f", "/etc/smbgw/shares.d/broken.toml")
    entries = agent_entries()
    messages = [str(e.get("MESSAGE")) for e in entries]
    assert any("watching /etc/smbgw/shares.d" in m for m in messages), messages
    applied = [e for e in entries if str(e.get("MESSAGE")).startswith("share finance (finance.toml): applied")]
    assert applied, messages
    text = str(applied[0]["MESSAGE"])
    assert f"{SHARE_ROOT}/finance" in text and f"{SAMBA_DIR}/share-finance.conf" in text, text
    # Real priorities (journalctl -p works), no "<N>" or time stamps left in the text.
    assert applied[0]["PRIORITY"] == "6"
    assert invalid[0]["PRIORITY"] == "3", invalid
    assert "/etc/smbgw/shares.d/broken.toml:2: colour: unknown key" in str(invalid[0]["MESSAGE"])
    assert not any(m.startswith("<") or re.match(r"\d{4}-\d\d-\d\d", m) for m in messages), messages
    assert not any("Traceback" in m for m in messages), messages


def test_systemctl_reload_resyncs(node: Node) -> None:
    ensure_finance(node)
    fragment = f"{SAMBA_DIR}/share-finance.conf"
    good = node.run("cat", fragment).stdout
    pid = debpkg.main_pid(node.container)
    original_toml = node.run("cat", "/etc/smbgw/agent.toml").stdout
    # Drift the agent's file watcher does not see (it watches shares.d), and a changed
    # agent.toml: only a resync repairs the one and picks up the other.
    node.container.write_file(fragment, good.replace("Finance team", "hand-edited"))
    node.container.write_file(
        "/etc/smbgw/agent.toml", original_toml.replace('# workgroup = "WORKGROUP"', 'workgroup = "SMBGWE2E"')
    )
    try:
        mark = debpkg.journal_mark(node.container)
        began = time.monotonic()
        node.run("systemctl", "reload", UNIT)
        wait_for("the fragment repaired", lambda: node.run("cat", fragment).stdout == good, timeout=15)
        wait_for("workgroup in globals.conf",
                 lambda: "workgroup = SMBGWE2E" in node.run("cat", f"{SAMBA_DIR}/globals.conf").stdout, timeout=15)
        took = time.monotonic() - began
        assert took < 10, f"reload took {took:.1f} s (the periodic resync is 60 s away)"
        wait_journal(node, mark, r"reloaded agent configuration")
        assert debpkg.main_pid(node.container) == pid, "reload must not restart the agent"
        wait_for("active again", lambda: node.props("ActiveState")["ActiveState"] == "active", timeout=10)
        assert served(node, "finance", "hello.txt")
    finally:
        node.container.write_file("/etc/smbgw/agent.toml", original_toml)
        node.run("systemctl", "reload", UNIT)
    wait_for("workgroup gone again",
             lambda: "SMBGWE2E" not in node.run("cat", f"{SAMBA_DIR}/globals.conf").stdout, timeout=15)


def test_stopped_smbd_is_started_again_through_systemd(node: Node) -> None:
    """The sandboxed agent may start units over D-Bus: systemd authorises uid 0, not a capability."""
    ensure_finance(node)
    node.run("systemctl", "stop", "smbd.service")
    mark = debpkg.journal_mark(node.container)
    node.run("systemctl", "reload", UNIT)
    wait_for("smbd active again", lambda: node.props("ActiveState", unit="smbd.service")["ActiveState"] == "active",
             timeout=20)
    wait_journal(node, mark, r"smbd.service is inactive/dead; starting it")
    wait_for("finance served again", lambda: served(node, "finance", "hello.txt"), timeout=20, interval=0.3)
    assert node.status()["services"]["smbd.service"]["control"] == "systemd"


def test_restart_right_after_a_drop_is_prompt_every_time(node: Node) -> None:
    """What every package upgrade does: a share file has just been dropped (the agent is
    reloading smbd through systemd) when `systemctl restart` comes. The agent is ordered
    after smbd, so systemd's stop job and the agent's reload job could wait on each other:
    on SIGTERM the agent abandons its wait and exits at once."""
    ensure_finance(node)
    node.run("mkdir", "-p", f"{SHARE_ROOT}/bursts")
    durations = []
    try:
        for round_ in range(6):
            node.container.write_file(
                f"{SHARES_D}/burst{round_}.toml", share_file(f"{SHARE_ROOT}/bursts/b{round_}", "Burst")
            )
            time.sleep(0.05 * round_)  # land the restart at different moments of the pass
            node.run("systemctl", "reset-failed", UNIT)  # six restarts in a row: not a start loop
            started = time.monotonic()
            node.systemctl("restart", timeout=90)
            durations.append(time.monotonic() - started)
        for round_ in range(6):
            wait_for(f"burst{round_} live", lambda r=round_: node.exists(f"{SAMBA_DIR}/share-burst{r}.conf"), 30)
    finally:
        node.run("sh", "-c", f"rm -f {SHARES_D}/burst*.toml", check=False)
        node.run("systemctl", "reset-failed", UNIT, check=False)
        node.systemctl("start", check=False)
        wait_for("bursts removed", lambda: not node.run(
            "sh", "-c", f"ls {SAMBA_DIR}/share-burst*.conf", check=False).stdout.strip(), 30)
    print(f"restart durations: {', '.join(f'{d:.1f}s' for d in durations)}")
    assert max(durations) < 10, f"a restart took {max(durations):.1f}s (durations {durations})"
    assert node.props("ActiveState")["ActiveState"] == "active"


def test_restart_keeps_a_connected_client_and_changes_nothing(node: Node) -> None:
    ensure_finance(node)
    wait_for("settled", lambda: not node.status().get("plugins", {}).get("mode_native", {}).get("reload_pending"))
    smbd = debpkg.main_pid(node.container, "smbd.service")
    before = managed_files(node)
    old = debpkg.main_pid(node.container)
    with connected_client(node):
        mark = debpkg.journal_mark(node.container)
        node.systemctl("restart")
        wait_ready(node, old)
    new_lines = wait_journal(node, mark, r"stopping; shares stay served")
    # The restarted agent observed and found everything correct: nothing rewritten,
    # smbd neither restarted nor reloaded.
    assert managed_files(node) == before
    assert debpkg.main_pid(node.container, "smbd.service") == smbd
    assert not re.search(r"applied|removed|added the managed include|reload", new_lines, re.IGNORECASE), new_lines


def test_package_upgrade_restarts_the_agent_without_interrupting_clients(node: Node) -> None:
    ensure_finance(node)
    smbd = debpkg.main_pid(node.container, "smbd.service")
    before = managed_files(node)
    old = debpkg.main_pid(node.container)
    with connected_client(node):
        output = debpkg.install_deb(node.container, node.deb, reinstall=True)
        assert "Setting up smbgw-agent (0.1.0-1)" in output, output
        wait_ready(node, old)  # postinst (dh_installsystemd) restarted it
    assert managed_files(node) == before
    assert debpkg.main_pid(node.container, "smbd.service") == smbd
    assert node.run("systemctl", "is-enabled", UNIT).stdout.strip() == "enabled"


def test_stopped_agent_leaves_shares_served(node: Node) -> None:
    ensure_finance(node)
    before = managed_files(node)
    node.run("systemctl", "stop", UNIT)
    try:
        assert node.props("ActiveState")["ActiveState"] == "inactive"
        assert node.props("ActiveState", unit="smbd.service")["ActiveState"] == "active"
        proc = node.smbclient("finance", "get hello.txt -")
        assert proc.returncode == 0 and HELLO.strip() in proc.stdout, proc.stdout + proc.stderr
        assert managed_files(node) == before
        # The status survives (RuntimeDirectoryPreserve=yes) for `smbgwctl status`.
        assert "finance" in node.status()["shares"]
    finally:
        node.systemctl("start")
    wait_ready(node, 0)


def test_sigkill_is_restarted_by_systemd_and_converges(node: Node) -> None:
    ensure_finance(node)
    restarts = int(node.props("NRestarts")["NRestarts"])
    old = debpkg.main_pid(node.container)
    mark = debpkg.journal_mark(node.container)
    node.run("kill", "-KILL", str(old))
    wait_ready(node, old, timeout=30)
    assert int(node.props("NRestarts")["NRestarts"]) == restarts + 1
    wait_journal(node, mark, r"Failed with result 'signal'")
    # It converges: the share it served is still served, a new one goes live.
    assert served(node, "finance", "hello.txt")
    node.container.write_file(f"{SHARES_D}/sales.toml", share_file(f"{SHARE_ROOT}/sales", "Sales"))
    wait_for("sales served", lambda: served(node, "sales"), timeout=20, interval=0.3)
    wait_journal(node, mark, r"share sales \(sales\.toml\): applied")


def test_watchdog_restarts_a_hung_agent(node: Node) -> None:
    ensure_finance(node)
    node.container.write_file(WATCHDOG_DROPIN, "[Service]\nWatchdogSec=3s\n")
    stopped: int | None = None
    try:
        node.run("systemctl", "daemon-reload")
        old = debpkg.main_pid(node.container)
        node.systemctl("restart")
        pid = wait_ready(node, old)
        assert node.props("WatchdogUSec")["WatchdogUSec"] == "3s"
        time.sleep(4)  # alive past one watchdog period: the reconcile loop pings
        assert debpkg.main_pid(node.container) == pid
        restarts = int(node.props("NRestarts")["NRestarts"])
        mark = debpkg.journal_mark(node.container)
        began = time.monotonic()
        node.run("kill", "-STOP", str(pid))
        stopped = pid
        wait_ready(node, pid, timeout=40)
        took = time.monotonic() - began
        stopped = None
        assert int(node.props("NRestarts")["NRestarts"]) == restarts + 1
        lines = wait_journal(node, mark, r"Watchdog timeout")
        assert "Failed with result 'watchdog'" in lines, lines
        # PYTHONFAULTHANDLER=1: the SIGABRT leaves a traceback of where it hung.
        assert "Fatal Python error: Aborted" in lines and "smbgw_agent/daemon.py" in lines, lines
        assert took < 20, f"the watchdog restart took {took:.1f} s"
        assert served(node, "finance", "hello.txt")
    finally:
        if stopped is not None:
            node.run("kill", "-CONT", str(stopped), check=False)
        node.run("rm", "-f", WATCHDOG_DROPIN)
        node.run("systemctl", "daemon-reload")
        node.systemctl("restart", check=False)
    wait_ready(node, 0)
    assert node.props("WatchdogUSec")["WatchdogUSec"] == "30s"


def test_strict_dropin_from_the_readme(node: Node) -> None:
    """README's ProtectSystem=strict drop-in: listed share roots work, others are refused."""
    ensure_finance(node)
    dropin = "/etc/systemd/system/smbgw-agent.service.d/strict.conf"
    node.container.write_file(dropin, "[Service]\nProtectSystem=strict\n"
                              "ReadWritePaths=/etc/samba -/var/lib/samba -/var/cache/samba -/run/samba /srv\n")
    try:
        node.run("systemctl", "daemon-reload")
        old = debpkg.main_pid(node.container)
        node.systemctl("restart")
        wait_ready(node, old)
        assert node.props("ProtectSystem")["ProtectSystem"] == "strict"
        node.container.write_file(f"{SHARES_D}/projects.toml", share_file(f"{SHARE_ROOT}/projects", "Projects"))
        wait_for("projects served", lambda: served(node, "projects"), timeout=20, interval=0.3)
        # /opt is not listed: the agent cannot create the directory and says so.
        node.container.write_file(f"{SHARES_D}/outside.toml", share_file("/opt/outside", "Outside"))
        failed = wait_for("outside failing", lambda: node.status().get("shares", {}).get("outside", {}).get("error"),
                          timeout=20)
        assert "Read-only file system" in str(failed), failed
        assert served(node, "finance", "hello.txt")
    finally:
        node.run("rm", "-f", dropin, f"{SHARES_D}/outside.toml", f"{SHARES_D}/projects.toml")
        node.run("systemctl", "daemon-reload")
        node.systemctl("restart", check=False)
    wait_ready(node, 0)
    wait_for("outside forgotten", lambda: "outside" not in node.status().get("shares", {}), timeout=20)


def reloaded_status(node: Node) -> dict[str, Any] | None:
    """The native plugin's status once it records a reload, else None."""
    native: dict[str, Any] = node.status().get("plugins", {}).get("mode_native", {})
    return native if native.get("last_reload") else None


def test_smbcontrol_fallback_works_inside_the_sandbox(node: Node) -> None:
    """Without systemd the agent reloads smbd with smbcontrol: the hardening must allow it."""
    ensure_finance(node)
    dropin = "/etc/systemd/system/smbgw-agent.service.d/50-e2e-no-systemd.conf"
    node.container.write_file(dropin, "[Service]\nExecStart=\nExecStart=/usr/sbin/smbgw-agent --no-systemd\n")
    try:
        node.run("systemctl", "daemon-reload")
        old = debpkg.main_pid(node.container)
        node.systemctl("restart")
        wait_ready(node, old)
        node.container.write_file(f"{SHARES_D}/direct.toml", share_file(f"{SHARE_ROOT}/direct", "Direct"))
        wait_for("direct served", lambda: served(node, "direct"), timeout=20, interval=0.3)
        # smbd can answer before the pass that reloaded it has written status.json.
        native = wait_for("status after the reload", lambda: reloaded_status(node), timeout=10)
        assert (native["reload_via"], native["last_reload"], native["error"]) == ("direct", "direct", None), native
    finally:
        node.run("rm", "-f", dropin, f"{SHARES_D}/direct.toml")
        node.run("systemctl", "daemon-reload")
        node.systemctl("restart", check=False)
    wait_ready(node, 0)


def test_invalid_agent_toml_stops_the_agent_without_restart_loop(node: Node) -> None:
    """Exit status 2 is not restarted (RestartPreventExitStatus=2); shares stay served."""
    ensure_finance(node)
    original = node.run("cat", "/etc/smbgw/agent.toml").stdout
    # Clear the start rate limit (see Node.systemctl) before counting restarts.
    node.run("systemctl", "reset-failed", UNIT, check=False)
    restarts = int(node.props("NRestarts")["NRestarts"])
    node.container.write_file("/etc/smbgw/agent.toml", original + "\n[agent_typo]\nfoo = 1\n")
    try:
        node.run("systemctl", "restart", UNIT, check=False)
        wait_for("the unit failed", lambda: node.props("ActiveState")["ActiveState"] == "failed", timeout=20)
        props = node.props("Result", "ExecMainStatus", "NRestarts")
        assert props == {"Result": "exit-code", "ExecMainStatus": "2", "NRestarts": str(restarts)}, props
        time.sleep(3)  # longer than RestartSec: still not restarted
        assert node.props("ActiveState")["ActiveState"] == "failed"
        lines = debpkg.journal(node.container)
        assert "refusing to start with an invalid /etc/smbgw/agent.toml" in lines, lines
        assert served(node, "finance", "hello.txt")
    finally:
        node.container.write_file("/etc/smbgw/agent.toml", original)
        node.run("systemctl", "reset-failed", UNIT, check=False)
        node.systemctl("start", check=False)
    wait_ready(node, 0)


def test_plugin_verbs_and_the_vzdump_hook_work_as_installed(node: Node) -> None:
    """smbgwctl's plugin verbs reach the sandboxed agent over its control socket, and the
    vzdump hook the package ships runs in vzdump's emptied environment."""
    ensure_finance(node)
    refused = node.run("/usr/sbin/smbgwctl", "snapshot", "finance", check=False)
    assert refused.returncode == 1 and "share finance has no [backup] table" in refused.stderr, refused
    hook = "/usr/share/smbgw-agent/smbgw-vzdump-hook"
    for argv in (["job-start"], ["backup-start", "snapshot", "105"], ["backup-end", "snapshot", "105"]):
        ran = node.run("env", "-i", "LC_ALL=C", "VMTYPE=lxc", hook, *argv, check=False)
        assert ran.returncode == 0, (argv, ran.stdout, ran.stderr)


def test_remove_and_purge_leave_shares_served(node: Node) -> None:
    # Last in this file: it removes the package every test above runs against.
    ensure_finance(node)
    env = ["env", "DEBIAN_FRONTEND=noninteractive"]
    node.run(*env, "apt-get", "remove", "--yes", "smbgw-agent", timeout=300)
    assert node.props("ActiveState")["ActiveState"] == "inactive"
    assert served(node, "finance", "hello.txt")
    assert node.exists("/var/lib/smbgw")
    node.run(*env, "apt-get", "purge", "--yes", "smbgw-agent", timeout=300)
    assert not node.exists("/var/lib/smbgw") and not node.exists("/etc/smbgw/agent.toml")
    # The admin's share files and the generated Samba configuration stay: clients too.
    assert node.exists(f"{SHARES_D}/finance.toml")
    assert served(node, "finance", "hello.txt")
    assert node.props("LoadState")["LoadState"] == "not-found"
    assert not os.path.lexists(node.container.path("/etc/systemd/system/multi-user.target.wants/" + UNIT))

"""Faults on the serving path itself, each injected for real under the whole agent: the
file system of /etc/samba full or read-only, smbd killed, and systemd's D-Bus gone or
frozen.

What every test checks, in the requirement's words: a clear status and log, retries
with backoff, nothing lost (what is served stays served, the files of what is served stay
byte for byte, no temporary file is left), and recovery once the fault ends, with no
action on the share files.

- /etc/samba full and read-only, and smbd killed without systemd to start it again: a
  sandbox root with its own smbd and a tmpfs mounted on the sandbox's /etc/samba
  (tests/support/faults.py), as the other reliability tests.
- smbd killed on a node, and D-Bus unreachable: a sandboxed agent never talks to
  systemd (`--root` implies `--no-systemd`), so these run in one booted Debian 12
  container (tests/support/nspawn.py) with systemd as PID 1: the agent from this source
  tree runs under the shipped unit (systemd/smbgw-agent.service, watchdog and hardening
  included; only ExecStart points at the source), against the container's own smbd.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.sandbox import Sandbox, free_port
from smbgw_agent.effects.services import RECONNECT_INTERVAL
from smbgw_agent.effects.systemd import CALL_TIMEOUT
from tests.support import nspawn
from tests.support.agent import REPO, served, wait_for
from tests.support.debpkg import CONTAINER_PACKAGES
from tests.support.faults import fill, small_tmpfs
from tests.support.nspawn import SystemdContainer
from tests.support.procs import (
    RestartableAgent,
    lasting_temporaries,
    wait_metric,
    wait_served,
    write_agent_toml,
)

pytestmark = pytest.mark.integration


def declare(box: Sandbox, name: str, extra: str = "") -> None:
    box.share_dir(name)
    (box.shares_dir / f"{name}.toml").write_text(f'path = "/srv/smb/{name}"\n{extra}')


def files_below(directory: Path, leave_out: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every regular file below `directory` with its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name not in leave_out}


def failing(*names: str, at_least: int) -> Callable[[dict[str, Any]], bool]:
    """status.json: every share in `names` failed, at least `at_least` times in a row."""
    def check(status: dict[str, Any]) -> bool:
        shares = status.get("shares", {})
        return all(shares.get(n, {}).get("state") == "failed" and shares[n].get("failures", 0) >= at_least
                   for n in names)
    return check


# ---- /etc/samba full or read-only ---------------------------------------------------------


def _samba_config_fault(box: Sandbox, agent: RestartableAgent, break_it: Callable[[Path], Callable[[], None]],
                        said: str) -> None:
    """/etc/samba on a tmpfs of its own (the admin's smb.conf copied onto it); one share
    served; then `break_it(etc_samba)` (which returns how to mend it), a new share and an
    edit of the served one; then mended, with no action on the share files."""
    etc_samba = box.smb_conf.parent
    samba_dir = box.paths.samba_dir
    admin = box.smb_conf.read_bytes()
    with small_tmpfs(etc_samba, "1m"):
        box.smb_conf.write_bytes(admin)
        try:
            port = write_agent_toml(box)
            agent.start()
            declare(box, "steady", 'comment = "as first served"\n')
            wait_served(box, "steady")
            agent.wait_status(lambda s: (s.get("pass") or {}).get("ok")
                              and s["shares"].get("steady", {}).get("state") == "served")
            live = files_below(etc_samba)

            mend = break_it(etc_samba)
            declare(box, "fresh")
            declare(box, "steady", 'comment = "edited while /etc/samba took no writes"\n')
            # Failed, and retried with backoff: 2 s after the first failure, 4 s after the second.
            status = agent.wait_status(failing("fresh", "steady", at_least=2), timeout=60)
            for name in ("fresh", "steady"):
                share = status["shares"][name]
                assert said in share["error"], share
                assert share["retry_at"] is not None, share
            log = agent.log_text()
            for name in ("fresh", "steady"):
                assert re.search(rf"ERROR share {name}: .*{said}.*; retry 2 in 4s", log), log[-3000:]
            assert not status["pass"]["ok"] and said in " ".join(status["pass"]["errors"])
            assert agent.ctl("status").returncode == 1
            wait_metric(port, 'smbgw_share_state{share="fresh",state="failed"} 1.0')
            wait_metric(port, 'smbgw_share_up{share="steady"} 0.0')  # served, but not as declared
            # Nothing lost: the live configuration byte for byte, the served share served as
            # it was, no half-written file, no staging area left behind.
            assert files_below(etc_samba, ("filler",)) == live
            assert served(box, "steady") and not served(box, "fresh")
            assert lasting_temporaries(etc_samba, samba_dir) == []
            assert not (samba_dir / ".staging").exists()
            assert agent.running

            mend()
            # Nobody touches anything: the next retry applies both.
            wait_served(box, "fresh", timeout=60)
            agent.wait_status(lambda s: (s.get("pass") or {}).get("ok") and all(
                s["shares"][n]["state"] == "served" and s["shares"][n]["failures"] == 0 for n in ("fresh", "steady")),
                timeout=30)
            assert "edited while /etc/samba took no writes" in (samba_dir / "share-steady.conf").read_text()
            wait_metric(port, 'smbgw_share_up{share="steady"} 1.0')
            assert served(box, "steady")
            assert lasting_temporaries(etc_samba, samba_dir) == []
        finally:
            agent.stop()
    log = agent.log_text()
    assert "internal error" not in log and "Traceback" not in log


def test_a_full_etc_samba_keeps_what_is_served_and_applies_the_changes_once_there_is_room(
    sandbox: Sandbox, restartable: RestartableAgent
) -> None:
    """/etc/samba full (ENOSPC): the served share stays served and every file there stays byte
    for byte; a new and an edited share fail with "No space left on device" in status.json
    and the log, retried with backoff (2 s, 4 s, ...); nothing half-written is left; once
    space is freed the next retry applies both, with no action."""
    def full(etc_samba: Path) -> Callable[[], None]:
        filler = fill(etc_samba)
        return filler.unlink

    _samba_config_fault(sandbox, restartable, full, "No space left on device: '")  # and the file's name


def test_a_read_only_etc_samba_keeps_what_is_served_and_applies_the_changes_once_writable(
    sandbox: Sandbox, restartable: RestartableAgent
) -> None:
    """/etc/samba read-only (EROFS): as when it is full; the new and the edited share fail
    with "Read-only file system" (naming the directory), retried with backoff, and are
    applied by the next retry after the remount read-write."""
    def read_only(etc_samba: Path) -> Callable[[], None]:
        subprocess.run(["mount", "-o", "remount,ro", str(etc_samba)], check=True)
        return lambda: subprocess.run(["mount", "-o", "remount,rw", str(etc_samba)], check=True)

    _samba_config_fault(sandbox, restartable, read_only, "Read-only file system")


# ---- smbd killed, no systemd to start it ----------------------------------------------------


def test_smbd_killed_without_systemd_is_reported_and_served_again_when_it_runs(
    sandbox: Sandbox, restartable: RestartableAgent
) -> None:
    """smbd killed (SIGKILL) under an agent that has no systemd to ask (the sandbox's direct
    mode, as on a node whose D-Bus is gone): the agent cannot start smbd; it reports it by
    `smbgw_service_active{unit="smbd.service"} 0` (status.json and the log stay quiet while
    nothing changes); a share declared meanwhile goes live on disk and its reload fails
    as `samba:host` in status.json and the log, retried with backoff; no share file or
    fragment is touched; once smbd runs again every share is served and samba:host
    recovers at its next retry, with no action."""
    box = sandbox
    port = free_port()
    write_agent_toml(box, "", port)
    restartable.start()
    declare(box, "steady")
    wait_served(box, "steady")
    wait_metric(port, 'smbgw_service_active{unit="smbd.service"} 1.0', 40)
    fragment = box.paths.samba_dir / "share-steady.conf"
    live = fragment.read_bytes()
    declared = files_below(box.shares_dir)

    assert box.smbd is not None
    box.smbd.kill()  # SIGKILL to the smbd this sandbox started, by its pid
    box.smbd.wait(10)
    wait_metric(port, 'smbgw_service_active{unit="smbd.service"} 0.0', 40)
    assert not served(box, "steady")
    assert restartable.running

    declare(box, "fresh")
    status = restartable.wait_status(
        lambda s: s.get("resources", {}).get("samba:host", {}).get("failures", 0) >= 2, timeout=60)
    samba = status["resources"]["samba:host"]
    assert samba["state"] == "failed" and "reload" in samba["error"], samba
    assert "Can't find pid for destination 'smbd'" in samba["error"], samba
    assert samba["retry_at"] is not None and status["pass"]["failed_resources"] == ["samba:host"]
    assert re.search(r"ERROR samba:host \(mode_native\): .*reload.*; retry 2 in 4s", restartable.log_text())
    assert restartable.ctl("status").returncode == 1
    wait_metric(port, 'smbgw_resource_up{plugin="mode_native",resource="samba:host"} 0.0')
    # Declared as before, the new one's configuration live on disk, waiting for smbd.
    assert {n: s["state"] for n, s in status["shares"].items()} == {"fresh": "served", "steady": "served"}
    assert (box.paths.samba_dir / "share-fresh.conf").exists() and fragment.read_bytes() == live
    assert {k: v for k, v in files_below(box.shares_dir).items() if k != "fresh.toml"} == declared

    box.start_smbd()  # smbd back, as an administrator (or systemd) would start it
    wait_served(box, "steady", timeout=30)
    wait_served(box, "fresh", timeout=30)
    restartable.wait_status(lambda s: s["resources"]["samba:host"]["state"] == "applied"
                            and (s.get("pass") or {}).get("ok"), timeout=60)
    wait_metric(port, 'smbgw_service_active{unit="smbd.service"} 1.0', 40)
    wait_metric(port, 'smbgw_resource_up{plugin="mode_native",resource="samba:host"} 1.0')
    assert restartable.ctl("status").returncode == 0
    restartable.stop()
    assert "internal error" not in restartable.log_text()


# ---- a node with systemd: smbd killed, D-Bus gone and frozen ---------------------------------

AGENT = "smbgw-agent.service"
USER, PASSWORD = "smbgwtest", "Serving-Faults-7"
NODE_FILES = {
    "/etc/systemd/system/smbgw-agent.service": (REPO / "systemd/smbgw-agent.service").read_text(),
    # The shipped unit as it is, but the agent from this tree (read-only at /src).
    "/etc/systemd/system/smbgw-agent.service.d/source.conf": (
        "[Service]\nExecStart=\nExecStart=/usr/bin/python3 -m smbgw_agent\n"
        "Environment=PYTHONPATH=/src PYTHONDONTWRITEBYTECODE=1\n"
    ),
    "/etc/smbgw/agent.toml": '[agent]\nallowed_roots = ["/srv"]\nresync_interval = "2s"\n',
    "/etc/smbgw/shares.d/steady.toml": 'path = "/srv/smb/steady"\n',
    "/srv/smb/steady/hello.txt": "hello\n",
}


@pytest.fixture(scope="module")
def node() -> Iterator[SystemdContainer]:
    """One booted Debian 12 container (the .deb's dependencies, the image the .deb test
    uses), the agent from this tree running under the shipped unit, a local SMB user."""
    missing = nspawn.missing_requirements()
    if missing:
        pytest.skip("systemd containers unavailable: " + "; ".join(missing))
    image = nspawn.ensure_base_image(CONTAINER_PACKAGES)
    with nspawn.boot_container(image, files=NODE_FILES, nspawn_args=[f"--bind-ro={REPO}:/src"]) as container:
        container.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", USER])
        container.run(["smbpasswd", "-s", "-a", USER], input=f"{PASSWORD}\n{PASSWORD}\n")
        container.run(["systemctl", "start", AGENT], timeout=120)
        try:
            wait_for(lambda: node_status(container).get("passes", 0) >= 1, timeout=60, interval=0.2)
        except AssertionError:
            print(journal(container))
            raise
        yield container


def node_status(node: SystemdContainer) -> dict[str, Any]:
    proc = node.run(["cat", "/run/smbgw/status.json"], check=False)
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def wait_node_status(node: SystemdContainer, predicate: Callable[[dict[str, Any]], Any],
                     timeout: float) -> dict[str, Any]:
    try:
        wait_for(lambda: predicate(node_status(node)), timeout=timeout, interval=0.5)
    except AssertionError:
        status = node_status(node)
        print(json.dumps({k: status.get(k) for k in ("pass", "services", "shares", "resources")}, indent=1))
        print(journal(node)[-4000:])
        raise
    return node_status(node)


def journal(node: SystemdContainer) -> str:
    return node.run(["journalctl", "--no-pager", "-o", "cat", "-u", AGENT], check=False).stdout


def unit_property(node: SystemdContainer, unit: str, name: str) -> str:
    return node.run(["systemctl", "show", "-P", name, unit]).stdout.strip()


def node_served(node: SystemdContainer, share: str) -> bool:
    proc = node.run(["smbclient", f"//127.0.0.1/{share}", "-U", f"{USER}%{PASSWORD}", "-c", "ls"],
                    check=False, timeout=30)
    return proc.returncode == 0


def wait_node_served(node: SystemdContainer, share: str, timeout: float) -> None:
    try:
        wait_for(lambda: node_served(node, share), timeout=timeout, interval=0.5)
    except AssertionError:
        print(journal(node)[-4000:])
        raise


def node_metric(node: SystemdContainer, line: str) -> bool:
    script = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9945/metrics', timeout=5).read().decode())"
    scraped = node.run(["python3", "-c", script], check=False).stdout
    return line in scraped.splitlines()


def smbd_control(status: dict[str, Any]) -> dict[str, Any]:
    found = status.get("services", {}).get("smbd.service", {})
    return found if isinstance(found, dict) else {}


def test_smbd_killed_on_a_node_is_started_again_by_the_agent_through_systemd(node: SystemdContainer) -> None:
    """smbd killed (SIGKILL) on a node where the agent runs under systemd (smbd.service has no
    Restart=): at its next pass the agent finds the unit failed, logs "smbd.service is
    failed/failed; starting it", starts it through systemd over D-Bus, and the shares are
    served again; no share file is touched, the agent itself is not restarted."""
    wait_node_served(node, "steady", timeout=30)
    declared = node.run(["cat", "/etc/smbgw/shares.d/steady.toml"]).stdout
    agent_pid = unit_property(node, AGENT, "MainPID")
    smbd_pid = unit_property(node, "smbd.service", "MainPID")
    assert smbd_pid != "0"

    node.run(["kill", "-KILL", smbd_pid])  # the container's own smbd, by its pid
    wait_for(lambda: unit_property(node, "smbd.service", "MainPID") not in ("0", smbd_pid)
             and unit_property(node, "smbd.service", "ActiveState") == "active", timeout=60, interval=0.5)
    assert re.search(r"smbd\.service is \w+/\w+; starting it", journal(node)), journal(node)[-3000:]
    wait_node_served(node, "steady", timeout=30)
    status = wait_node_status(node, lambda s: smbd_control(s).get("active") is True, timeout=30)
    assert smbd_control(status)["control"] == "systemd"
    assert node.run(["cat", "/etc/smbgw/shares.d/steady.toml"]).stdout == declared
    assert unit_property(node, AGENT, "MainPID") == agent_pid
    assert unit_property(node, AGENT, "NRestarts") == "0"


def test_systemd_unreachable_on_d_bus_is_survived_reported_and_recovered_from(node: SystemdContainer) -> None:
    """The system bus frozen (dbus-daemon stopped with SIGSTOP: connections are accepted,
    nothing answers), then gone (dbus stopped: the socket is removed). Each time the agent
    stays up (no watchdog kill, no restart), logs "systemd cannot be reached (...)" once,
    shows `services.smbd.service` as `direct` with "no systemd: <reason>" in status.json,
    keeps serving, applies a share declared meanwhile (smbd reloaded with smbcontrol
    instead), never reports smbd as inactive, and asks systemd again every 30 s; once the
    bus answers it logs "systemd answers on D-Bus again" and uses systemd again."""
    agent_pid = unit_property(node, AGENT, "MainPID")
    assert smbd_control(node_status(node)).get("control") == "systemd"

    # 1. Frozen. Long enough for one reconnection attempt to the frozen bus (it used to
    # cost 30 s outside a pass, where nothing fed the watchdog: systemd killed the agent).
    node.run(["systemctl", "kill", "--signal=SIGSTOP", "dbus.service"])
    try:
        node.write_file("/etc/smbgw/shares.d/frozen.toml", 'path = "/srv/smb/frozen"\n')
        status = wait_node_status(
            node, lambda s: s.get("shares", {}).get("frozen", {}).get("state") == "served"
            and smbd_control(s).get("control") == "direct", timeout=CALL_TIMEOUT * 3 + 15)
        assert "no systemd" in smbd_control(status)["detail"], smbd_control(status)
        assert status["plugins"]["mode_native"]["last_reload"] == "direct"
        wait_node_served(node, "frozen", timeout=30)
        assert node_served(node, "steady")
        assert len(re.findall("systemd cannot be reached", journal(node))) == 1
        wait_for(lambda: node_metric(node, 'smbgw_service_active{unit="smbd.service"} 1.0'), timeout=40,
                 interval=1)
        # Past the next attempt to reach systemd (RECONNECT_INTERVAL), still frozen.
        first = wait_node_status(node, lambda s: s.get("updated"), timeout=5)["updated"]
        wait_node_status(node, lambda s: s.get("updated", 0) > first + RECONNECT_INTERVAL + CALL_TIMEOUT,
                         timeout=RECONNECT_INTERVAL + CALL_TIMEOUT * 3 + 15)
        assert unit_property(node, AGENT, "MainPID") == agent_pid, journal(node)[-3000:]
        assert unit_property(node, AGENT, "NRestarts") == "0"
    finally:
        node.run(["systemctl", "kill", "--signal=SIGCONT", "dbus.service"])
    wait_node_status(node, lambda s: smbd_control(s).get("control") == "systemd",
                     timeout=RECONNECT_INTERVAL + CALL_TIMEOUT * 2 + 30)
    assert "systemd answers on D-Bus again" in journal(node)

    # 2. Gone: dbus stopped, its socket removed.
    node.run(["systemctl", "stop", "dbus.socket", "dbus.service"])
    try:
        node.write_file("/etc/smbgw/shares.d/nobus.toml", 'path = "/srv/smb/nobus"\n')
        status = wait_node_status(
            node, lambda s: s.get("shares", {}).get("nobus", {}).get("state") == "served"
            and smbd_control(s).get("control") == "direct", timeout=60)
        assert "no systemd" in smbd_control(status)["detail"], smbd_control(status)
        wait_node_served(node, "nobus", timeout=30)
        assert len(re.findall("systemd cannot be reached", journal(node))) == 2
    finally:
        node.run(["systemctl", "start", "dbus.socket", "dbus.service"])
    wait_node_status(node, lambda s: smbd_control(s).get("control") == "systemd" and smbd_control(s).get("active"),
                     timeout=RECONNECT_INTERVAL + CALL_TIMEOUT * 2 + 30)
    assert len(re.findall("systemd answers on D-Bus again", journal(node))) == 2
    for share in ("steady", "frozen", "nobus"):
        assert node_served(node, share), share
    assert unit_property(node, AGENT, "MainPID") == agent_pid
    assert unit_property(node, AGENT, "NRestarts") == "0"
    assert "watchdog" not in journal(node).lower() and "Traceback" not in journal(node)

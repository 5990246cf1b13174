"""SystemdManager against a real systemd (PID 1 of a container), over its real system bus.

The host has no systemd, so each test boots its own container (tests/support/nspawn.py)
and talks to it from the host through /proc/<leader>/root/run/dbus/system_bus_socket.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gi.repository import GLib

from smbgw_agent.effects.systemd import (
    SystemdError,
    SystemdManager,
    SystemdUnavailable,
    UnitJobFailed,
    UnitState,
)
from tests.support.nspawn import ContainerFactory, SystemdContainer

pytestmark = pytest.mark.integration


def probe_unit(name: str) -> str:
    """A service whose every start, reload and stop leaves a line in /run/<name>.log."""
    log = f"/run/{name}.log"
    return f"""\
[Unit]
Description=smbgw test probe {name}

[Service]
Type=simple
ExecStartPre=/bin/sh -c 'echo start >> {log}'
ExecStart=/bin/sleep infinity
ExecReload=/bin/sh -c 'echo reload >> {log}'
ExecStopPost=/bin/sh -c 'echo stop >> {log}'
"""


UNITS = {
    "/etc/systemd/system/smbgw-probe.service": probe_unit("smbgw-probe"),
    "/etc/systemd/system/smbgw-probe-a.service": probe_unit("smbgw-probe-a"),
    "/etc/systemd/system/smbgw-probe-b.service": probe_unit("smbgw-probe-b"),
    "/etc/systemd/system/smbgw-fails.service": (
        "[Unit]\nDescription=start always fails\n\n[Service]\nType=oneshot\nExecStart=/bin/false\n"
    ),
    "/etc/systemd/system/smbgw-slow.service": (
        "[Unit]\nDescription=start takes long\n\n[Service]\nType=oneshot\nExecStart=/bin/sleep 60\n"
    ),
}


@pytest.fixture
def container(systemd_container_factory: ContainerFactory) -> SystemdContainer:
    return systemd_container_factory(files=UNITS)


@pytest.fixture
def manager(container: SystemdContainer) -> Iterator[SystemdManager]:
    with SystemdManager.connect(container.bus_address, timeout=30) as mgr:
        yield mgr


def main_pid(container: SystemdContainer, unit: str) -> int:
    return int(container.run(["systemctl", "show", "-P", "MainPID", unit]).stdout.strip())


def probe_log(container: SystemdContainer, name: str) -> list[str]:
    path = container.path(f"/run/{name}.log")
    return path.read_text().split() if path.exists() else []


def test_smbd_lifecycle(container: SystemdContainer, manager: SystemdManager) -> None:
    unit = "smbd.service"
    # smbd is enabled in the image, and the container is booted, so it must be running.
    assert manager.state(unit) == UnitState("active", "running", "loaded")

    manager.stop(unit)
    assert manager.state(unit) == UnitState("inactive", "dead")
    assert not manager.state(unit).is_active
    assert main_pid(container, unit) == 0

    manager.start(unit)
    assert manager.state(unit).is_active
    assert manager.state(unit).sub_state == "running"
    first = main_pid(container, unit)
    assert first > 0

    manager.reload(unit)  # ExecReload of smbd: HUP to the same process
    assert manager.state(unit) == UnitState("active", "running")
    assert main_pid(container, unit) == first

    manager.restart(unit)
    assert manager.state(unit) == UnitState("active", "running")
    assert main_pid(container, unit) not in (0, first)

    # starting what already runs is a no-op job that ends "done"
    manager.start(unit)
    assert manager.state(unit).is_active


def test_reload_really_runs_execreload(container: SystemdContainer, manager: SystemdManager) -> None:
    unit, name = "smbgw-probe.service", "smbgw-probe"
    assert manager.state(unit) == UnitState("inactive", "dead")
    assert probe_log(container, name) == []

    manager.start(unit)
    assert manager.state(unit) == UnitState("active", "running")
    pid = main_pid(container, unit)
    assert probe_log(container, name) == ["start"]

    manager.reload(unit)
    manager.reload(unit)
    # JobRemoved came after ExecReload finished: the evidence is already there.
    assert probe_log(container, name) == ["start", "reload", "reload"]
    assert main_pid(container, unit) == pid

    manager.restart(unit)
    assert probe_log(container, name) == ["start", "reload", "reload", "stop", "start"]
    assert main_pid(container, unit) not in (0, pid)

    manager.stop(unit)
    assert manager.state(unit) == UnitState("inactive", "dead")
    assert probe_log(container, name)[-1] == "stop"

    # reloading a stopped unit is refused by systemd, and that must not look like success
    with pytest.raises(UnitJobFailed) as info:
        manager.reload(unit)
    assert unit in str(info.value)
    assert probe_log(container, name).count("reload") == 2


def test_nonexistent_unit(manager: SystemdManager) -> None:
    unit = "smbgw-does-not-exist.service"
    for verb in (manager.start, manager.stop, manager.restart, manager.reload):
        with pytest.raises(UnitJobFailed) as info:
            verb(unit)
        assert unit in str(info.value)
        assert info.value.unit == unit
        assert info.value.result == "org.freedesktop.systemd1.NoSuchUnit"
    state = manager.state(unit)
    assert state.load_state == "not-found"
    assert not state.is_active


def test_invalid_unit_name(manager: SystemdManager) -> None:
    with pytest.raises(UnitJobFailed, match="no-suffix"):
        manager.start("no-suffix")
    with pytest.raises(UnitJobFailed, match="no-suffix"):
        manager.state("no-suffix")


def test_failing_start(manager: SystemdManager) -> None:
    unit = "smbgw-fails.service"
    with pytest.raises(UnitJobFailed) as info:
        manager.start(unit)
    assert info.value.result == "failed"
    assert info.value.verb == "start"
    assert unit in str(info.value)
    assert "'failed'" in str(info.value)
    assert manager.state(unit) == UnitState("failed", "failed")


def test_job_wait_times_out(container: SystemdContainer, manager: SystemdManager) -> None:
    unit = "smbgw-slow.service"
    started = time.monotonic()
    with pytest.raises(UnitJobFailed, match="timed out") as info:
        manager.start(unit, timeout=1.0)
    assert 0.9 < time.monotonic() - started < 5
    assert info.value.result == "timed out"
    assert unit in str(info.value)
    assert manager.state(unit).active_state == "activating"  # the job was left to systemd
    manager.stop(unit)  # cancels the start job; killing the oneshot counts as a failure
    assert manager.state(unit).active_state in ("inactive", "failed")


def test_from_worker_threads(container: SystemdContainer, manager: SystemdManager) -> None:
    # Someone else's main loop owns the global default context, as in a larger process.
    # Had we subscribed in the default context, that loop would swallow our JobRemoved
    # signals and every job below would time out.
    loop = GLib.MainLoop()
    loop_thread = threading.Thread(target=loop.run, daemon=True)
    loop_thread.start()
    errors: list[BaseException] = []
    states: dict[str, UnitState] = {}

    def shared_manager(unit: str) -> None:
        try:
            for _ in range(3):
                manager.start(unit, timeout=20)
                states[unit] = manager.state(unit)
                manager.reload(unit, timeout=20)
                manager.stop(unit, timeout=20)
        except BaseException as exc:
            errors.append(exc)

    def own_connection() -> None:
        try:
            with SystemdManager.connect(container.bus_address, timeout=20) as mgr:
                mgr.restart("smbd.service")
                states["smbd.service"] = mgr.state("smbd.service")
        except BaseException as exc:
            errors.append(exc)

    try:
        workers = [
            threading.Thread(target=shared_manager, args=("smbgw-probe-a.service",)),
            threading.Thread(target=shared_manager, args=("smbgw-probe-b.service",)),
            threading.Thread(target=own_connection),
        ]
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 60
        for worker in workers:
            worker.join(max(0.1, deadline - time.monotonic()))
        assert not any(worker.is_alive() for worker in workers)
    finally:
        loop.quit()
        loop_thread.join(10)
    assert errors == []
    assert states["smbgw-probe-a.service"] == UnitState("active", "running")
    assert states["smbgw-probe-b.service"] == UnitState("active", "running")
    assert states["smbd.service"] == UnitState("active", "running")
    for name in ("smbgw-probe-a", "smbgw-probe-b"):
        assert probe_log(container, name) == ["start", "reload", "stop"] * 3
    # and the calling (main) thread still works afterwards
    manager.start("smbgw-probe.service")
    assert manager.state("smbgw-probe.service").is_active


def test_systemd_gone(container: SystemdContainer, manager: SystemdManager) -> None:
    assert manager.state("smbd.service").is_active
    assert not manager.closed
    container.stop()
    with pytest.raises(SystemdUnavailable):
        manager.state("smbd.service")
    assert manager.closed
    with pytest.raises(SystemdError):
        manager.start("smbd.service")


def test_connect_default_address_is_the_system_bus(
    container: SystemdContainer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", container.bus_address)
    with SystemdManager.connect() as mgr:
        assert mgr.address == container.bus_address
        assert mgr.state("smbd.service").is_active
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/system_bus_socket")
    with pytest.raises(SystemdUnavailable, match="nonexistent"):
        SystemdManager.connect(timeout=5)


# --------------------------------------------------------------- no container needed


@pytest.mark.parametrize(
    "address",
    ["unix:path=/nonexistent/smbgw/bus_socket", "not-a-dbus-address", "tcp:host=127.0.0.1,port=1"],
)
def test_connect_bogus_address(address: str) -> None:
    started = time.monotonic()
    with pytest.raises(SystemdUnavailable):
        SystemdManager.connect(address, timeout=10)
    assert time.monotonic() - started < 2


def test_connect_to_silent_socket_times_out(tmp_path: Path) -> None:
    path = tmp_path / "silent"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        listener.listen(4)  # the kernel accepts, nobody ever answers
        started = time.monotonic()
        with pytest.raises(SystemdUnavailable, match="did not answer"):
            SystemdManager.connect(f"unix:path={path}", timeout=1)
        assert time.monotonic() - started < 4
    finally:
        listener.close()


def test_connect_to_bus_without_systemd(container: SystemdContainer) -> None:
    # A bus daemon with nobody on it. The container's dbus-daemon binary is used (chrooted,
    # no namespaces), so the host needs no dbus package; we stop it by its pid.
    config = "/run/smbgw-empty-bus.conf"
    socket_path = "/run/smbgw-empty-bus.socket"
    container.write_file(
        config,
        f"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>custom</type>
  <listen>unix:path={socket_path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
""",
    )
    daemon = subprocess.Popen(
        [
            "chroot",
            str(container.root),
            "dbus-daemon",
            "--nofork",
            f"--config-file={config}",
            "--print-address=1",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert daemon.stdout is not None
        # printed once it listens
        assert daemon.stdout.readline().startswith(f"unix:path={socket_path}")
        address = f"unix:path={container.path(socket_path)}"
        started = time.monotonic()
        with pytest.raises(SystemdUnavailable, match="systemd does not answer"):
            SystemdManager.connect(address, timeout=5)
        assert time.monotonic() - started < 2
    finally:
        daemon.terminate()
        daemon.wait(10)

"""ServiceControl (what the native plugin uses to keep smbd up and reload it) on real systemd."""

from __future__ import annotations

from pathlib import Path

import pytest

from smbgw_agent.effects.runner import Runner
from smbgw_agent.effects.services import ServiceControl, ServiceError
from smbgw_agent.effects.systemd import SystemdManager
from tests.support.nspawn import SystemdContainer

pytestmark = pytest.mark.integration


def control_for(container: SystemdContainer) -> ServiceControl:
    return ServiceControl(Runner(), connect=lambda: SystemdManager.connect(container.bus_address, timeout=10))


def main_pid(container: SystemdContainer, unit: str) -> int:
    return int(container.run(["systemctl", "show", "-p", "MainPID", "--value", unit]).stdout.strip())


def test_ensure_active_starts_a_stopped_smbd_and_reload_keeps_it(systemd_container: SystemdContainer) -> None:
    container = systemd_container
    container.run(["systemctl", "stop", "smbd.service"])
    control = control_for(container)
    assert control.mode == "systemd"
    report = control.ensure_active("smbd.service")
    assert report.control == "systemd" and report.active is True, report
    assert container.run(["systemctl", "is-active", "smbd.service"], check=False).stdout.strip() == "active"
    pid = main_pid(container, "smbd.service")
    assert control.reload("smbd.service", ["false"]) == "systemd"
    assert main_pid(container, "smbd.service") == pid, "a reload must not restart smbd"
    # Already active: nothing is started or restarted.
    assert control.ensure_active("smbd.service").active is True
    assert main_pid(container, "smbd.service") == pid


def test_missing_unit_is_reported_not_raised(systemd_container: SystemdContainer) -> None:
    control = control_for(systemd_container)
    report = control.ensure_active("no-such-smbd.service")
    assert report.active is False
    assert "no-such-smbd.service" in report.detail
    with pytest.raises(ServiceError, match=r"no-such-smbd\.service"):
        control.reload("no-such-smbd.service", ["false"])


def test_without_systemd_falls_back_to_the_direct_command(tmp_path: Path) -> None:
    bus = f"unix:path={tmp_path}/no-bus-here"  # a real connection attempt that fails
    control = ServiceControl(Runner(), connect=lambda: SystemdManager.connect(bus, timeout=2))
    assert control.mode == "direct"
    assert control.reload("smbd.service", ["true"]) == "direct"
    with pytest.raises(ServiceError, match=r"reloading smbd\.service failed"):
        control.reload("smbd.service", ["false"])
    assert "no-bus-here" in control.ensure_active("smbd.service").detail

"""The VM mode under the reliability suite's fault classes: `qm`, `pvesh` and `cloud-init`
missing, failing, hanging, answering garbage or flooding. Every fault ends within the
tool's time limit as an error that says what happened: the watch keeps its last reading
and reports the error (a VM is never taken for stopped or running, nor its guest agent
for up, on a broken answer), a job step fails (and the share with it, retried), a node's
version or mappings are never guessed, and user-data is never taken for checked on a
broken cloud-init. `pdbedit` and `ha-manager` run through the same code as the LXC mode's
(plugins/proxmox: passdb.py, hamanager.py), tried in test_lxc_faults.py. The real VMs are
in tests/integration/test_mode_vm.py.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from smbgw_plugins.mode_vm import pvesh, qm, userdata
from smbgw_plugins.mode_vm.plugin import Observation, Observer
from smbgw_plugins.mode_vm.qmout import QmOutputError

from smbgw_agent.effects.runner import CommandError, Runner
from tests.support.faults import FAULT_KINDS, PLUGIN_TOOLS, ToolShed

LIMIT = 2.0
SAID = {
    "missing": "not found",
    "failing": "fault injected",
    "hanging": "timed out",
    "garbage": r"not its header|not 'status: STATE'|not JSON|no verdict|not MAJOR.MINOR",
    "flood": r"output|not its header|not 'status: STATE'|not JSON|no verdict|more than",
}


def test_every_tool_the_vm_mode_runs_is_in_a_fault_matrix() -> None:
    assert set(PLUGIN_TOOLS["mode_vm"]) == {"qm", "pvesh", "cloud-init"}


@pytest.fixture
def broken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ToolShed:
    shed = ToolShed(tmp_path / "faultbin", ())
    monkeypatch.setenv("PATH", shed.path)
    for name in ("QUICK_TIMEOUT", "START_TIMEOUT"):
        monkeypatch.setattr(qm, name, LIMIT)
    monkeypatch.setattr(qm, "EXEC_TIMEOUT", 1)
    monkeypatch.setattr(pvesh, "TIMEOUT", LIMIT)
    monkeypatch.setattr(userdata, "SCHEMA_TIMEOUT", LIMIT)
    return shed


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_a_broken_qm_keeps_the_last_reading_and_reports_it(broken: ToolShed, kind: str) -> None:
    if kind != "missing":
        broken.break_tool("qm", kind)
    observer = Observer()
    observer.value = Observation(at=1.0, status={9009: "running"}, agent={9009: True}, answers={9009: True})
    began = time.monotonic()
    woken = observer.refresh(qm.Qm(Runner()), [9009], {9009: "10.0.0.71/24"})
    assert time.monotonic() - began < LIMIT + 5
    reading = observer.value
    assert reading.status == {9009: "running"} and reading.agent == {9009: True}, "a broken answer is no news"
    assert reading.error and re.search(SAID[kind], reading.error), reading.error
    assert woken and len(reading.error) < 2000


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_a_job_step_through_a_broken_qm_fails_within_its_limit(broken: ToolShed, kind: str) -> None:
    if kind != "missing":
        broken.break_tool("qm", kind)
    tool = qm.Qm(Runner())
    began = time.monotonic()
    with pytest.raises((CommandError, QmOutputError)) as failed:
        tool.start(9009)
        tool.status(9009)  # exit 0 with garbage: only the parser can tell
    assert re.search(SAID[kind], str(failed.value)), failed.value
    with pytest.raises((CommandError, qm.GuestExecError)):
        tool.guest_exec(9009, ["smbcontrol", "smbd", "reload-config"], timeout=1)
    assert not tool.ping(9009, timeout=LIMIT), "a broken qm is no guest agent answering"
    with pytest.raises((CommandError, QmOutputError)):
        tool.leased_address(9009, "bc:24:11:42:c8:c7", timeout=LIMIT)  # a DHCP VM's address: none known
    assert time.monotonic() - began < 5 * LIMIT + 40


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_a_broken_pvesh_gives_no_version_and_no_mappings(broken: ToolShed, kind: str) -> None:
    if kind != "missing":
        broken.break_tool("pvesh", kind)
    tool = pvesh.Pvesh(Runner())
    began = time.monotonic()
    for read in (tool.version, tool.mappings):
        with pytest.raises((CommandError, pvesh.PveshError)) as failed:
            read()
        assert re.search(SAID[kind] + "|not a list|not an object", str(failed.value)), failed.value
    assert time.monotonic() - began < 2 * LIMIT + 5


@pytest.mark.parametrize("kind", [kind for kind in FAULT_KINDS if kind != "missing"])
def test_a_broken_cloud_init_never_passes_user_data(broken: ToolShed, kind: str) -> None:
    """(Missing is the node without cloud-init: said to be unchecked, test_vm_plugin.py.)"""
    broken.break_tool("cloud-init", kind)
    began = time.monotonic()
    with pytest.raises(userdata.UserDataError) as failed:
        userdata.check(Runner(), "#cloud-config\nhostname: x\n")
    assert time.monotonic() - began < LIMIT + 5
    assert re.search(SAID[kind] + "|refuses", str(failed.value)), failed.value
    assert len(str(failed.value)) < 1000

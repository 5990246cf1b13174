"""The LXC mode under the reliability suite's fault classes: `pct`, `pdbedit` and `ha-manager` missing,
failing, hanging, answering garbage or flooding. Every fault must end within the tool's
time limit as an error that says what happened: the watch keeps its last reading and
reports the error (a container is never taken for stopped or running on a broken
answer), a job step fails (and the share with it, retried), and a user is never copied
from a made-up passdb entry. The real containers are in tests/integration/test_mode_lxc.py.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from smbgw_plugins.mode_lxc import pct
from smbgw_plugins.mode_lxc.plugin import Observation, Observer
from smbgw_plugins.proxmox import hamanager
from smbgw_plugins.proxmox import passdb as users
from smbgw_plugins.proxmox.haresources import HaConfigError
from smbgw_plugins.proxmox.passdb import UserError, read_entries

from smbgw_agent.effects.runner import CommandError, Runner
from tests.support.faults import FAULT_KINDS, PLUGIN_TOOLS, ToolShed

LIMIT = 2.0
SAID = {
    "missing": "not found",
    "failing": "fault injected",
    "hanging": "timed out",
    "garbage": r"not its header|not 'status: STATE'|not in smbpasswd format|lines for|unknown state",
    "flood": r"output|not its header|not 'status: STATE'|lines for",
}


def test_every_tool_the_lxc_mode_runs_is_in_a_fault_matrix() -> None:
    # Its testparm calls (the container's smb.conf) are mode_native's case.
    assert set(PLUGIN_TOOLS["mode_lxc"]) == {"pct", "pdbedit", "ha-manager"}


@pytest.fixture
def broken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ToolShed:
    shed = ToolShed(tmp_path / "faultbin", ())  # neither is needed for real here
    monkeypatch.setenv("PATH", shed.path)
    monkeypatch.setattr(pct, "QUICK_TIMEOUT", LIMIT)
    monkeypatch.setattr(pct, "START_TIMEOUT", LIMIT)
    return shed


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_a_broken_pct_keeps_the_last_reading_and_reports_it(broken: ToolShed, kind: str) -> None:
    if kind != "missing":
        broken.break_tool("pct", kind)
    observer = Observer()
    observer.value = Observation(at=1.0, status={9000: "running"}, answers={9000: True})
    began = time.monotonic()
    woken = observer.refresh(pct.Pct(Runner()), {9000: "10.0.0.21/24"}, keep_running=[9000])
    assert time.monotonic() - began < LIMIT + 5
    reading = observer.value
    assert reading.status == {9000: "running"}, "a broken answer is no new state"
    assert reading.error and re.search(SAID[kind], reading.error), reading.error
    assert woken, "the first error is news"
    assert len(reading.error) < 2000, "a flood is not copied into status"


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_a_job_step_through_a_broken_pct_fails_within_its_limit(broken: ToolShed, kind: str) -> None:
    if kind != "missing":
        broken.break_tool("pct", kind)
    began = time.monotonic()
    with pytest.raises((CommandError, pct.PctOutputError)) as failed:
        tool = pct.Pct(Runner())
        tool.start(9000)
        tool.status(9000)  # exit 0 with garbage: only the parser can tell
    assert time.monotonic() - began < 2 * LIMIT + 5
    assert re.search(SAID[kind], str(failed.value)), failed.value


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_a_broken_pdbedit_copies_no_user(broken: ToolShed, tmp_path: Path, kind: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    if kind != "missing":
        broken.break_tool("pdbedit", kind)
    runner = Runner(default_timeout=LIMIT)
    real_run = runner.run

    def bounded(argv: list[str], **kwargs: object) -> object:
        kwargs["timeout"] = LIMIT
        return real_run(argv, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "run", bounded)
    began = time.monotonic()
    with pytest.raises(UserError) as failed:
        read_entries(runner, tmp_path / "smb.conf", ["alice"])
    assert time.monotonic() - began < LIMIT + 5
    assert re.search(SAID[kind], str(failed.value)), failed.value
    assert users.PASSDB_IMPORT not in str(failed.value)


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_a_broken_ha_manager_never_counts_as_registered(broken: ToolShed, tmp_path: Path, kind: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A registration is read back from the resource list: a tool that exits 0 having
    printed garbage has not registered anything, and the step fails."""
    if kind != "missing":
        broken.break_tool("ha-manager", kind)
    monkeypatch.setattr(hamanager, "TIMEOUT", LIMIT)
    began = time.monotonic()
    with pytest.raises((CommandError, HaConfigError)) as failed:
        hamanager.add(Runner(), "ct:9000", "finance", tmp_path / "resources.cfg")
    assert time.monotonic() - began < LIMIT + 5
    assert re.search(SAID[kind] + "|is not in /etc/pve/ha/resources.cfg", str(failed.value)), failed.value

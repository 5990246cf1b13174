"""Every tool every plugin runs, in every fault class: missing, failing, hanging, garbage,
flooding output. The agent must stay up, keep what is served served, say what is wrong,
never apply what a broken validator could not check, and converge once the tool works.

The matrix is `PLUGIN_TOOLS x FAULT_KINDS` (tests/support/faults.py): a plugin that runs
a new tool lists it there and gets the same treatment. What "saying what is wrong" looks
like depends on where a tool sits: in the apply path (testparm) the changed shares fail;
in the commit path (the reload command) the pass reports an error and retries; in a
background reading (smbstatus) the collector reports `smbgw_collector_success 0`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from devtools.sandbox import Sandbox, free_port
from tests.support.faults import FAULT_KINDS, PLUGIN_TOOLS, ToolShed
from tests.support.procs import RestartableAgent, scrape, wait_metric, wait_served, write_agent_toml

pytestmark = pytest.mark.integration

PASS_TIMEOUT = 10


def metrics(port: int) -> str:
    return scrape(port) or ""


def _fresh_failed(status: dict[str, Any]) -> bool:
    return status["shares"].get("fresh", {}).get("state") == "failed"


def _pass_reports(tool: str) -> Callable[[dict[str, Any]], bool]:
    """A reload that fails fails the node resource samba:host (retried with backoff),
    not the shares: their configuration is live on disk."""
    def check(status: dict[str, Any]) -> bool:
        last = status.get("pass") or {}
        samba = status.get("resources", {}).get("samba:host", {})
        return not last.get("ok") and samba.get("state") == "failed" and "reload" in (samba.get("error") or "")
    return check


# Where each tool sits, and so how its fault must show.
EXPECTED: dict[str, str] = {"testparm": "apply", "smbcontrol": "commit", "smbstatus": "reading"}


def cases() -> list[tuple[str, str, str]]:
    """The tools of the serving path; the quota plugin's have their own matrix
    (test_quota_faults: they need a file system with quotas under the share)."""
    return [(plugin, tool, kind) for plugin, tools in PLUGIN_TOOLS.items() for tool in tools for kind in FAULT_KINDS
            if tool in EXPECTED]


@pytest.mark.parametrize(("plugin", "tool", "kind"), cases(), ids=str)
def test_a_broken_tool_is_survived_reported_and_recovered_from(
    plugin: str, tool: str, kind: str, sandbox: Sandbox, restartable: RestartableAgent
) -> None:
    box = sandbox
    port = free_port()
    write_agent_toml(box, f'pass_timeout = "{PASS_TIMEOUT}s"', port)
    shed = ToolShed(box.root / "faultbin", PLUGIN_TOOLS[plugin])
    restartable.env = {"PATH": shed.path}
    restartable.start()
    box.share_dir("steady")
    (box.shares_dir / "steady.toml").write_text('path = "/srv/smb/steady"\n')
    wait_served(box, "steady")
    where = EXPECTED[tool]
    if where == "reading":
        wait_metric(port, f'smbgw_collector_success{{collector="{tool}"}} 1.0', 30)

    shed.break_tool(tool, kind)
    box.share_dir("fresh")
    (box.shares_dir / "fresh.toml").write_text('path = "/srv/smb/fresh"\n')
    if where == "apply":
        status = restartable.wait_status(_fresh_failed, timeout=PASS_TIMEOUT + 20)
        assert tool in status["shares"]["fresh"]["error"], status["shares"]["fresh"]
        assert not (box.paths.samba_dir / "share-fresh.conf").exists(), "unvalidated configuration went live"
    elif where == "commit":
        status = restartable.wait_status(_pass_reports(tool), timeout=PASS_TIMEOUT + 20)
        assert restartable.ctl("status").returncode == 1
    else:
        wait_metric(port, f'smbgw_collector_success{{collector="{tool}"}} 0.0', 50)
    # Whatever the fault: alive, answering, still serving what it served.
    assert restartable.running
    assert box.smbclient("steady", "ls").returncode == 0
    started = time.monotonic()
    assert "smbgw_reconcile_total" in metrics(port)
    assert time.monotonic() - started < 2, "a scrape waited on the broken tool"

    shed.restore(tool)
    wait_served(box, "fresh", timeout=60)
    restartable.wait_status(lambda s: (s.get("pass") or {}).get("ok") and s["shares"]["fresh"]["state"] == "served",
                            timeout=60)
    if where == "reading":
        wait_metric(port, f'smbgw_collector_success{{collector="{tool}"}} 1.0', 50)
    assert "internal error" not in restartable.log_text()

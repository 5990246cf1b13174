"""The ad plugin under the reliability suite's fault classes: `net`, `wbinfo` and `dig`
missing, failing, hanging, answering garbage or flooding, and /etc full when krb5.conf is
written. Every fault must end, within the tool's time limit, as a failed check with a
typed reason that says what happened, never as a made-up "joined" or "healthy"; a join
through a broken `net` must fail as an ordinary error (retried with backoff), never as
"wrong password" (which would stop the retries) and never as a success. The real domain
is in tests/integration/test_ad_member.py.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from smbgw_plugins.ad import health, tool
from smbgw_plugins.ad.plugin import KRB5, AdPlugin
from smbgw_plugins.ad.table import AdSettings, parse_agent_table

from smbgw_agent.effects.runner import Runner
from smbgw_agent.effects.services import ServiceReport
from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.paths import Paths
from smbgw_agent.platform.context import PassContext
from smbgw_agent.platform.jobs import JobRunner
from tests.support.faults import FAULT_KINDS, PLUGIN_TOOLS, ToolShed, fill, small_tmpfs

LIMIT = 2.0
SAID = {
    "missing": "not found",
    "failing": "fault injected",
    "hanging": "timed out",
    "garbage": r"not a record|not JSON|expected one|without 'Join is OK'|unexpected|exit 0 but",
    "flood": r"output|not a record|expected one",
}
# Which check reads which tool, and the reason its failure must carry.
CHECK_OF = {"dig": ("dns", "dns"), "net": ("dc", "dc_unreachable"), "wbinfo": ("winbind", "winbind_down")}
TABLE = {"realm": "SMBGW.TEST", "workgroup": "SMBGW", "join_user": "svc-join", "password_file": "/etc/smbgw/ad-join",
         "idmap": {"backend": "rid", "range": [100000, 999999]}}


def test_every_tool_the_ad_plugin_runs_is_in_a_fault_matrix() -> None:
    # Its testparm calls (waiting for the globals before a join) are mode_native's case.
    assert set(PLUGIN_TOOLS["ad"]) == {"net", "wbinfo", "dig"}


@pytest.fixture
def broken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ToolShed:
    shed = ToolShed(tmp_path / "faultbin", ())  # no DC here: the other tools are simply missing
    monkeypatch.setenv("PATH", shed.path)
    for name in ("NET_TIMEOUT", "PING_TIMEOUT", "DIG_TIMEOUT", "JOIN_TIMEOUT"):
        monkeypatch.setattr(tool, name, LIMIT)
    return shed


@pytest.mark.parametrize("kind", FAULT_KINDS)
@pytest.mark.parametrize("name", ["net", "wbinfo", "dig"])
def test_a_broken_tool_is_a_failed_check_with_its_reason(broken: ToolShed, tmp_path: Path, name: str,
                                                         kind: str) -> None:
    broken.break_tool(name, kind)
    began = time.monotonic()
    readings = tool.read_membership(Runner(), tmp_path / "smb.conf", "SMBGW.TEST", winbind_active=True)
    assert time.monotonic() - began < 4 * LIMIT + 5, "four commands at most, each within its time limit"
    membership = health.assess(readings, "SMBGW.TEST", ever_joined=True)
    check, reason = CHECK_OF[name]
    verdict = membership.verdict(check)
    assert verdict.state == "failed" and verdict.reason == reason, verdict
    assert re.search(SAID[kind], verdict.detail), verdict.detail
    assert not membership.healthy and membership.joined is not True, "a broken tool must not look like a member"
    assert len(verdict.detail) < 2000, "a flood is not copied into status"


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_a_join_through_a_broken_net_fails_as_an_ordinary_error(broken: ToolShed, tmp_path: Path,
                                                                 kind: str) -> None:
    broken.break_tool("net", kind)
    settings = AdSettings.from_parsed(parse_agent_table(TABLE))
    began = time.monotonic()
    with pytest.raises(tool.JoinError) as failed:
        tool.join(Runner(), tmp_path / "smb.conf", settings, "Passw0rd!")
    assert time.monotonic() - began < LIMIT + 5
    assert not failed.value.credentials, "a broken tool is not a wrong password: retries must go on"
    assert re.search(SAID[kind], str(failed.value)), failed.value
    assert "Passw0rd!" not in str(failed.value)


class Services:
    def is_active(self, unit: str) -> bool:
        return False

    def ensure_enabled(self, unit: str) -> bool:
        return True

    def ensure_active(self, unit: str) -> ServiceReport:
        return ServiceReport(unit, "systemd", True, "running")


def test_a_full_etc_fails_the_resource_and_keeps_krb5_conf_as_it_was(tmp_path: Path) -> None:
    paths = Paths.under(tmp_path)
    config = AgentConfig(node="fs1", plugin_sections={"ad": parse_agent_table(TABLE)})
    ctx: Any = PassContext(paths=paths, config=config, runner=Runner(), services=Services(),  # type: ignore[arg-type]
                           desired={}, applied={}, jobs=JobRunner())
    subject = AdPlugin()
    subject.smbgw_startup(ctx)
    krb5 = paths.host(KRB5)
    krb5.parent.mkdir(parents=True, exist_ok=True)
    with small_tmpfs(krb5.parent, "256k"):
        krb5.write_text("# the administrator's own\n[libdefaults]\n\tdefault_realm = OTHER.TEST\n")
        before = krb5.read_bytes()
        fill(krb5.parent)
        (resource,) = subject.smbgw_node_resources(ctx)
        changes = subject.smbgw_plan_resource(ctx, "ad", resource, None)
        assert [c.detail for c in changes] == [f"write {KRB5}"]
        subject.smbgw_apply_resource(ctx, resource, changes)
        failed = subject.smbgw_commit(ctx, ["ad"])
        assert "No space left" in failed.get("ad", ""), failed
        assert krb5.read_bytes() == before, "the administrator's krb5.conf is never lost, never half written"

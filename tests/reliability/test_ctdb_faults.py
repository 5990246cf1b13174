"""The ctdb plugin under the reliability suite's fault classes: the `ctdb` tool missing,
failing, hanging, answering garbage or flooding, and /etc/ctdb full. The plugin reads
the cluster in the background and runs `ctdb` for a drain; every fault must end as an
error that names the tool and says what happened, within the tool's time limit, and
never as a made-up reading of the cluster. The real cluster is in
tests/integration/test_ctdb_cluster.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from smbgw_plugins.ha import drain
from smbgw_plugins.ha.ctdb import tool
from smbgw_plugins.ha.ctdb.plugin import NODES, ClusterWatch, CtdbPlugin

from smbgw_agent.effects.runner import Runner
from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.paths import Paths
from smbgw_agent.platform.commands import CommandRefused
from smbgw_agent.platform.context import PassContext
from tests.support.faults import FAULT_KINDS, PLUGIN_TOOLS, ToolShed, fill, small_tmpfs
from tests.unit.test_ctdb_plugin import context, share

SAID = {
    "missing": "not found",
    "failing": "fault injected: ctdb failed",
    "hanging": "timed out",
    "garbage": "unexpected",
    "flood": "output",
}


def test_every_tool_the_ctdb_plugin_runs_is_in_a_fault_matrix() -> None:
    # Its testparm calls are mode_native's too (test_tool_faults.py breaks testparm under
    # the whole agent); ctdb's own faults are driven here, at the plugin's boundary.
    assert set(PLUGIN_TOOLS["ctdb"]) == {"ctdb"}


@pytest.fixture
def broken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ToolShed:
    shed = ToolShed(tmp_path / "faultbin", ())  # the real ctdb need not be installed here
    monkeypatch.setenv("PATH", shed.path)
    monkeypatch.setattr(tool, "TIMEOUT", 2.0)
    return shed


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_every_fault_of_ctdb_is_a_reading_error_that_says_what_happened(broken: ToolShed, kind: str) -> None:
    broken.break_tool("ctdb", kind)
    watch = ClusterWatch()
    began = time.monotonic()
    assert watch.refresh(Runner()) is True
    assert time.monotonic() - began < 2.0 * 5 + 5, "five commands at most, each within its time limit"
    assert not watch.ok and watch.value is None, "a broken ctdb must not give a reading"
    assert "ctdb" in str(watch.error) and SAID[kind] in str(watch.error), watch.error
    assert watch.refresh(Runner()) is False, "the same fault again calls for no pass"
    assert tool.running(Runner()) is False  # the start job keeps waiting, it does not start smbd


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_a_drain_with_a_broken_ctdb_is_refused_before_it_changes_anything(
        broken: ToolShed, kind: str, tmp_path: Path) -> None:
    broken.break_tool("ctdb", kind)
    ctx = PassContext(paths=Paths.under(tmp_path), config=AgentConfig(node="node1"), runner=Runner(),
                      services=None, desired={}, applied={})  # type: ignore[arg-type]
    with pytest.raises(CommandRefused, match=f"cannot read the CTDB cluster: .*{SAID[kind]}"):
        drain.cluster_drain(ctx, 5.0, None, False)
    assert broken.count("ctdb") >= 1 or kind == "missing"


def test_a_full_etc_ctdb_fails_the_resource_and_keeps_the_files_it_had(tmp_path: Path) -> None:
    subject = CtdbPlugin()
    ctx = context(tmp_path, [share("a", "10.211.33.100/24")])
    (resource,) = subject.smbgw_node_resources(ctx)
    subject.smbgw_apply_resource(ctx, resource, subject.smbgw_plan_resource(ctx, "ctdb", resource, None))
    assert subject.smbgw_commit(ctx, ["ctdb"]) == {}
    nodes = tmp_path / NODES.lstrip("/")
    before = {path.name: path.read_bytes() for path in nodes.parent.iterdir() if path.is_file()}
    saved = tmp_path / "saved-ctdb"
    saved.mkdir()
    for name, data in before.items():
        (saved / name).write_bytes(data)
    with small_tmpfs(nodes.parent, "256k"):
        for name, data in before.items():  # the same files on a file system that is then full
            (nodes.parent / name).write_bytes(data)
            (nodes.parent / name).chmod((saved / name).stat().st_mode & 0o777)
        fill(nodes.parent)
        ctx = context(tmp_path, [share("a", "10.211.33.100/24"), share("b", "10.211.33.101/24")])
        (resource,) = subject.smbgw_node_resources(ctx)
        subject.smbgw_apply_resource(ctx, resource, subject.smbgw_plan_resource(ctx, "ctdb", resource, resource))
        failed = subject.smbgw_commit(ctx, ["ctdb"])
        assert "No space left" in failed.get("ctdb", ""), failed
        after = {name: (nodes.parent / name).read_bytes() for name in before}
        assert after == before, "a full disk must leave every file as it was, never half written"

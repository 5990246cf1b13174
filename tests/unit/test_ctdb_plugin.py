"""The ctdb plugin without a cluster: what it renders, plans, makes live and reports, with
a stand-in for systemd and for the `ctdb` tool (the real cluster is in
tests/integration/test_ctdb_cluster.py)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from smbgw_plugins.ha.ctdb import plugin as ctdb_plugin
from smbgw_plugins.ha.ctdb import tool
from smbgw_plugins.ha.ctdb.plugin import CONF, HEALTH_SCRIPT, NODES, PUBLIC, TUNABLES, CtdbPlugin
from smbgw_plugins.ha.ctdb.status import NodeStatus
from smbgw_plugins.ha.ctdb.table import parse_agent_table

from smbgw_agent.effects.runner import Completed, Runner
from smbgw_agent.effects.services import ServiceError, ServiceReport
from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.paths import Paths
from smbgw_agent.model.shares import ShareSpec
from smbgw_agent.platform.context import CollectContext, PassContext
from smbgw_agent.platform.jobs import JobRunner

NODES3 = ["10.211.33.11", "10.211.33.12", "10.211.33.13"]


def config(**ctdb: Any) -> AgentConfig:
    table = parse_agent_table({"nodes": NODES3, "cluster_lock": "/srv/cluster/.ctdb.lock",
                               "public_interface": "eth0", **ctdb})
    return AgentConfig(node="node1", plugin_sections={"ctdb": table})


def share(name: str, vip: str | None = None, interface: str | None = None, node: str | None = None) -> ShareSpec:
    sections = {"ha": {"vip": vip, "interface": interface, "proxmox_ha": False}} if vip else {}
    return ShareSpec(name=name, file=f"{name}.toml", path=f"/srv/smb/{name}", node=node, sections=sections)


class Systemd:
    """Stands in for the agent's ServiceControl: which units are active, what was asked."""

    def __init__(self, active: dict[str, bool]) -> None:
        self.active = active
        self.asked: list[str] = []

    def is_active(self, unit: str) -> bool | None:
        return self.active.get(unit, False)

    def ensure_enabled(self, unit: str) -> bool:
        self.asked.append(f"enable {unit}")
        return True

    def restart(self, unit: str) -> None:
        self.asked.append(f"restart {unit}")

    def ensure_active(self, unit: str) -> ServiceReport:
        self.asked.append(f"start {unit}")
        self.active[unit] = True
        return ServiceReport(unit, "systemd", True, "running")


class Ctdb(Runner):
    """Records every ctdb command; answers none (the plugin must not need an answer)."""

    def __init__(self) -> None:
        super().__init__()
        self.ran: list[list[str]] = []

    def run(self, argv: Sequence[str], **_kwargs: Any) -> Completed:  # type: ignore[override]
        if argv[0] == "testparm":  # the live smb.conf already says clustering = yes
            return Completed(tuple(argv), 0, "Yes\n", "", 0.0)
        self.ran.append(list(argv))
        if list(argv) == ["ctdb", "runstate"]:
            return Completed(tuple(argv), 0, "RUNNING\n", "", 0.0)
        return Completed(tuple(argv), 0, "", "", 0.0)


def context(tmp_path: Path, shares: Sequence[ShareSpec], active: bool = False, **ctdb: Any) -> PassContext:
    smb_conf = Paths.under(tmp_path).smb_conf
    if not smb_conf.exists():
        smb_conf.parent.mkdir(parents=True, exist_ok=True)
        smb_conf.write_text("# the administrator's\n[global]\n   workgroup = CORP\n\n[data]\n   path = /srv/data\n")
    return PassContext(paths=Paths.under(tmp_path), config=config(**ctdb), runner=Ctdb(),
                       services=Systemd({"ctdb.service": active}),  # type: ignore[arg-type]
                       desired={s.key: s for s in shares}, applied={}, jobs=JobRunner())


def test_a_share_placed_on_one_node_or_without_an_interface_is_refused_in_a_cluster() -> None:
    subject = CtdbPlugin()
    assert subject.smbgw_validate_share(share("a", node="node2"), config())[0].startswith("node = 'node2'")
    assert subject.smbgw_validate_share(share("a", "10.211.33.100/24"), config()) == []
    without = AgentConfig(node="n", plugin_sections={"ctdb": parse_agent_table({"nodes": NODES3,
                                                                                "cluster_lock": "/srv/l"})})
    assert "needs an interface" in subject.smbgw_validate_share(share("a", "10.211.33.100/24"), without)[0]
    assert subject.smbgw_validate_share(share("a", node="node2"), AgentConfig(node="n")) == []


def test_clustering_and_smbd_belong_to_ctdb_only_when_configured(tmp_path: Path) -> None:
    subject = CtdbPlugin()
    ctx = context(tmp_path, [])
    assert [(p.name, p.value) for p in subject.smbgw_global_parameters(ctx, "host")] == [("clustering", "yes")]
    assert subject.smbgw_global_parameters(ctx, "lxc:100") == []
    assert subject.smbgw_smbd_control(ctx.config) is not None
    assert subject.smbgw_smbd_control(AgentConfig(node="n")) is None
    assert subject.smbgw_node_resources(PassContext(paths=ctx.paths, config=AgentConfig(node="n"),
                                                    runner=ctx.runner, services=ctx.services,
                                                    desired={}, applied={})) == []


def test_public_addresses_come_from_every_share(tmp_path: Path) -> None:
    ctx = context(tmp_path, [share("a", "10.211.33.100/24"), share("b", "10.211.33.100/24"),
                             share("c", "10.211.33.101/24", "eth1"), share("d")])
    files = CtdbPlugin.wanted_files(ctx)
    assert files[PUBLIC].splitlines()[-2:] == ["10.211.33.100/24 eth0", "10.211.33.101/24 eth1"]
    assert [line for line in files[NODES].splitlines() if not line.startswith("#")] == NODES3
    assert "KeepaliveInterval=1" in files[TUNABLES] and "KeepaliveLimit=3" in files[TUNABLES]
    assert "/srv/cluster/.ctdb.lock" in files[CONF]


def test_first_pass_writes_everything_enables_samba_monitoring_and_starts_ctdb(tmp_path: Path) -> None:
    subject = CtdbPlugin()
    ctx = context(tmp_path, [share("a", "10.211.33.100/24")])
    (resource,) = subject.smbgw_node_resources(ctx)
    changes = subject.smbgw_plan_resource(ctx, "ctdb", resource, None)
    assert {c.detail for c in changes} >= {f"write {CONF}", f"write {NODES}", f"write {PUBLIC}",
                                          "enable and start ctdb.service"}
    assert f"write {HEALTH_SCRIPT}" in {c.detail for c in changes}
    subject.smbgw_apply_resource(ctx, resource, changes)
    assert subject.smbgw_commit(ctx, ["ctdb"]) == {}
    assert ctx.jobs is not None
    started = ctx.jobs.wait("ctdb:start", 10)  # started once smb.conf says clustering = yes, off the pass
    assert started is not None and started.state == "succeeded", started
    assert (tmp_path / "etc/ctdb/public_addresses").read_text().endswith("10.211.33.100/24 eth0\n")
    script = tmp_path / HEALTH_SCRIPT.lstrip("/")
    assert script.stat().st_mode & 0o777 == 0o755 and "smbcontrol smbd ping" in script.read_text()
    assert ctx.services.asked == ["enable ctdb.service", "start ctdb.service",  # type: ignore[attr-defined]
                                  "restart smbd.service"]
    assert ctx.runner.ran == [["ctdb", "runstate"]]  # type: ignore[attr-defined]  # nothing to reload
    assert subject.smbgw_plan_resource(ctx, "ctdb", resource, resource) == [], "a second pass plans nothing"


def test_a_running_cluster_reloads_what_changed_and_never_restarts_ctdb(tmp_path: Path) -> None:
    subject = CtdbPlugin()
    ctx = context(tmp_path, [share("a", "10.211.33.100/24")])
    (resource,) = subject.smbgw_node_resources(ctx)
    subject.smbgw_apply_resource(ctx, resource, [])
    subject.smbgw_commit(ctx, ["ctdb"])
    changed = context(tmp_path, [share("a", "10.211.33.100/24"), share("b", "10.211.33.102/24")], active=True,
                      nodes=[*NODES3, "10.211.33.14"], keepalive_limit=5, log_level="INFO")
    (resource,) = subject.smbgw_node_resources(changed)
    subject.smbgw_apply_resource(changed, resource, subject.smbgw_plan_resource(changed, "ctdb", resource, None))
    assert subject.smbgw_commit(changed, ["ctdb"]) == {}
    assert changed.runner.ran == [  # type: ignore[attr-defined]
        ["ctdb", "reloadnodes"], ["ctdb", "reloadips"],
        ["ctdb", "setvar", "KeepaliveInterval", "1"], ["ctdb", "setvar", "KeepaliveLimit", "5"]]
    assert "restart ctdb" not in changed.services.asked  # type: ignore[attr-defined]

    def ctdbd_started(at: float) -> None:
        class Reading:
            ok, error = True, None
            value = tool.Cluster(0, (NodeStatus(0, NODES3[0], this_node=True),), {}, False, started_at=at)
        subject._reading = Reading()  # type: ignore[assignment]

    ctdbd_started(0.0)  # long before ctdb.conf changed: the change is not in force
    assert any(not h.ok and "takes effect when ctdb restarts" in h.detail for h in subject.smbgw_health(changed))
    ctdbd_started(time.time() + 1)  # restarted since, by whoever
    assert not any("takes effect" in h.detail for h in subject.smbgw_health(changed))


def test_when_a_process_started(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42/stat").write_text("42 (ctdbd (main)) S 1 42 42 0 -1 4194560 " + "0 " * 12 + "12345 0\n")
    (tmp_path / "stat").write_text("cpu  1 2 3\nbtime 1796000000\n")
    assert tool.process_start(42, tmp_path) == 1796000000 + 12345 / os.sysconf("SC_CLK_TCK")
    assert tool.process_start(43, tmp_path) is None
    (tmp_path / "42/stat").write_text("garbage")
    assert tool.process_start(42, tmp_path) is None


def test_a_nodes_change_that_moves_a_live_node_is_refused(tmp_path: Path) -> None:
    subject = CtdbPlugin()
    ctx = context(tmp_path, [])
    (resource,) = subject.smbgw_node_resources(ctx)
    subject.smbgw_apply_resource(ctx, resource, [])
    subject.smbgw_commit(ctx, ["ctdb"])
    reordered = context(tmp_path, [], nodes=[NODES3[1], NODES3[0], NODES3[2]])
    (resource,) = subject.smbgw_node_resources(reordered)
    with pytest.raises(ValueError, match="/etc/ctdb/nodes"):
        subject.smbgw_plan_resource(reordered, "ctdb", resource, None)


def test_metrics_from_a_cluster_reading(tmp_path: Path) -> None:
    subject = CtdbPlugin()
    ctx = context(tmp_path, [share("a", "10.211.33.100/24"), share("b", "10.211.33.101/24")])
    subject.smbgw_observe(ctx)

    class Reading:
        ok, error = True, None
        value = tool.Cluster(1, (NodeStatus(0, NODES3[0]), NodeStatus(1, NODES3[1], disabled=True, this_node=True),
                                 NodeStatus(2, NODES3[2], unhealthy=True)),
                             {"10.211.33.100": 0, "10.211.33.101": -1}, recovery=True)

    subject._reading = Reading()  # type: ignore[assignment]
    families = {f.name: f for f in subject.smbgw_collect(CollectContext(ctx.paths, ctx.config, ctx.runner, {}))}
    samples = {(f, tuple(sorted(s.labels.items()))): s.value for f, fam in families.items() for s in fam.samples}
    assert samples[("smbgw_ctdb_node_healthy", (("pnn", "0"),))] == 1.0
    assert samples[("smbgw_ctdb_node_healthy", (("pnn", "2"),))] == 0.0
    assert samples[("smbgw_ctdb_node_state", (("pnn", "2"), ("state", "unhealthy")))] == 1.0
    assert samples[("smbgw_ctdb_recovery_mode", ())] == 1.0
    assert samples[("smbgw_vip_holder", (("pnn", "-1"), ("vip", "10.211.33.101")))] == 1.0
    assert samples[("smbgw_vip_present", (("interface", "eth0"), ("share", "a"), ("vip", "10.211.33.100")))] == 0.0
    assert samples[("smbgw_node_drained", ())] == 1.0
    findings = {h.detail for h in subject.smbgw_health(ctx) if not h.ok}
    assert "public address 10.211.33.101 is held by no node" in findings


def test_clustering_goes_into_smb_confs_own_global_section(tmp_path: Path) -> None:
    subject = CtdbPlugin()
    ctx = context(tmp_path, [])
    (resource,) = subject.smbgw_node_resources(ctx)
    changes = subject.smbgw_plan_resource(ctx, "ctdb", resource, None)
    assert f"add clustering = yes to [global] of {ctx.paths.smb_conf}" in {c.detail for c in changes}
    subject.smbgw_apply_resource(ctx, resource, changes)
    subject.smbgw_commit(ctx, ["ctdb"])
    lines = ctx.paths.smb_conf.read_text().splitlines()
    assert lines[1] == "[global]" and lines[3].strip() == "clustering = yes" and lines[4].strip() == "workgroup = CORP"
    assert ctdb_plugin.clustering_in_global(ctx.paths.smb_conf.read_text()) is True


@pytest.mark.parametrize("text, clustered", [
    ("[global]\nclustering = yes\n", True), ("[GLOBAL]\n  Clustering=Yes\n", True),
    ("[global]\n;clustering = yes\n", None), ("[global]\nclustering = no\n", False),
    ("[global]\nclustering = yes\nclustering = no\n", False), ("[data]\nclustering = yes\n", None), ("", None),
    ("[global]\ninclude = /x\n[data]\n[global]\nclustering = true\n", True),
])
def test_clustering_is_read_from_the_global_section_only(text: str, clustered: bool | None) -> None:
    assert ctdb_plugin.clustering_in_global(text) is clustered
    if clustered is None:
        assert ctdb_plugin.clustering_in_global(ctdb_plugin.with_clustering(text)) is True


def test_an_administrator_who_turned_clustering_off_is_told_not_overruled(tmp_path: Path) -> None:
    subject = CtdbPlugin()
    ctx = context(tmp_path, [])
    ctx.paths.smb_conf.write_text("[global]\n   clustering = no\n")
    (resource,) = subject.smbgw_node_resources(ctx)
    with pytest.raises(ValueError, match="says clustering = no"):
        subject.smbgw_plan_resource(ctx, "ctdb", resource, None)


def test_the_cluster_watch_calls_for_a_pass_only_when_the_cluster_changed() -> None:
    answers = {"pnn": "0\n", "-X status": "|Node|IP|Disconnected|Unknown|Banned|Disabled|Unhealthy|Stopped|Inactive|"
               "PartiallyOnline|ThisNode|\n|0|10.211.33.11|0|0|0|0|0|0|0|0|Y|\n",
               "-X ip": "|Public IP|Node|\n|10.211.33.100|0|\n", "status": "Recovery mode:NORMAL (0)\n",
               "getpid": "4242\n", "leader": "0\n", "-X getcapabilities": "|LEADER|LMASTER|\n|1|1|\n"}

    class Answering(Runner):
        def run(self, argv: Sequence[str], **_kwargs: Any) -> Completed:  # type: ignore[override]
            said = answers[" ".join(argv[1:])]
            return Completed(tuple(argv), 0 if said != "fail" else 1, said, "", 0.0)

    watch = ctdb_plugin.ClusterWatch()
    assert watch.refresh(Answering()) is True and watch.ok
    assert watch.refresh(Answering()) is False, "the same cluster again: no pass"
    answers["leader"] = "UNKNOWN\n"  # an election: the view shows it
    assert watch.refresh(Answering()) is True
    answers["-X getcapabilities"] = "fail"  # not known: the rest of the reading still counts
    assert watch.refresh(Answering()) is True and watch.ok
    answers["-X ip"] = "|Public IP|Node|\n|10.211.33.100|-1|\n"
    assert watch.refresh(Answering()) is True
    answers["pnn"] = "garbage\n"
    assert watch.refresh(Answering()) is True and not watch.ok and "unexpected" in str(watch.error)
    assert watch.refresh(Answering()) is False


def test_a_failed_start_is_reported_once_then_tried_again(tmp_path: Path) -> None:
    subject = CtdbPlugin()
    ctx = context(tmp_path, [])

    class Refusing(Systemd):
        def ensure_active(self, unit: str) -> ServiceReport:
            self.asked.append(f"start {unit}")
            return ServiceReport(unit, "systemd", False, "failed (Result: exit-code)")

    ctx.services = Refusing({"ctdb.service": False})  # type: ignore[assignment]
    (resource,) = subject.smbgw_node_resources(ctx)
    subject.smbgw_apply_resource(ctx, resource, subject.smbgw_plan_resource(ctx, "ctdb", resource, None))
    subject.smbgw_commit(ctx, ["ctdb"])
    assert ctx.jobs is not None
    record = ctx.jobs.wait("ctdb:start", 10)
    assert record is not None and record.state == "failed" and "does not start" in str(record.error)
    with pytest.raises(ServiceError, match=r"starting ctdb\.service failed: .*does not start"):
        subject.smbgw_plan_resource(ctx, "ctdb", resource, resource)
    again = subject.smbgw_plan_resource(ctx, "ctdb", resource, resource)  # after the backoff: once more
    assert [c.detail for c in again] == ["enable and start ctdb.service"]

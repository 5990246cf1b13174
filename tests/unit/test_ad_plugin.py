"""The ad plugin's own decisions, without a domain: an idmap range that holds a local
account's uid or a local group's gid fails closed (the node's globals stay standalone, so
no domain user can log on and be mapped onto a local account's files; the ad resource
fails with the range and the ids to move past), and a join job of an earlier membership
is never taken for this one's."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from smbgw_plugins.ad.plugin import JOIN_JOB, JOIN_SUBMITTED, LAST_JOIN, PLUGIN, AdPlugin
from smbgw_plugins.ad.table import parse_agent_table

from smbgw_agent.effects.runner import Runner
from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.paths import Paths
from smbgw_agent.platform.context import PassContext
from smbgw_agent.platform.jobs import Job, JobRunner
from smbgw_agent.platform.parameters import HOST

TABLE = {"realm": "SMBGW.TEST", "workgroup": "SMBGW", "join_user": "svc-join", "password_file": "/etc/smbgw/ad-join",
         "idmap": {"backend": "rid", "range": [100000, 999999]}, "idmap_default_range": [70000, 79999]}


class Services:
    def is_active(self, unit: str) -> bool:
        return False


def context(tmp_path: Path, passwd: str) -> Any:
    paths = Paths.under(tmp_path)
    etc = paths.host("/etc")
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "passwd").write_text(passwd)
    (etc / "group").write_text("root:x:0:\n")
    config = AgentConfig(node="fs1", plugin_sections={"ad": parse_agent_table(TABLE)})
    return PassContext(paths=paths, config=config, runner=Runner(), services=Services(),  # type: ignore[arg-type]
                       desired={}, applied={}, jobs=JobRunner())


def test_clean_ranges_give_the_member_globals(tmp_path: Path) -> None:
    ctx = context(tmp_path, "root:x:0:0::/root:/bin/sh\nbob:x:1001:1001::/home/bob:/bin/sh\n")
    plugin = AdPlugin()
    parameters = dict((p.name, p.value) for p in plugin.smbgw_global_parameters(ctx, HOST))
    assert parameters["security"] == "ADS"
    (resource,) = plugin.smbgw_node_resources(ctx)
    plugin.smbgw_plan_resource(ctx, "ad", resource, None)  # no error


def test_a_local_uid_inside_the_domain_range_keeps_the_node_standalone(tmp_path: Path) -> None:
    ctx = context(tmp_path, "root:x:0:0::/root:/bin/sh\nlegacy:x:100500:100::/home/legacy:/bin/sh\n")
    plugin = AdPlugin()
    assert list(plugin.smbgw_global_parameters(ctx, HOST)) == [], "no ADS globals: fail closed"
    (resource,) = plugin.smbgw_node_resources(ctx)
    with pytest.raises(ValueError, match=r"\[ad\] idmap.range: .*100500.*standalone"):
        plugin.smbgw_plan_resource(ctx, "ad", resource, None)


def test_a_join_job_of_an_earlier_membership_is_not_recorded_as_this_ones(tmp_path: Path) -> None:
    """[ad] removed and added again: the job runner still holds the last join's record.
    Only the job this membership submitted (its stamp kept in the plugin state) counts."""
    ctx = context(tmp_path, "root:x:0:0::/root:/bin/sh\n")
    ctx.jobs.submit(Job(JOIN_JOB, lambda _progress: {"text": "Joined 'FS1'"}, 10.0, "ad", PLUGIN))
    record = ctx.jobs.wait(JOIN_JOB, 10.0)
    assert record is not None and record.state == "succeeded"
    plugin = AdPlugin()
    plugin._absorb_join(ctx)
    assert ctx.plugin_state(PLUGIN).get(LAST_JOIN) is None, "an old job is not this membership's join"
    ctx.plugin_state(PLUGIN).set(JOIN_SUBMITTED, record.submitted)
    plugin._absorb_join(ctx)
    assert ctx.plugin_state(PLUGIN).get(LAST_JOIN)["ok"] is True, "the job it submitted is recorded"


def test_a_new_membership_watch_checks_at_once_after_a_reload(tmp_path: Path) -> None:
    """The job runner keeps the last check's time across reloads: with [ad] added back
    (or the agent reloaded), the first check must not wait out the old interval."""
    ctx = context(tmp_path, "root:x:0:0::/root:/bin/sh\n")
    plugin = AdPlugin()
    plugin.smbgw_startup(ctx)
    (schedule,) = plugin.smbgw_schedules(ctx)
    before_the_watch = time.time() - 5.0
    assert schedule.next_run(before_the_watch) == 0.0, "checked under the old watch: check now"
    now = time.time() + 1.0
    assert schedule.next_run(now) == now + 60.0, "checked by this watch: the next at the interval"
    assert schedule.next_run(None) == 0.0


def test_a_guest_gets_the_domain_ranges_to_pass_through(tmp_path: Path) -> None:
    from smbgw_agent.model.idranges import IdRange

    ctx = context(tmp_path, "root:x:0:0::/root:/bin/sh\n")
    plugin = AdPlugin()
    assert list(plugin.smbgw_guest_id_ranges(ctx, "lxc:9000")) == [IdRange(100000, 999999), IdRange(70000, 79999)]
    assert list(plugin.smbgw_guest_id_ranges(ctx, HOST)) == [], "the host maps nothing"
    ctx.config = AgentConfig(node="fs1")
    assert list(plugin.smbgw_guest_id_ranges(ctx, "lxc:9000")) == [], "not a domain member"

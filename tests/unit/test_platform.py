"""The plugin platform: ordering, conflicts at start, parameters, plugin state, jobs, the field kit."""

from __future__ import annotations

import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from smbgw_agent.assembly import load_plugins_and_config
from smbgw_agent.effects.runner import CommandError, Runner
from smbgw_agent.model import fields
from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.errors import ConfigError
from smbgw_agent.model.fields import FieldProblems, Table
from smbgw_agent.model.paths import Paths
from smbgw_agent.platform import order
from smbgw_agent.platform.changes import Change, NodeResource
from smbgw_agent.platform.hookspecs import hookimpl
from smbgw_agent.platform.jobs import FAILED, SUCCEEDED, TIMED_OUT, Job, JobRunner, Schedule
from smbgw_agent.platform.parameters import Parameter, ParameterConflict, merge_parameters
from smbgw_agent.platform.pluginhost import PluginConflictError, PluginHost
from smbgw_agent.reconcile.scanner import ShareScanner
from smbgw_agent.reconcile.state import StateStore

NATIVE_TARGET = "smbgw_plugins.mode_native:NativeModePlugin"


class Ranked:
    """Records when its hooks run, for checking the calling order."""

    def __init__(self, rank: int | None, log: list[str], name: str) -> None:
        self.rank, self.log, self.name = rank, log, name

    @hookimpl
    def smbgw_health(self, ctx: Any) -> Sequence[Any]:
        self.log.append(self.name)
        return []


def ranked(rank: int | None, log: list[str], name: str) -> object:
    plugin = Ranked(rank, log, name)
    if rank is not None:
        plugin.smbgw_order = hookimpl(lambda: rank)  # type: ignore[attr-defined]
    return plugin


# ---- ordering --------------------------------------------------------------------------------


def test_plugins_run_in_declared_order_and_pluggy_agrees() -> None:
    log: list[str] = []
    host = PluginHost({
        "vip": ranked(order.ADDRESS, log, "vip"), "ctdb": ranked(order.CLUSTER, log, "ctdb"),
        "ad": ranked(order.DIRECTORY, log, "ad"), "zzz": ranked(None, log, "zzz"),
        "lxc": ranked(order.MODE, log, "lxc"), "aaa": ranked(order.MODE, log, "aaa"),
    })
    assert host.names == ["ctdb", "ad", "aaa", "lxc", "vip", "zzz"]
    host.call_each("smbgw_health", ctx=None)
    assert log == host.names, "the host calls in plugin order"
    log.clear()
    host.manager.hook.smbgw_health(ctx=None)
    assert log == host.names, "pluggy's own calling order is the same"


# ---- conflicts at start ---------------------------------------------------------------------


class Claims:
    def __init__(self, tables: Sequence[str] = (), modes: Sequence[str] = (), agent: Sequence[str] = (),
                 smbd: bool = False) -> None:
        self.tables, self.modes, self.agent, self.smbd = tables, modes, agent, smbd

    @hookimpl
    def smbgw_share_sections(self) -> Sequence[str]:
        return list(self.tables)

    @hookimpl
    def smbgw_modes(self) -> Sequence[str]:
        return list(self.modes)

    @hookimpl
    def smbgw_agent_sections(self) -> Sequence[str]:
        return list(self.agent)

    @hookimpl
    def smbgw_smbd_control(self, config: AgentConfig) -> Any:
        return object() if self.smbd else None


@pytest.mark.parametrize(("first", "second", "message"), [
    (Claims(tables=["quota"]), Claims(tables=["quota"]), "share tables: 'quota' is claimed by plugins a and b"),
    (Claims(modes=["lxc"]), Claims(modes=["lxc"]), "modes: 'lxc' is claimed by plugins a and b"),
    (Claims(agent=["ad"]), Claims(agent=["ad"]), "agent.toml tables: 'ad' is claimed by plugins a and b"),
    (Claims(agent=["samba"]), Claims(), "[samba] belongs to the core"),
])
def test_a_table_or_mode_claimed_twice_stops_the_start(first: Claims, second: Claims, message: str) -> None:
    with pytest.raises(PluginConflictError, match=message.replace("[", r"\[").replace("]", r"\]")):
        PluginHost({"a": first, "b": second})


def test_two_plugins_taking_over_smbd_stop_the_start() -> None:
    host = PluginHost({"a": Claims(smbd=True), "b": Claims(smbd=True)})
    with pytest.raises(PluginConflictError, match="plugins a and b both take over smbd"):
        host.smbd_control(AgentConfig(node="n1"))
    assert PluginHost({"a": Claims(smbd=True)}).smbd_control(AgentConfig(node="n1")) is not None
    assert PluginHost({}).smbd_control(AgentConfig(node="n1")).owner == "core"


def test_conflicts_are_reported_against_agent_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon and smbgwctl refuse to start, and say where to fix it."""
    from smbgw_agent.platform import pluginhost

    monkeypatch.setattr(pluginhost, "discover_plugins", lambda: {
        "mode_native": NATIVE_TARGET, "other_native": NATIVE_TARGET,
    })
    with pytest.raises(ConfigError) as caught:
        load_plugins_and_config(Paths.under(tmp_path))
    [problem] = caught.value.problems
    assert problem.key == "agent.disabled_plugins"
    assert "'native' is claimed by plugins mode_native and other_native" in problem.message
    (tmp_path / "etc/smbgw").mkdir(parents=True)
    (tmp_path / "etc/smbgw/agent.toml").write_text('[agent]\ndisabled_plugins = ["other_native"]\n')
    plugins, _ = load_plugins_and_config(Paths.under(tmp_path))
    assert plugins.names == ["mode_native"]


# ---- typed changes ------------------------------------------------------------------------------


def test_changes_and_resources_are_checked_when_made() -> None:
    assert Change("share:a", "create", "x").stamped("p").to_dict() == {
        "plugin": "p", "resource": "share:a", "action": "create", "detail": "x",
    }
    for bad in ({"resource": "share:a", "action": "replace"}, {"resource": "has space", "action": "create"},
                {"resource": "", "action": "create"}, {"resource": "x\x1b[2J", "action": "create"}):
        with pytest.raises(ValueError):
            Change(bad["resource"], bad["action"], "detail")
    with pytest.raises(ValueError, match="share prefix"):
        NodeResource("share:a")
    with pytest.raises(ValueError, match="larger than"):
        NodeResource("big", {"blob": "x" * (2 << 20)})


def test_a_plugin_planning_for_another_resource_is_an_error_of_that_plugin() -> None:
    class Confused:
        @hookimpl
        def smbgw_plan_share(self, ctx: Any, name: str, desired: Any, applied: Any) -> Sequence[Change]:
            return [Change("share:other", "update", "touches a share it was not asked about")]

    host = PluginHost({"confused": Confused()})
    with pytest.raises(Exception, match="confused: planned a change to 'share:other'"):
        host.plan_share(None, "mine", None, None)  # type: ignore[arg-type]


# ---- parameters ----------------------------------------------------------------------------------


def test_list_parameters_merge_in_rank_order_without_duplicates() -> None:
    merged = merge_parameters([
        ("plugin backup", Parameter("vfs objects", "shadow_copy2", rank=60)),
        ("plugin quota", Parameter("vfs objects", "btrfs", rank=80)),
        ("plugin mac", Parameter("VFS Objects", "catia fruit", rank=10)),
        ("plugin acl", Parameter("vfs objects", "btrfs", rank=80)),
        ("plugin quota", Parameter("dfree command", "/usr/lib/smbgw/dfree")),
    ], "share [x]")
    assert merged == [("dfree command", "/usr/lib/smbgw/dfree"), ("vfs objects", "catia fruit shadow_copy2 btrfs")]


def test_two_values_for_one_parameter_are_a_conflict_naming_both() -> None:
    wanted = r"share \[x\]: plugin quota wants dfree command = 'a', plugin other wants 'b'"
    with pytest.raises(ParameterConflict, match=wanted):
        merge_parameters([
            ("plugin quota", Parameter("dfree command", "a")), ("plugin other", Parameter("dfree  Command", "b")),
        ], "share [x]")
    with pytest.raises(Exception, match="control characters"):
        merge_parameters([("plugin x", Parameter("comment", "a\nb"))], "share [x]")


# ---- plugin state --------------------------------------------------------------------------------


def test_plugin_state_is_saved_with_the_pass_and_a_dry_run_writes_nothing(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.load()
    state = store.plugin_state("mode_lxc")
    state.set("vmids", {"finance": 2100})
    state.set("next", 2101)
    state.delete("next")
    store.commit()
    dry = StateStore(tmp_path, read_only=True)
    dry.load()
    copy = dry.plugin_state("mode_lxc", dry_run=True)
    assert copy.get("vmids") == {"finance": 2100}
    copy.set("vmids", {"finance": 9999})
    again = StateStore(tmp_path)
    again.load()
    assert again.plugin_state("mode_lxc").get("vmids") == {"finance": 2100}
    assert "next" not in again.plugin_state("mode_lxc")
    with pytest.raises(ValueError):
        state.set("bad", float("nan"))
    with pytest.raises(TypeError):
        state.set("bad", object())


def test_plugin_state_of_an_interrupted_pass_is_not_saved(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.load()
    store.plugin_state("p").set("k", 1)
    store.commit()
    store.plugin_state("p").set("k", 2)
    store.rollback()  # what run_pass does when a pass dies
    fresh = StateStore(tmp_path)
    fresh.load()
    assert fresh.plugin_state("p").get("k") == 1


# ---- jobs ----------------------------------------------------------------------------------------


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_jobs_run_off_the_calling_thread_report_progress_and_wake_the_agent() -> None:
    woken = threading.Event()
    jobs = JobRunner(on_finished=woken.set)
    seen: list[str] = []
    release = threading.Event()

    def work(progress: Any) -> int:
        seen.append(threading.current_thread().name)
        progress.report("step 1 of 2")
        release.wait(5)
        return 42

    assert jobs.submit(Job("create:2100", work, timeout=30, resource="lxc:2100", plugin="mode_lxc"))
    wait_for(lambda: jobs.record("create:2100").progress == "step 1 of 2")  # type: ignore[union-attr]
    assert not jobs.submit(Job("create:2100", work, timeout=30)), "one job per id at a time"
    assert jobs.snapshot()["create:2100"]["state"] == "running"
    release.set()
    assert woken.wait(5)
    record = jobs.record("create:2100")
    assert record is not None and (record.state, record.result) == (SUCCEEDED, 42)
    assert seen[0].startswith("smbgw-job") and seen[0] != threading.current_thread().name
    assert jobs.take_finished() == {"lxc:2100"} and jobs.take_finished() == set()
    jobs.stop()


def test_a_job_is_bounded_by_its_own_budget_and_never_feeds_the_watchdog() -> None:
    jobs = JobRunner()
    beats: list[float] = []

    def hang(progress: Any) -> None:
        from smbgw_agent.effects import deadline

        deadline.beat()  # a job's budget has no heartbeat: this must not reach the watchdog
        beats.append(1.0) if deadline.current() is not None and deadline.current()._heartbeat else None
        Runner().run(["sleep", "30"], timeout=60)

    started = time.monotonic()
    jobs.submit(Job("hang", hang, timeout=0.5))
    wait_for(lambda: (r := jobs.record("hang")) is not None and r.state == TIMED_OUT)
    assert time.monotonic() - started < 10, "the command was cut to the job's budget"
    assert beats == []
    failing = jobs.submit(Job("fail", lambda p: (_ for _ in ()).throw(CommandError("exit 1")), timeout=5))
    assert failing
    wait_for(lambda: (r := jobs.record("fail")) is not None and r.state == FAILED)
    assert jobs.record("fail").error == "exit 1"  # type: ignore[union-attr]
    jobs.stop()


def test_schedules_run_when_due_and_a_missed_run_happens_once() -> None:
    clock = [1000.0]
    jobs = JobRunner(clock=lambda: clock[0])
    runs: list[float] = []

    def every_hour(last: float | None) -> float:
        return 0.0 if last is None else last + 3600

    jobs.set_schedules({"snap": Schedule("snap", every_hour, lambda p: runs.append(clock[0]), 60, plugin="backup")})
    assert jobs.run_due() == ["snap"]
    wait_for(lambda: len(runs) == 1)
    wait_for(lambda: jobs.record("snap").state == SUCCEEDED)  # type: ignore[union-attr]
    assert jobs.next_due() == 4600.0
    assert jobs.run_due() == []
    clock[0] += 5 * 3600  # the agent was "down" for five slots
    assert jobs.run_due() == ["snap"]
    wait_for(lambda: len(runs) == 2)
    wait_for(lambda: jobs.record("snap").state == SUCCEEDED)  # type: ignore[union-attr]
    assert jobs.run_due() == [], "one run for all the missed slots"
    jobs.stop()


def test_a_group_runs_at_most_its_limit_and_a_waiting_schedule_does_not_make_the_loop_spin() -> None:
    jobs = JobRunner()
    release = threading.Event()
    ran: list[str] = []

    def transfer(name: str) -> Any:
        def run(progress: Any) -> None:
            ran.append(name)
            release.wait(10)
        return run

    schedules = {name: Schedule(name, lambda last: 0.0, transfer(name), 30, group="offhost", group_limit=1)
                 for name in ("a", "b")}
    jobs.set_schedules(schedules)
    assert jobs.run_due() == ["a"], "the group holds one"
    wait_for(lambda: ran == ["a"])
    assert jobs.next_due() is None, "a due schedule that cannot start must not count as due (busy loop)"
    assert jobs.wait("a", 0.05) is None, "still running"
    release.set()
    record = jobs.wait("a", 10)
    assert record is not None and record.state == SUCCEEDED
    wait_for(lambda: jobs.run_due() == ["b"] or "b" in ran)
    assert jobs.wait("b", 10) is not None and ran == ["a", "b"]
    jobs.stop()


# ---- the field kit -------------------------------------------------------------------------------


def test_the_field_kit_collects_every_problem_of_a_table() -> None:
    table = Table({"size": "lots", "backend": "ntfs", "thresholds": {"warning": 175, "typo": 1},
                   "exclude": ["ok", 7], "extra": True})
    table.size("size")
    table.choice("backend", ("auto", "btrfs"), default="auto")
    levels = table.table("thresholds")
    levels.integer("warning", 75, minimum=1, maximum=100)
    table.list_of("exclude", lambda v: fields.string(v, "pattern"))
    with pytest.raises(FieldProblems) as caught:
        table.done()
    keys = [key for _message, key, _security in caught.value.problems]
    assert keys == ["size", "backend", "thresholds.warning", "exclude", "extra", "thresholds.typo"]
    assert "entry 2: must be a string, not an integer" in caught.value.problems[3][0]


def test_plugin_table_problems_carry_their_lines(tmp_path: Path) -> None:
    """Nested keys keep their line whichever way TOML wrote them."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
    try:
        from smbgw_recycle import RecyclePlugin
    finally:
        sys.path.pop(0)
    root = tmp_path / "root"
    (root / "srv/data").mkdir(parents=True)
    shares = root / "etc/smbgw/shares.d"
    shares.mkdir(parents=True)
    file = shares / "data.toml"
    file.write_text(textwrap.dedent("""\
        path = "/srv/data"

        [recycle]
        keep = "forever"
        repository = "../escape"
        exclude = ["*.tmp", "a|b"]
        purge = true
    """))
    host = PluginHost({"mode_native": NATIVE_TARGET, "recycle": RecyclePlugin()})
    result = ShareScanner(Paths.under(root), host, AgentConfig(node="n1", allowed_roots=("/srv",))).read_one(file)
    found = {(p.key, p.line) for p in result.problems}
    assert found == {("recycle.keep", 4), ("recycle.repository", 5), ("recycle.exclude", 6), ("recycle.purge", 7)}


def test_the_core_and_plugins_share_one_set_of_field_readers() -> None:
    """`shares` and `config` parse booleans and strings with the field kit, not copies."""
    import smbgw_agent.model.config as config
    import smbgw_agent.model.shares as shares

    for module in (config, shares):
        assert not {"_bool", "_boolean", "_text", "_string"} & set(vars(module)), module.__name__



def test_guest_id_ranges_of_every_plugin_are_merged_and_checked() -> None:
    from smbgw_agent.model.idranges import IdRange
    from smbgw_agent.platform.pluginhost import PluginCallError

    class Offers:
        def __init__(self, *ranges: object) -> None:
            self.ranges = list(ranges)

        @hookimpl
        def smbgw_guest_id_ranges(self, ctx: Any, target: str) -> list[object]:
            return self.ranges

    host = PluginHost({"a": Offers(IdRange(10, 19)), "b": Offers(IdRange(20, 30), IdRange(50, 60))})
    assert host.guest_id_ranges(None, "lxc:9000") == [IdRange(10, 30), IdRange(50, 60)]  # type: ignore[arg-type]
    with pytest.raises(PluginCallError, match="not an IdRange"):
        PluginHost({"a": Offers((1, 2))}).guest_id_ranges(None, "lxc:9000")  # type: ignore[arg-type]


def test_guest_steps_come_in_plugin_order_and_must_carry_their_plugins_name() -> None:
    from smbgw_agent.platform.guests import GuestStep
    from smbgw_agent.platform.pluginhost import PluginCallError

    def step(name: str) -> GuestStep:
        return GuestStep(name, "inputs", lambda shell, progress: "done")

    class Gives:
        def __init__(self, *steps: object) -> None:
            self.steps = list(steps)

        @hookimpl
        def smbgw_guest_steps(self, ctx: Any, target: str) -> list[object]:
            return self.steps

    host = PluginHost({"ad": Gives(step("ad:join")), "quota": Gives(step("quota:tools"), step("quota:more"))})
    names = [s.name for s in host.guest_steps(None, "lxc:9000")]  # type: ignore[arg-type]
    assert sorted(names) == ["ad:join", "quota:more", "quota:tools"]
    assert names.index("quota:tools") < names.index("quota:more")
    with pytest.raises(PluginCallError, match="must start with 'ad:'"):
        PluginHost({"ad": Gives(step("quota:join"))}).guest_steps(None, "lxc:9000")  # type: ignore[arg-type]
    with pytest.raises(PluginCallError, match="not a GuestStep"):
        PluginHost({"ad": Gives("join")}).guest_steps(None, "lxc:9000")  # type: ignore[arg-type]

"""The plugin conformance suite: what every plugin must do, run against each plugin.

Each plugin is loaded the way the agent loads it (the `smbgw` entry-point group) and run
by the real reconciler against a real smbd and testparm in a sandbox root. A plugin
joins the suite by adding a `Subject` below: how to declare a share that uses it.

    plan has no effects                  a dry run changes no file and no state
    a second pass plans nothing          apply reaches what plan compared against
    rollback undoes apply                a share failing in a later plugin leaves no trace
    commit failures stay with the plugin another plugin's failing commit fails only its resources
    removal never deletes data           the share's files (and its bin) outlive the share
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from smbgw_agent.effects.runner import Runner
from smbgw_agent.effects.services import ServiceControl
from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.shares import ShareSpec
from smbgw_agent.platform.changes import UPDATE, Change, share_resource
from smbgw_agent.platform.context import PassContext
from smbgw_agent.platform.hookspecs import hookimpl
from smbgw_agent.platform.jobs import JobRunner
from smbgw_agent.platform.pluginhost import PluginHost, discover_plugins
from smbgw_agent.reconcile.reconciler import Reconciler
from tests.support.procs import describe_difference, private_sandbox, snapshot_tree
from tests.support.storage import btrfs_image

pytestmark = pytest.mark.integration
PLUGINS_DIR = Path(__file__).resolve().parents[1] / "plugins"


@dataclass(frozen=True)
class Subject:
    plugin: str
    body: str  # what a share file adds to use the plugin
    data_files: tuple[str, ...] = ("report.txt",)  # relative to the share: must survive removal
    storage: str | None = None  # a real file system the shares live on ("btrfs")
    precreate: bool = True  # the admin makes the share directory (False: the plugin does)
    subvolume: bool = False  # ... as a btrfs subvolume


SUBJECTS = [
    Subject("mode_native", ""),
    Subject("recycle", '[recycle]\nkeep = "7d"\n', ("report.txt", ".recycle/alice/old.txt")),
    Subject("quota", '[quota]\nsize = "64M"\n', storage="btrfs", precreate=False),
    Subject("backup", '[backup]\nschedule = "daily"\nkeep = { last = 3 }\n', storage="btrfs", subvolume=True),
]


class Saboteur:
    """Ranked after every plugin; plans a change for chosen shares and fails it on demand."""

    def __init__(self) -> None:
        self.targets: set[str] = set()
        self.fail_apply = False
        self.fail_commit = False

    @hookimpl
    def smbgw_order(self) -> int:
        return 10_000

    @hookimpl
    def smbgw_plan_share(
        self, ctx: PassContext, name: str, desired: ShareSpec | None, applied: ShareSpec | None
    ) -> Sequence[Change]:
        return [Change(share_resource(name), UPDATE, "sabotage")] if desired and name in self.targets else []

    @hookimpl
    def smbgw_apply_share(self, ctx: PassContext, name: str, desired: ShareSpec, changes: Sequence[Change]) -> None:
        if self.fail_apply:
            raise RuntimeError("sabotaged apply")

    @hookimpl
    def smbgw_commit(self, ctx: PassContext, resources: Sequence[str]) -> Mapping[str, str]:
        if self.fail_commit:
            raise RuntimeError("sabotaged commit")
        self.targets -= {r.removeprefix("share:") for r in resources}
        return {}


@pytest.fixture(scope="module")
def entry_points_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test plugins, installed the way a third party's are: an `smbgw` entry point."""
    site = tmp_path_factory.mktemp("site")
    info = site / "smbgw_recycle-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: smbgw-recycle\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[smbgw]\nrecycle = smbgw_recycle:RecyclePlugin\n")
    return site


@pytest.fixture
def box() -> Iterator[Any]:
    tools = ("smbd", "testparm", "smbcontrol", "smbpasswd")
    if any(shutil.which(t) is None for t in tools) or os.geteuid() != 0:
        pytest.skip("the conformance suite runs the real smbd and testparm, as root")
    with private_sandbox() as sandbox:
        yield sandbox


@pytest.fixture(params=SUBJECTS, ids=[s.plugin for s in SUBJECTS])
def subject(request: pytest.FixtureRequest) -> Subject:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def setup(box: Any, subject: Subject, entry_points_site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    with contextlib.ExitStack() as stack:
        if subject.storage == "btrfs":
            stack.enter_context(btrfs_image(box.root / "srv/smb"))
        yield _setup(box, subject, entry_points_site, monkeypatch)


def _setup(box: Any, subject: Subject, entry_points_site: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(entry_points_site))
    monkeypatch.syspath_prepend(str(PLUGINS_DIR))
    found = discover_plugins()
    assert subject.plugin in found, f"{subject.plugin} is not an installed smbgw entry point"
    saboteur = Saboteur()

    def make(read_only: bool = False) -> Reconciler:
        host = PluginHost({**found, "saboteur": saboteur})
        runner = Runner()
        config = AgentConfig(node="sandbox", allowed_roots=("/srv",))
        return Reconciler(box.paths, config, host, ServiceControl(runner, use_systemd=False), runner,
                          read_only=read_only)

    return make, saboteur


def declare(box: Any, subject: Subject, name: str) -> Path:
    if subject.subvolume:
        subprocess.run(["btrfs", "subvolume", "create", str(box.root / "srv/smb" / name)], check=True,
                       capture_output=True)
    if subject.precreate:
        box.share_dir(name)
    file = box.shares_dir / f"{name}.toml"
    file.write_text(f'path = "/srv/smb/{name}"\nvalid_users = ["{box.user}"]\n' + textwrap.dedent(subject.body))
    return file


def outside_bookkeeping(box: Any) -> list[Path]:
    """What a pass may write besides a plugin's effects: state, status, Samba's own files."""
    return [box.root / p for p in ("var/lib/smbgw", "run", "var/lib/samba", "var/log/samba")]


def plugin_changes(report: Any, plugin: str) -> list[Change]:
    return [c for c in report.changes if c.plugin == plugin]


def test_plan_has_no_effects(box: Any, subject: Subject, setup: Any) -> None:
    make, _ = setup
    make().run_pass()  # the node's own resources in place
    declare(box, subject, "alpha")
    before = snapshot_tree(box.root, exclude=outside_bookkeeping(box))
    report = make(read_only=True).run_pass(dry_run=True)
    assert plugin_changes(report, subject.plugin), f"{subject.plugin} planned nothing for a new share"
    after = snapshot_tree(box.root, exclude=outside_bookkeeping(box))
    assert before == after, describe_difference(before, after)


def test_a_second_pass_plans_nothing(box: Any, subject: Subject, setup: Any) -> None:
    make, _ = setup
    declare(box, subject, "alpha")
    declare(box, subject, "beta")
    rec = make()
    first = rec.run_pass()
    assert first.ok, (first.errors, {k: o.error for k, o in first.outcomes.items()})
    assert box.smbclient("alpha", "ls").returncode == 0
    again = make(read_only=True).run_pass(dry_run=True)
    assert again.changes == [], [c.to_dict() for c in again.changes]
    assert rec.run_pass().changes == []


def test_rollback_undoes_apply(box: Any, subject: Subject, setup: Any) -> None:
    make, saboteur = setup
    declare(box, subject, "other")
    rec = make()
    assert rec.run_pass().ok
    file = declare(box, subject, "victim")
    saboteur.targets, saboteur.fail_apply = {"victim"}, True
    before = snapshot_tree(box.root, exclude=[*outside_bookkeeping(box), file])
    report = rec.run_pass()
    assert report.outcomes["victim"].result == "failed"
    assert plugin_changes(report, subject.plugin), "the plugin under test did apply something"
    after = snapshot_tree(box.root, exclude=[*outside_bookkeeping(box), file])
    assert before == after, describe_difference(before, after)
    assert box.smbclient("victim", "ls").returncode != 0
    saboteur.fail_apply = False
    assert rec.run_pass(force=True).ok
    assert box.smbclient("victim", "ls").returncode == 0


def test_commit_failures_stay_with_the_failing_plugin(box: Any, subject: Subject, setup: Any) -> None:
    make, saboteur = setup
    rec = make()
    saboteur.targets, saboteur.fail_commit = {"victim"}, True
    declare(box, subject, "victim")
    declare(box, subject, "bystander")
    report = rec.run_pass()
    assert report.outcomes["bystander"].result == "applied"
    assert report.outcomes["victim"].result == "failed"
    assert "saboteur: commit failed" in (report.outcomes["victim"].error or "")
    assert box.smbclient("bystander", "ls").returncode == 0
    saboteur.fail_commit = False
    assert rec.run_pass(force=True).ok
    assert box.smbclient("victim", "ls").returncode == 0


def test_removal_never_deletes_data(box: Any, subject: Subject, setup: Any) -> None:
    make, _ = setup
    file = declare(box, subject, "alpha")
    rec = make()
    assert rec.run_pass().ok
    share = box.root / "srv/smb/alpha"
    for relative in subject.data_files:
        (share / relative).parent.mkdir(parents=True, exist_ok=True)
        (share / relative).write_text("precious\n")
    file.unlink()
    report = rec.run_pass()
    assert report.outcomes["alpha"].result == "removed"
    assert box.smbclient("alpha", "ls").returncode != 0
    for relative in subject.data_files:
        assert (share / relative).read_text() == "precious\n"


def test_every_subject_is_a_plugin_the_agent_can_load(setup: Any, subject: Subject) -> None:
    make, _ = setup
    assert subject.plugin in make().plugins.names



# ---- dispatch by owner, seen from outside ------------------------------------------------------


class RecordingRunner(Runner):
    """The agent's runner, writing down every command it starts."""

    def __init__(self) -> None:
        super().__init__()
        self.commands: list[list[str]] = []

    def run(self, argv: Sequence[str], **kwargs: Any) -> Any:
        self.commands.append(list(argv))
        return super().run(argv, **kwargs)


def test_a_plugin_table_change_that_leaves_smb_conf_alone_does_not_reload_smbd(
    box: Any, entry_points_site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(entry_points_site))
    monkeypatch.syspath_prepend(str(PLUGINS_DIR))
    runner = RecordingRunner()
    rec = Reconciler(box.paths, AgentConfig(node="sandbox", allowed_roots=("/srv",)), PluginHost.load(),
                     ServiceControl(runner, use_systemd=False), runner)
    subject = Subject("recycle", '[recycle]\nkeep = "7d"\n')
    file = declare(box, subject, "alpha")
    assert rec.run_pass().ok
    fragment = box.paths.samba_dir / "share-alpha.conf"
    assert "vfs objects = recycle" in fragment.read_text()
    assert any(c[0] == "testparm" for c in runner.commands) and any(c[0] == "smbcontrol" for c in runner.commands)

    # Only [recycle] keep changes: nothing smbd reads changes.
    file.write_text(file.read_text().replace('keep = "7d"', 'keep = "14d"'))
    runner.commands.clear()
    report = rec.run_pass(full=False)
    assert report.ok and report.outcomes["alpha"].result == "applied"
    assert runner.commands == [], "no testparm, no reload"
    assert {(c.plugin, c.resource) for c in report.changes} == {
        ("mode_native", "share:alpha"), ("recycle", "recycle:purge"),
    }, [c.to_dict() for c in report.changes]
    assert '"keep":1209600.0' in fragment.read_text(), "the declaration line follows the file"
    assert rec.state.plugin_state("recycle").get("schedule")["shares"]["alpha"]["keep"] == 1209600.0
    assert box.smbclient("alpha", "ls").returncode == 0

    # A change that does reach smb.conf is validated and reloaded as always.
    file.write_text(file.read_text() + 'exclude = ["*.tmp"]\n')
    runner.commands.clear()
    assert rec.run_pass(full=False).ok
    assert "recycle:exclude = *.tmp" in fragment.read_text()
    assert [c[0] for c in runner.commands if c[0] in ("testparm", "smbcontrol")] == ["testparm", "smbcontrol"]


def test_the_example_plugin_purges_on_its_schedule_and_remembers_it_across_a_restart(
    box: Any, entry_points_site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node resource, a scheduled job off the reconcile thread, persistent state and
    health, end to end: the worked example of docs/plugins.md doing its job."""
    monkeypatch.syspath_prepend(str(entry_points_site))
    monkeypatch.syspath_prepend(str(PLUGINS_DIR))
    finished = threading.Event()

    def start() -> tuple[Reconciler, JobRunner]:
        jobs = JobRunner(on_finished=finished.set)
        runner = Runner()
        rec = Reconciler(box.paths, AgentConfig(node="sandbox", allowed_roots=("/srv",)), PluginHost.load(),
                         ServiceControl(runner, use_systemd=False), runner, jobs=jobs)
        rec.start_plugins()
        return rec, jobs

    rec, jobs = start()
    declare(box, Subject("recycle", '[recycle]\nkeep = "1h"\n'), "alpha")
    report = rec.run_pass()
    assert report.ok and report.resources["recycle:purge"].result == "applied"
    bin_dir = box.root / "srv/smb/alpha/.recycle/smbgwdemo"
    bin_dir.mkdir(parents=True)
    old, recent = bin_dir / "old.txt", bin_dir / "recent.txt"
    old.write_text("deleted yesterday\n")
    recent.write_text("deleted a minute ago\n")
    os.utime(old, (time.time() - 86400, time.time() - 86400))
    assert "recycle:purge" in jobs.schedules
    assert jobs.run_due() == ["recycle:purge"], "never ran: due at once"
    assert finished.wait(30)
    record = jobs.record("recycle:purge")
    assert record is not None and record.state == "succeeded", record
    assert record.result == {"removed": 1}
    assert not old.exists() and recent.exists()
    # The next pass records the outcome (planned as a change of the resource) and health.
    report = rec.run_pass(full=False)
    assert [c.detail.split(" at ")[0] for c in report.resources["recycle:purge"].changes] == [
        "record the purge that succeeded"
    ]
    state = rec.state.plugin_state("recycle").get("last_purge")
    assert state["state"] == "succeeded" and state["result"] == {"removed": 1}
    status = json.loads(box.paths.status_file.read_text())
    assert status["health"] == [{"plugin": "recycle", "resource": "recycle:purge", "check": "purge",
                                 "ok": True, "detail": "removed 1 file(s)"}]
    assert status["jobs"]["recycle:purge"]["state"] == "succeeded"
    assert status["jobs"]["recycle:purge"]["next_run"] == pytest.approx(record.started + 3600.0)
    rec.stop_plugins()
    jobs.stop()
    rec.state.close()

    # A restart: the schedule and its last run come back from plugin state; nothing is due.
    rec, jobs = start()
    assert rec.run_pass().ok
    assert jobs.next_due() == pytest.approx(record.started + 3600.0)
    assert jobs.run_due() == []
    rec.stop_plugins()
    jobs.stop()

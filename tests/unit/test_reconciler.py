"""The reconciler with real plugin hosts: isolation, backoff, last-good, dry runs, state, status.

The test plugins below are plugins (they implement the hooks, with real files as their
effects), not fakes of Samba. Where native mode is needed, the real mode_native plugin
runs against a real smbd and testparm in a sandbox root.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from smbgw_agent.effects.fileio import atomic_write
from smbgw_agent.effects.runner import Runner
from smbgw_agent.effects.services import ServiceControl
from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.paths import Paths
from smbgw_agent.model.shares import ShareSpec
from smbgw_agent.platform.changes import CREATE, DELETE, UPDATE, Change, NodeResource, share_resource
from smbgw_agent.platform.context import PassContext
from smbgw_agent.platform.hookspecs import hookimpl
from smbgw_agent.platform.jobs import SUCCEEDED, Job, JobRunner
from smbgw_agent.platform.pluginhost import PluginHost
from smbgw_agent.reconcile.reconciler import Reconciler
from smbgw_agent.reconcile.state import StateStore
from tests.support.procs import describe_difference, snapshot_tree

NATIVE_TARGET = "smbgw_plugins.mode_native:NativeModePlugin"
REPO = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FileMode:
    """Deployment mode "files": a share is served when <root>/served/<name>.conf holds it.

    It stages in apply and writes in commit, as the hookspecs ask, and plans against
    the actual files, so drift and restarts behave as with a real mode.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail_apply: dict[str, str] = {}
        self.fail_plan: dict[str, str] = {}
        self.reject: dict[str, str] = {}
        self.commit_error: str | None = None

    @staticmethod
    def target(ctx: PassContext, name: str) -> Path:
        return ctx.paths.root / "served" / f"{name.casefold()}.conf"

    @staticmethod
    def render(spec: ShareSpec) -> str:
        return f"[{spec.name}]\npath = {spec.path}\ncomment = {spec.comment}\n"

    @staticmethod
    def staged(ctx: PassContext) -> dict[str, str | None]:
        space: dict[str, str | None] = ctx.plugin_scratch("files").setdefault("staged", {})
        return space

    @hookimpl
    def smbgw_modes(self) -> Sequence[str]:
        return ["files"]

    @hookimpl
    def smbgw_plan_share(
        self, ctx: PassContext, name: str, desired: ShareSpec | None, applied: ShareSpec | None
    ) -> Sequence[Change]:
        self.calls.append(("plan", name, desired, applied, ctx.dry_run))
        if name in self.fail_plan:
            raise RuntimeError(self.fail_plan[name])
        target = self.target(ctx, name)
        live = target.read_text() if target.exists() else None
        resource = share_resource(name)
        if desired is not None and desired.mode == "files":
            if live is None:
                return [Change(resource, CREATE, f"write {target.name}")]
            return [Change(resource, UPDATE, f"rewrite {target.name}")] if live != self.render(desired) else []
        return [Change(resource, DELETE, f"delete {target.name}")] if live is not None else []

    @hookimpl
    def smbgw_apply_share(self, ctx: PassContext, name: str, desired: ShareSpec, changes: Sequence[Change]) -> None:
        self.calls.append(("apply", name, ctx.dry_run))
        assert not ctx.dry_run
        if desired.mode == "files":
            self.staged(ctx)[name.casefold()] = self.render(desired)
        if name in self.fail_apply:  # fails after staging: rollback must undo it
            raise RuntimeError(self.fail_apply[name])

    @hookimpl
    def smbgw_remove_share(
        self, ctx: PassContext, name: str, applied: ShareSpec | None, changes: Sequence[Change]
    ) -> None:
        self.calls.append(("remove", name))
        self.staged(ctx)[name.casefold()] = None

    @hookimpl
    def smbgw_rollback_share(self, ctx: PassContext, name: str, applied: ShareSpec | None) -> None:
        self.calls.append(("rollback", name, applied))
        self.staged(ctx).pop(name.casefold(), None)

    @hookimpl
    def smbgw_commit(self, ctx: PassContext, resources: Sequence[str]) -> Mapping[str, str]:
        self.calls.append(("commit", sorted(resources)))
        if self.commit_error:
            raise RuntimeError(self.commit_error)
        rejected = {}
        for key, text in self.staged(ctx).items():
            if key in self.reject:
                rejected[share_resource(key)] = self.reject[key]
            elif text is None:
                self.target(ctx, key).unlink(missing_ok=True)
            else:
                atomic_write(self.target(ctx, key), text)
        return rejected

    @hookimpl
    def smbgw_observe(self, ctx: PassContext) -> Mapping[str, Any]:
        folder = ctx.paths.root / "served"
        return {"files": sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []}

    def called(self, hook: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == hook]


class FlakyAddon:
    """An add-on (think quota) with a change for every share, whose apply fails for
    chosen shares in any mode."""

    def __init__(self, failing: set[str]) -> None:
        self.failing = failing
        self.rollbacks: list[str] = []
        self.done: set[str] = set()

    @hookimpl
    def smbgw_plan_share(
        self, ctx: PassContext, name: str, desired: ShareSpec | None, applied: ShareSpec | None
    ) -> Sequence[Change]:
        if desired is None or name in self.done:
            return []
        return [Change(share_resource(name), UPDATE, f"set the quota of {name}")]

    @hookimpl
    def smbgw_apply_share(self, ctx: PassContext, name: str, desired: ShareSpec, changes: Sequence[Change]) -> None:
        if name in self.failing:
            raise OSError(f"setting the quota of {name} failed")
        self.done.add(name)

    @hookimpl
    def smbgw_rollback_share(self, ctx: PassContext, name: str, applied: ShareSpec | None) -> None:
        self.rollbacks.append(name)


class Witness:
    """Has a change for chosen shares (all by default); records that its commit ran,
    and can be made to raise in commit."""

    def __init__(self, shares: set[str] | None = None, commit_error: str | None = None) -> None:
        self.commits: list[list[str]] = []
        self.shares = shares
        self.commit_error = commit_error
        self.applied: list[str] = []

    @hookimpl
    def smbgw_plan_share(
        self, ctx: PassContext, name: str, desired: ShareSpec | None, applied: ShareSpec | None
    ) -> Sequence[Change]:
        if desired is None or (self.shares is not None and name not in self.shares) or name in self.applied:
            return []
        return [Change(share_resource(name), UPDATE, f"witness {name}")]

    @hookimpl
    def smbgw_apply_share(self, ctx: PassContext, name: str, desired: ShareSpec, changes: Sequence[Change]) -> None:
        self.applied.append(name)

    @hookimpl
    def smbgw_rollback_share(self, ctx: PassContext, name: str, applied: ShareSpec | None) -> None:
        if name in self.applied:
            self.applied.remove(name)

    @hookimpl
    def smbgw_commit(self, ctx: PassContext, resources: Sequence[str]) -> Mapping[str, str]:
        self.commits.append(sorted(resources))
        if self.commit_error:
            raise RuntimeError(self.commit_error)
        return {}


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc/smbgw/shares.d").mkdir(parents=True)
    (root / "srv").mkdir()  # the storage the shares live on
    return root


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def config_for(node: str = "n1") -> AgentConfig:
    return AgentConfig(node=node, allowed_roots=("/srv",))


def reconciler(root: Path, plugins: PluginHost, clock: FakeClock, node: str = "n1") -> Reconciler:
    runner = Runner()
    return Reconciler(
        Paths.under(root), config_for(node), plugins, ServiceControl(runner, use_systemd=False), runner,
        clock=clock, monotonic=clock,
    )


def declare(root: Path, name: str, body: str = "", mode: str = "files", comment: str = "") -> Path:
    path = root / "etc/smbgw/shares.d" / f"{name}.toml"
    text = f'path = "/srv/{name}"\nmode = "{mode}"\ncomment = "{comment}"\n' + textwrap.dedent(body)
    path.write_text(text)
    return path


def status_file(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / "run/smbgw/status.json").read_text())
    return data


def served(root: Path) -> dict[str, str]:
    folder = root / "served"
    return {p.stem: p.read_text() for p in folder.iterdir()} if folder.is_dir() else {}


# ---- per-share isolation -------------------------------------------------------------------


class SlowMode(FileMode):
    """A mode whose share needs background work after apply (a container to start)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    @hookimpl
    def smbgw_apply_share(self, ctx: PassContext, name: str, desired: ShareSpec, changes: Sequence[Change]) -> None:
        super().smbgw_apply_share(ctx, name, desired, changes)
        assert ctx.jobs is not None

        def run(progress: Any) -> None:
            progress.report("starting the container")
            self.release.wait(10.0)

        ctx.jobs.submit(Job(f"files:{name}", run, 20.0, share_resource(name), "files"))


def test_a_share_whose_mode_job_runs_is_pending_until_it_ends(root: Path, clock: FakeClock) -> None:
    mode = SlowMode()
    runner = Runner()
    jobs = JobRunner()
    rec = Reconciler(Paths.under(root), config_for(), PluginHost({"files": mode}),
                     ServiceControl(runner, use_systemd=False), runner, clock=clock, monotonic=clock, jobs=jobs)
    declare(root, "alpha")
    assert rec.run_pass().outcomes["alpha"].result == "applied"
    shares = rec.status()["shares"]
    assert shares["alpha"]["state"] == "pending", "applied, but its job has not finished"
    assert rec.status()["jobs"]["files:alpha"]["progress"] == "starting the container"
    mode.release.set()
    assert jobs.wait("files:alpha", 10.0) is not None
    assert rec.status()["shares"]["alpha"]["state"] == "served"
    jobs.stop()


def test_a_share_is_left_alone_while_its_job_runs_and_planned_when_it_ends(root: Path, clock: FakeClock) -> None:
    """Removed while its container is still being made: nothing is planned for it until
    the job ends (a plan now could only forget it), then the removal goes through."""
    mode = SlowMode()
    runner = Runner()
    jobs = JobRunner()
    rec = Reconciler(Paths.under(root), config_for(), PluginHost({"files": mode}),
                     ServiceControl(runner, use_systemd=False), runner, clock=clock, monotonic=clock, jobs=jobs)
    path = declare(root, "alpha")
    rec.run_pass()
    path.unlink()
    report = rec.run_pass(full=True)
    assert "alpha" not in report.outcomes, "not planned while its job runs"
    assert "alpha" in rec.state.applied and set(served(root)) == {"alpha"}
    mode.release.set()
    assert jobs.wait("files:alpha", 10.0) is not None
    assert rec.run_pass().outcomes["alpha"].result == "removed", "planned when the job ended"
    assert served(root) == {}
    jobs.stop()


class RetriedJobMode(FileMode):
    """Like the LXC mode: apply starts a job that does the work; the job's outcome is read
    at the next plan, and a failure is raised there. The first `failures` jobs fail."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.absorbed: float | None = None
        self.done = False

    @hookimpl
    def smbgw_plan_share(self, ctx: PassContext, name: str, desired: ShareSpec | None,
                         applied: ShareSpec | None) -> Sequence[Change]:
        assert ctx.jobs is not None
        record = ctx.jobs.record(f"files:{name}")
        if record is not None and record.finished is not None and record.finished != self.absorbed:
            self.absorbed = record.finished
            if record.state != SUCCEEDED:
                raise RuntimeError(f"container job failed: {record.error}")
            self.done = True
        return [] if self.done or desired is None else [Change(share_resource(name), CREATE, "make it")]

    @hookimpl
    def smbgw_apply_share(self, ctx: PassContext, name: str, desired: ShareSpec, changes: Sequence[Change]) -> None:
        assert ctx.jobs is not None

        def run(_progress: Any) -> None:
            if self.failures > 0:
                self.failures -= 1
                raise RuntimeError("pct start failed")

        ctx.jobs.submit(Job(f"files:{name}", run, 20.0, share_resource(name), "files"))


def test_a_failing_mode_job_is_retried_with_a_growing_backoff_until_it_works(root: Path, clock: FakeClock) -> None:
    """The job, not the apply, is what fails: the back-off must grow from one failed job
    to the next (not start again at each apply) and clear once a job has worked."""
    mode = RetriedJobMode(failures=2)
    runner = Runner()
    jobs = JobRunner()
    rec = Reconciler(Paths.under(root), config_for(), PluginHost({"files": mode}),
                     ServiceControl(runner, use_systemd=False), runner, clock=clock, monotonic=clock, jobs=jobs)
    declare(root, "alpha")
    delays = []
    for _job in range(3):
        assert rec.run_pass().outcomes["alpha"].result == "applied"
        assert jobs.wait("files:alpha", 10.0) is not None
        report = rec.run_pass(full=False)
        share = rec.status()["shares"]["alpha"]
        if report.outcomes["alpha"].result != "failed":
            break
        assert "pct start failed" in share["error"] and share["state"] == "failed"
        delays.append(share["retry_at"] - clock.now)
        clock.advance(1.0)
        assert rec.run_pass().outcomes["alpha"].result == "waiting", "planned again early: no new failure"
        assert rec.status()["shares"]["alpha"]["failures"] == len(delays)
        clock.advance(delays[-1])
    assert [round(d) for d in delays] == [2, 4]
    share = rec.status()["shares"]["alpha"]
    assert (share["state"], share["failures"], share["error"]) == ("served", 0, None)
    jobs.stop()


def test_an_edited_file_is_tried_at_once_whatever_its_backoff(root: Path, clock: FakeClock) -> None:
    mode = FileMode()
    mode.fail_apply["alpha"] = "broken"
    rec = reconciler(root, PluginHost({"files": mode}), clock)
    declare(root, "alpha")
    for _attempt in range(4):
        rec.run_pass()
        clock.advance(status_file(root)["shares"]["alpha"]["retry_at"] - clock.now)
    rec.run_pass()
    assert status_file(root)["shares"]["alpha"]["failures"] == 5
    del mode.fail_apply["alpha"]
    assert rec.run_pass().outcomes["alpha"].result == "waiting", "the same file waits out its back-off"
    declare(root, "alpha", comment="fixed")
    assert rec.run_pass().outcomes["alpha"].result == "applied", "an edit is tried at once"


def test_apply_failure_is_isolated_rolled_back_and_reported(root: Path, clock: FakeClock) -> None:
    mode = FileMode()
    mode.fail_apply["alpha"] = "disk on fire"
    rec = reconciler(root, PluginHost({"files": mode}), clock)
    declare(root, "alpha")
    declare(root, "beta")
    report = rec.run_pass()
    assert report.outcomes["beta"].result == "applied"
    assert report.outcomes["alpha"].result == "failed"
    assert report.outcomes["alpha"].error == "files: disk on fire", "attributed to the plugin that failed"
    assert report.failed == ["alpha"] and not report.ok
    # alpha's staged write was rolled back before commit; beta went live.
    assert set(served(root)) == {"beta"}
    assert mode.called("rollback") == [("rollback", "alpha", None)]
    assert set(rec.state.applied) == {"beta"}
    status = status_file(root)
    alpha = status["shares"]["alpha"]
    assert alpha["state"] == "failed"
    assert "disk on fire" in alpha["error"]
    assert alpha["failures"] == 1
    assert alpha["retry_at"] == pytest.approx(clock.now + 2.0)
    assert alpha["serving"] == "none"
    assert status["shares"]["beta"]["state"] == "served"
    assert status["shares"]["beta"]["error"] is None
    assert status["pass"]["failed"] == ["alpha"] and status["pass"]["ok"] is False
    assert status["last_success"] is None
    assert rec.next_wakeup() == pytest.approx(clock.now + 2.0)


def test_failed_update_keeps_the_last_applied_state(root: Path, clock: FakeClock) -> None:
    mode = FileMode()
    rec = reconciler(root, PluginHost({"files": mode}), clock)
    declare(root, "alpha", comment="v1")
    rec.run_pass()
    v1 = served(root)["alpha"]
    applied_v1 = rec.state.applied["alpha"]
    declare(root, "alpha", comment="v2")
    mode.fail_apply["alpha"] = "no"
    report = rec.run_pass()
    assert report.outcomes["alpha"].result == "failed"
    [(_, _, kept)] = mode.called("rollback")
    assert kept == applied_v1, "rollback is told which state to keep"
    assert served(root)["alpha"] == v1
    assert rec.state.applied["alpha"].comment == "v1"
    share = status_file(root)["shares"]["alpha"]
    assert share["state"] == "failed" and share["serving"] == "previous"
    # The state on disk agrees (a restart would see v1 as applied).
    fresh = StateStore(root / "var/lib/smbgw")
    fresh.load()
    assert fresh.applied["alpha"].comment == "v1"


@pytest.mark.parametrize("addon_name", ["aaa_quota", "zzz_quota"])  # either registration order
def test_native_share_isolation_with_real_samba(native_box: Any, addon_name: str, clock: FakeClock) -> None:
    box = native_box
    addon = FlakyAddon({"alpha"})
    host = PluginHost({"mode_native": NATIVE_TARGET, addon_name: addon})
    rec = reconciler(box.root, host, clock, node="sandbox")
    for name in ("alpha", "beta"):
        declare(box.root, name, mode="native", comment=f"{name} share")
    report = rec.run_pass()
    assert report.outcomes["beta"].result == "applied", report.outcomes["beta"]
    assert report.outcomes["alpha"].result == "failed"
    assert "setting the quota of alpha failed" in (report.outcomes["alpha"].error or "")
    assert report.errors == [], "smbd was reloaded and nothing node-wide failed"
    assert addon.rollbacks == ["alpha"]
    assert loaded_shares(box.smb_conf) >= {"beta"}
    assert "alpha" not in loaded_shares(box.smb_conf)
    assert not any("[alpha]" in p.read_text() for p in box.paths.samba_dir.glob("*.conf"))
    # Fixed: retried once the backoff expires, and served.
    addon.failing.clear()
    clock.advance(1.0)
    assert rec.run_pass().outcomes["alpha"].result == "waiting"
    clock.advance(1.5)
    report = rec.run_pass()
    assert report.outcomes["alpha"].result == "applied"
    assert report.ok, report.errors
    assert {"alpha", "beta"} <= loaded_shares(box.smb_conf)
    assert status_file(box.root)["shares"]["alpha"]["state"] == "served"


def test_commit_rejection_fails_only_the_rejected_share(root: Path, clock: FakeClock) -> None:
    mode = FileMode()
    mode.reject["alpha"] = "candidate config rejected"
    rec = reconciler(root, PluginHost({"files": mode}), clock)
    declare(root, "alpha")
    declare(root, "beta")
    report = rec.run_pass()
    assert report.outcomes["alpha"].result == "failed"
    assert report.outcomes["alpha"].error == "files: candidate config rejected"
    assert report.outcomes["beta"].result == "applied"
    assert [c[1] for c in mode.called("rollback")] == ["alpha"]
    assert set(served(root)) == {"beta"}
    assert set(rec.state.applied) == {"beta"}


def test_a_raising_commit_fails_touched_shares_and_other_commits_still_run(root: Path, clock: FakeClock) -> None:
    mode, witness = FileMode(), Witness()
    mode.commit_error = "config directory is read-only"
    rec = reconciler(root, PluginHost({"files": mode, "witness": witness}), clock)
    declare(root, "alpha")
    report = rec.run_pass()
    # files commits first (name order) and raises: alpha failed, so the witness, which
    # had not committed it yet, rolls its part back instead of making it live.
    assert witness.commits == [] and witness.applied == []
    assert report.outcomes["alpha"].result == "failed"
    assert "files: commit failed: config directory is read-only" in (report.outcomes["alpha"].error or "")
    assert any("config directory is read-only" in e for e in report.errors)
    assert rec.state.applied == {}
    assert status_file(root)["shares"]["alpha"]["state"] == "failed"


def test_a_raising_commit_never_fails_what_other_plugins_made_live(root: Path, clock: FakeClock) -> None:
    """Defect fixed: one plugin's commit raising used to fail every share of the pass,
    even those only another plugin had touched (and made live)."""
    mode, addon = FileMode(), Witness(shares={"beta"}, commit_error="qgroup limit failed")
    rec = reconciler(root, PluginHost({"files": mode, "addon": addon}), clock)
    declare(root, "alpha")
    declare(root, "beta")
    report = rec.run_pass()
    # addon commits first (name order) and raises; files' commit still runs.
    assert addon.commits == [["share:beta"]], "commit is told only what the plugin touched"
    assert mode.called("commit") == [("commit", ["share:alpha"])], "beta failed before files committed it"
    assert report.outcomes["alpha"].result == "applied"
    assert report.outcomes["beta"].result == "failed"
    assert "addon: commit failed: qgroup limit failed" in (report.outcomes["beta"].error or "")
    assert set(rec.state.applied) == {"alpha"}
    assert set(served(root)) == {"alpha"}
    assert status_file(root)["shares"]["alpha"]["state"] == "served"
    addon.commit_error = None
    clock.advance(2.0)
    report = rec.run_pass(full=False)
    assert report.outcomes["beta"].result == "applied"
    assert sorted(c.plugin for c in report.outcomes["beta"].changes) == ["addon", "files"]
    assert set(rec.state.applied) == {"alpha", "beta"} and set(served(root)) == {"alpha", "beta"}


def test_plan_failure_for_one_share_does_not_block_the_others(root: Path, clock: FakeClock) -> None:
    mode = FileMode()
    mode.fail_plan["alpha"] = "cannot inspect the dataset"
    rec = reconciler(root, PluginHost({"files": mode}), clock)
    declare(root, "alpha")
    declare(root, "beta")
    report = rec.run_pass()
    assert report.outcomes["beta"].result == "applied"
    assert report.outcomes["alpha"].result == "failed"
    assert "cannot inspect the dataset" in (report.outcomes["alpha"].error or "")
    assert ("apply", "alpha", False) not in mode.calls
    assert set(served(root)) == {"beta"}
    assert status_file(root)["pass"]["failed"] == ["alpha"]


def test_plan_failure_is_recorded_in_the_share_status_and_backed_off(root: Path, clock: FakeClock) -> None:
    mode = FileMode()
    mode.fail_plan["alpha"] = "cannot inspect the dataset"
    rec = reconciler(root, PluginHost({"files": mode}), clock)
    declare(root, "alpha")
    rec.run_pass()
    share = status_file(root)["shares"]["alpha"]
    assert share["state"] == "failed"
    assert "cannot inspect the dataset" in (share["error"] or "")
    assert share["retry_at"] is not None


# ---- backoff -----------------------------------------------------------------------------------


def test_retries_back_off_exponentially_with_a_cap_and_reset_on_success(root: Path, clock: FakeClock) -> None:
    mode = FileMode()
    mode.fail_apply["alpha"] = "still broken"
    rec = reconciler(root, PluginHost({"files": mode}), clock)
    declare(root, "alpha")
    delays = []
    for _attempt in range(11):
        applies_before = len(mode.called("apply"))
        report = rec.run_pass()
        assert len(mode.called("apply")) == applies_before + 1
        assert report.outcomes["alpha"].result == "failed"
        share = status_file(root)["shares"]["alpha"]
        delay = share["retry_at"] - clock.now
        delays.append(round(delay, 6))
        assert share["failures"] == len(delays)
        # Before the retry time: no attempt, the share waits and stays reported as failed.
        clock.advance(delay - 0.5)
        report = rec.run_pass()
        assert len(mode.called("apply")) == applies_before + 1
        assert report.outcomes["alpha"].result == "waiting"
        assert status_file(root)["shares"]["alpha"]["state"] == "failed"
        clock.advance(0.5)
    assert delays == [2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
    # Fixed: the next attempt succeeds and the bookkeeping is cleared.
    del mode.fail_apply["alpha"]
    assert rec.run_pass().outcomes["alpha"].result == "applied"
    share = status_file(root)["shares"]["alpha"]
    assert (share["state"], share["failures"], share["retry_at"], share["error"]) == ("served", 0, None, None)
    assert rec.next_wakeup() is None
    # A new failure starts again from the smallest delay.
    declare(root, "alpha", comment="changed")
    mode.fail_apply["alpha"] = "broken again"
    rec.run_pass()
    share = status_file(root)["shares"]["alpha"]
    assert share["failures"] == 1
    assert share["retry_at"] - clock.now == pytest.approx(2.0)


def test_force_ignores_the_backoff(root: Path, clock: FakeClock) -> None:
    mode = FileMode()
    mode.fail_apply["alpha"] = "broken"
    rec = reconciler(root, PluginHost({"files": mode}), clock)
    declare(root, "alpha")
    rec.run_pass()
    del mode.fail_apply["alpha"]
    assert rec.run_pass().outcomes["alpha"].result == "waiting"
    assert rec.run_pass(force=True).outcomes["alpha"].result == "applied"


def test_backoff_is_forgotten_when_the_share_goes_away(root: Path, clock: FakeClock) -> None:
    mode = FileMode()
    mode.fail_apply["alpha"] = "broken"
    rec = reconciler(root, PluginHost({"files": mode}), clock)
    file = declare(root, "alpha")
    rec.run_pass()
    file.unlink()
    report = rec.run_pass()
    assert "alpha" not in report.outcomes or report.outcomes["alpha"].result != "failed"
    assert rec.next_wakeup() is None
    assert status_file(root)["shares"] == {}


# ---- last good -----------------------------------------------------------------------------------


def test_a_broken_file_keeps_its_share_on_the_last_good_spec(root: Path, clock: FakeClock) -> None:
    mode = FileMode()
    rec = reconciler(root, PluginHost({"files": mode}), clock)
    file = declare(root, "alpha", comment="good")
    declare(root, "beta")
    rec.run_pass()
    good = served(root)["alpha"]
    file.write_text('path = "/srv/alpha"\nmode = "files"\ncomment = "unterminated\n')
    declare(root, "beta", comment="edited")  # other shares are reconciled as usual
    report = rec.run_pass()
    assert mode.called("remove") == []
    assert "alpha" not in report.changed and "beta" in report.changed
    assert served(root)["alpha"] == good
    assert "edited" in served(root)["beta"]
    status = status_file(root)
    info = status["files"]["alpha.toml"]
    assert info["valid"] is False and info["serving"] == "last-good"
    assert info["problems"][0]["line"] == 3
    assert status["shares"]["alpha"]["state"] == "served"

    # A restart (new process: new reconciler, new plugin) still serves the last good spec.
    mode2 = FileMode()
    rec2 = reconciler(root, PluginHost({"files": mode2}), clock)
    report = rec2.run_pass()
    assert mode2.called("remove") == [] and report.changed == []
    assert served(root)["alpha"] == good
    assert status_file(root)["files"]["alpha.toml"]["serving"] == "last-good"

    # An invalid value (not only bad syntax) is treated the same way.
    file.write_text('path = "/srv/alpha"\nmode = "files"\ncomment = "good"\nread_only = "yes"\n')
    rec2.run_pass()
    assert served(root)["alpha"] == good
    info = status_file(root)["files"]["alpha.toml"]
    assert info["serving"] == "last-good"
    assert (info["problems"][0]["key"], info["problems"][0]["line"]) == ("read_only", 4)

    # Fixed with a change: the new spec goes live and becomes the last good one.
    declare(root, "alpha", comment="better")
    rec2.run_pass()
    assert "better" in served(root)["alpha"]
    assert rec2.state.lastgood["alpha.toml"].comment == "better"

    # Removing the file removes the share (and forgets its last good spec).
    file.unlink()
    report = rec2.run_pass()
    assert report.outcomes["alpha"].result == "removed"
    assert "alpha" not in served(root)
    fresh = StateStore(root / "var/lib/smbgw")
    fresh.load()
    assert "alpha.toml" not in fresh.lastgood and "alpha" not in fresh.applied


def test_a_file_that_was_never_valid_declares_nothing(root: Path, clock: FakeClock) -> None:
    mode = FileMode()
    rec = reconciler(root, PluginHost({"files": mode}), clock)
    (root / "etc/smbgw/shares.d/never.toml").write_text('path = "relative/path"\nmode = "files"\n')
    report = rec.run_pass()
    assert report.outcomes == {}
    status = status_file(root)
    assert status["files"]["never.toml"]["valid"] is False
    assert status["files"]["never.toml"]["serving"] == "none"
    assert status["shares"] == {}


# ---- plan (dry run) -----------------------------------------------------------------------------


def prepare_changes(root: Path, clock: FakeClock) -> None:
    """Shares in every situation: unchanged, to update, to add, to remove, drifted."""
    rec = reconciler(root, PluginHost({"files": FileMode()}), clock)
    for name in ("keep", "edit", "gone", "drift"):
        declare(root, name, comment="v1")
    rec.run_pass()
    rec.state.close()
    declare(root, "edit", comment="v2")
    declare(root, "new")
    (root / "etc/smbgw/shares.d/gone.toml").unlink()
    (root / "served/drift.conf").write_text("hand-edited\n")
    (root / "etc/smbgw/shares.d/broken.toml").write_text("path = \n")


def test_dry_run_has_no_effects(root: Path, clock: FakeClock) -> None:
    prepare_changes(root, clock)
    mode = FileMode()
    state_dir = root / "var/lib/smbgw"
    before = snapshot_tree(root, exclude=[state_dir])
    rec = reconciler(root, PluginHost({"files": mode}), clock)
    state_before = (dict(rec.state.applied), dict(rec.state.lastgood))
    report = rec.run_pass(dry_run=True)
    assert report.dry_run
    assert {k for k, o in report.outcomes.items() if o.steps} == {"edit", "new", "gone", "drift"}
    assert all(o.result == "planned" for o in report.outcomes.values() if o.steps)
    assert [c[0] for c in mode.calls] == ["plan"] * len(mode.calls)
    assert all(c[4] is True for c in mode.calls), "plugins are told effects are off"
    after = snapshot_tree(root, exclude=[state_dir])
    assert before == after, describe_difference(before, after)
    assert (rec.state.applied, rec.state.lastgood) == state_before
    rec.state.close()
    fresh = StateStore(state_dir)
    fresh.load()
    assert (fresh.applied, fresh.lastgood) == state_before, "nothing was committed to the state store"
    assert rec.passes == 0


def test_dry_run_plans_exactly_what_the_real_pass_does(root: Path, clock: FakeClock) -> None:
    prepare_changes(root, clock)
    mode = FileMode()
    rec = reconciler(root, PluginHost({"files": mode}), clock)
    planned = rec.run_pass(dry_run=True)
    plan_calls = [c[:4] for c in mode.called("plan")]
    mode.calls.clear()
    real = rec.run_pass()
    assert [c[:4] for c in mode.called("plan")] == plan_calls, "the same hook calls with the same inputs"
    assert {k: o.steps for k, o in planned.outcomes.items()} == {k: o.steps for k, o in real.outcomes.items()}
    assert real.changed == ["drift", "edit", "gone", "new"]
    assert [c[1] for c in mode.called("apply")] == ["drift", "edit", "new"]
    assert [c[1] for c in mode.called("remove")] == ["gone"]
    # After the pass, a plan finds nothing left to do.
    assert not any(o.steps for o in rec.run_pass(dry_run=True).outcomes.values())


def test_native_dry_run_writes_nothing_and_matches_the_pass(native_box: Any, clock: FakeClock) -> None:
    box = native_box
    rec = reconciler(box.root, PluginHost.load(), clock, node="sandbox")
    declare(box.root, "finance", mode="native", comment="Finance")
    samba_dir = box.paths.samba_dir
    smb_conf = box.smb_conf.read_text()
    planned = rec.run_pass(dry_run=True)
    steps = planned.outcomes["finance"].steps
    assert any(s.startswith("create directory /srv/finance") for s in steps)
    assert any(s.startswith("add [finance]") for s in steps)
    assert not samba_dir.exists() or not any(samba_dir.iterdir())
    assert not (box.root / "srv/finance").exists()
    assert box.smb_conf.read_text() == smb_conf
    assert not box.paths.status_file.exists()
    real = rec.run_pass()
    assert real.outcomes["finance"].steps == steps
    assert real.ok, real.errors
    assert "finance" in loaded_shares(box.smb_conf)


# ---- the state store ------------------------------------------------------------------------------

WRITER = """
import sys
from smbgw_agent.model.shares import ShareSpec
from smbgw_agent.reconcile.state import StateStore
store = StateStore(__import__("pathlib").Path(sys.argv[1]))
store.load()
generation = 0
while True:
    generation += 1
    for i in range(40):
        store.set_applied(ShareSpec(name=f"s{i}", file=f"s{i}.toml", path=f"/srv/s{i}", comment=str(generation)))
        store.set_lastgood(ShareSpec(name=f"s{i}", file=f"s{i}.toml", path=f"/srv/s{i}", comment=str(generation)))
    store.commit()
    if generation == 1:
        print("ready", flush=True)
"""


def test_state_survives_sigkill_mid_write_with_whole_passes_only(tmp_path: Path) -> None:
    """Each pass's records are committed together: a kill leaves one generation, never a mix."""
    state_dir = tmp_path / "state"
    rng = random.Random(20261122)
    generations = set()
    for _round in range(12):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(state_dir)], stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0, 0.15))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        store = StateStore(state_dir)
        assert store.load() == []
        comments = {s.comment for s in store.applied.values()} | {s.comment for s in store.lastgood.values()}
        assert len(store.applied) == 40 and len(store.lastgood) == 40
        assert len(comments) == 1, f"a mix of passes survived the kill: {sorted(comments)[:5]}"
        generations |= comments
        store.close()
    assert not [p for p in state_dir.iterdir() if p.name.endswith(".tmp")]


def test_an_unreadable_state_store_is_set_aside_and_the_agent_converges(root: Path, clock: FakeClock) -> None:
    mode = FileMode()
    rec = reconciler(root, PluginHost({"files": mode}), clock)
    declare(root, "alpha")
    rec.run_pass()
    rec.state.close()
    database = next((root / "var/lib/smbgw").glob("*.sqlite"))
    database.write_bytes(b"SQLite format 3\x00" + b"\xff" * 100)  # a torn, garbage file
    for extra in database.parent.glob("*.sqlite-*"):
        extra.unlink()
    rec2 = reconciler(root, PluginHost({"files": FileMode()}), clock)
    assert rec2.state.applied == {}
    report = rec2.run_pass()
    assert report.ok
    assert status_file(root)["shares"]["alpha"]["state"] == "served"


def test_status_json_is_replaced_atomically(root: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = reconciler(root, PluginHost({"files": FileMode()}), clock)
    declare(root, "alpha")
    rec.run_pass()
    good = (root / "run/smbgw/status.json").read_bytes()

    def crash(*_args: object) -> None:
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    declare(root, "beta")
    report = rec.run_pass()  # a status file that cannot be written never fails the pass
    monkeypatch.undo()
    assert report.outcomes["beta"].result == "failed"  # its commit used os.replace too
    assert (root / "run/smbgw/status.json").read_bytes() == good
    assert [p.name for p in (root / "run/smbgw").iterdir()] == ["status.json"]
    assert rec.snapshot is not None and "status" in rec.snapshot["degraded"]
    rec.run_pass(force=True)
    assert status_file(root)["shares"]["beta"]["state"] == "served"
    assert status_file(root)["degraded"] == {}


# ---- status.json ---------------------------------------------------------------------------------


def test_status_json_content(root: Path, clock: FakeClock) -> None:
    mode = FileMode()
    mode.fail_apply["bad"] = "exploded"
    rec = reconciler(root, PluginHost({"files": mode}), clock)
    declare(root, "good", comment="Good")
    declare(root, "bad")
    declare(root, "remote", body='node = "elsewhere"\n')
    (root / "etc/smbgw/shares.d/typo.toml").write_text('path = "/srv/typo"\nmode = "files"\nfoo = 1\n')
    started = clock.now
    rec.run_pass()
    status = status_file(root)
    assert status == json.loads(json.dumps(rec.status()))
    assert set(status) >= {
        "version", "node", "root", "updated", "config", "shares_dir", "pass", "passes",
        "pass_errors", "last_success", "shares", "files", "other_node", "services", "plugins",
    }
    assert status["node"] == "n1"
    assert status["root"] == str(root.resolve())
    assert status["updated"] == started
    assert status["shares_dir"] == str(root.resolve() / "etc/smbgw/shares.d")
    assert status["config"] == {"file": None, "warnings": [], "problems": []}
    assert status["pass"]["started"] == started
    assert status["pass"]["ok"] is False
    assert status["pass"]["changed"] == ["good"]
    assert status["pass"]["failed"] == ["bad"]
    assert status["passes"] == 1 and status["pass_errors"] == 1
    assert status["last_success"] is None
    good = status["shares"]["good"]
    assert good == {
        "file": "good.toml", "mode": "files", "path": "/srv/good", "state": "served",
        "serving": "declared", "digest": rec.state.applied["good"].digest(), "error": None,
        "failures": 0, "retry_at": None,
    }
    assert set(status["shares"]) == {"good", "bad"}
    assert status["other_node"] == {"remote": "elsewhere"}
    assert status["files"]["remote.toml"]["serving"] == "other-node"
    typo = status["files"]["typo.toml"]
    assert typo["valid"] is False and typo["share"] is None
    assert typo["problems"][0]["key"] == "foo" and typo["problems"][0]["line"] == 3
    assert status["files"]["good.toml"] == {
        "valid": True, "share": "good", "serving": "current", "problems": [], "warnings": [],
    }
    assert status["plugins"]["files"] == {"files": ["good.conf"]}
    # A clean pass later: last_success and counters move with the injected clock.
    del mode.fail_apply["bad"]
    clock.advance(10)
    rec.run_pass()
    status = status_file(root)
    assert status["last_success"] == clock.now and status["updated"] == clock.now
    assert status["passes"] == 2 and status["pass_errors"] == 1
    assert status["pass"]["ok"] is True
    assert {n: s["state"] for n, s in status["shares"].items()} == {"good": "served", "bad": "served"}


def test_status_names_a_share_the_same_way_everywhere(root: Path, clock: FakeClock) -> None:
    mode = FileMode()
    mode.fail_apply["Broken"] = "exploded"
    rec = reconciler(root, PluginHost({"files": mode}), clock)
    (root / "etc/smbgw/shares.d/Finance.toml").write_text('path = "/srv/finance"\nmode = "files"\n')
    (root / "etc/smbgw/shares.d/Broken.toml").write_text('path = "/srv/broken"\nmode = "files"\n')
    rec.run_pass()
    status = status_file(root)
    assert set(status["shares"]) == {"Finance", "Broken"}
    assert status["pass"]["changed"] == ["Finance"]
    assert status["pass"]["failed"] == ["Broken"]


# ---- real Samba for native mode -------------------------------------------------------------------


def loaded_shares(smb_conf: Path) -> set[str]:
    """Section names smbd would load from smb.conf, as testparm reports them."""
    result = subprocess.run(
        ["testparm", "-s", "--suppress-prompt", str(smb_conf)], capture_output=True, text=True, timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return {line.strip()[1:-1] for line in result.stdout.splitlines() if line.startswith("[")} - {"global"}


@pytest.fixture
def native_box(tmp_path: Path) -> Iterator[Any]:
    tools = ("smbd", "testparm", "smbcontrol", "smbpasswd")
    if any(shutil.which(t) is None for t in tools) or os.geteuid() != 0:
        pytest.skip("native mode needs Samba's tools and root")
    from devtools.sandbox import Sandbox, free_port

    box = Sandbox(tmp_path / "root", free_port())
    box.prepare()
    box.start_smbd()
    try:
        yield box
    finally:
        box.stop_smbd()


def test_native_caches_follow_the_shares_that_exist(native_box: Any, clock: FakeClock) -> None:
    """Renderings and file reads of deleted shares are forgotten: memory does not grow with
    every share name ever seen."""
    plugins = PluginHost({"mode_native": NATIVE_TARGET})
    native = plugins.manager.get_plugin("mode_native")
    runner = Runner()
    rec = Reconciler(
        native_box.paths, config_for("sandbox"), plugins, ServiceControl(runner, use_systemd=False), runner,
        clock=clock, monotonic=clock,
    )
    for round_ in range(3):
        names = [f"gen{round_}_{i}" for i in range(40)]
        for name in names:
            (native_box.shares_dir / f"{name}.toml").write_text(f'path = "/srv/smb/{name}"\n')
        assert rec.run_pass().ok
        assert len(native._rendered) == 40
        for name in names:
            (native_box.shares_dir / f"{name}.toml").unlink()
        assert rec.run_pass().ok
        assert native._rendered == {}
        assert len(native._live) <= 3  # globals.conf, shares.conf, smb.conf


def _native_reconciler(box: Any, clock: FakeClock) -> Reconciler:
    runner = Runner()
    return Reconciler(box.paths, config_for("sandbox"), PluginHost({"mode_native": NATIVE_TARGET}),
                      ServiceControl(runner, use_systemd=False), runner, clock=clock, monotonic=clock)


def test_native_a_file_event_pass_lists_no_live_directory(
    native_box: Any, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The live fragments are known between full passes (native mode wrote and removed
    them itself): a one-change pass does not list /etc/samba/smbgw, whose 10,000 names
    were a fifth of such a pass. A full pass lists it once."""
    rec = _native_reconciler(native_box, clock)
    for name in ("a", "b"):
        declare(native_box.root, name, mode="native")
    assert rec.run_pass().ok
    listed: list[str] = []
    real = os.listdir

    def counting(path: Any = ".") -> list[str]:
        listed.append(os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "listdir", counting)
    live = str(native_box.paths.samba_dir)
    declare(native_box.root, "c", mode="native")
    (native_box.shares_dir / "a.toml").unlink()
    assert rec.run_pass(full=False, changed_files={"c.toml", "a.toml"}).ok
    assert listed.count(live) == 0
    assert loaded_shares(native_box.smb_conf) == {"b", "c"}
    assert not (native_box.paths.samba_dir / "share-a.conf").exists()
    assert rec.run_pass().ok
    assert listed.count(live) == 1


def test_native_fragments_changed_by_hand_are_settled_by_the_next_full_pass(
    native_box: Any, clock: FakeClock
) -> None:
    """Between full passes native mode trusts what it wrote; a fragment deleted by hand,
    or a generated one nobody declares (restored from a backup), is put right by the next
    full pass (periodic, or `smbgwctl reconcile`), and smbd never loads a broken list."""
    rec = _native_reconciler(native_box, clock)
    for name in ("a", "b"):
        declare(native_box.root, name, mode="native")
    assert rec.run_pass().ok
    live = native_box.paths.samba_dir
    stray = (live / "share-b.conf").read_text().replace("[b]", "[stray]")
    (live / "share-stray.conf").write_text(stray)
    (live / "share-a.conf").unlink()
    declare(native_box.root, "c", mode="native")
    assert rec.run_pass(full=False, changed_files={"c.toml"}).ok
    assert loaded_shares(native_box.smb_conf) == {"b", "c"}, "a missing include is skipped, the stray is unlisted"
    assert rec.run_pass().ok
    assert (live / "share-a.conf").exists() and not (live / "share-stray.conf").exists()
    assert loaded_shares(native_box.smb_conf) == {"a", "b", "c"}


def test_native_validation_judges_groups_and_rejects_only_the_culprits(
    native_box: Any, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Changed shares are testparm'd in groups (testparm's loading is quadratic in its
    sections); a rejected group is bisected, and only its culprits fail."""
    from smbgw_plugins import mode_native

    monkeypatch.setattr(mode_native, "VALIDATE_GROUP", 3)
    candidates: list[str] = []
    real = mode_native.run_testparm

    def counted(runner: Runner, smb_conf: Path, baseline: Sequence[str] = ()) -> Any:
        candidates.append(smb_conf.name)
        return real(runner, smb_conf, baseline)

    monkeypatch.setattr(mode_native, "run_testparm", counted)
    runner = Runner()
    config = AgentConfig(node="sandbox", allowed_roots=("/srv",), allow_custom_options=True)
    rec = Reconciler(native_box.paths, config, PluginHost({"mode_native": NATIVE_TARGET}),
                     ServiceControl(runner, use_systemd=False), runner, clock=clock, monotonic=clock)
    names = [f"g{i}" for i in range(8)]  # groups: g0-g2, g3-g5, g6-g7
    for name in names:
        bad = '[options]\n"no such parameter" = "x"\n' if name in ("g1", "g7") else ""
        (native_box.shares_dir / f"{name}.toml").write_text(f'path = "/srv/smb/{name}"\n{bad}')
    report = rec.run_pass()
    assert {n for n, o in report.outcomes.items() if o.result == "failed"} == {"g1", "g7"}
    assert "testparm rejected it" in (report.outcomes["g1"].error or "")
    assert loaded_shares(native_box.smb_conf) == set(names) - {"g1", "g7"}
    whole = [c for c in candidates if c.startswith("all")]
    assert whole[0] == "all0-smb.conf"  # judged alone; the others two at a time, in any order
    assert sorted(whole) == ["all0-smb.conf", "all1-smb.conf", "all2-smb.conf"]
    bisected = [c for c in candidates if c.startswith("part")]
    assert 0 < len(bisected) <= 8, "only the two rejected groups are bisected"


def _eight_shares(box: Any) -> list[str]:
    names = [f"g{i}" for i in range(8)]  # in groups of 3: g0-g2, g3-g5, g6-g7
    for name in names:
        (box.shares_dir / f"{name}.toml").write_text(f'path = "/srv/smb/{name}"\n')
    return names


def test_native_a_group_is_judged_while_the_next_is_staged(
    native_box: Any, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """testparm runs on another thread as the next group is written: staging the second
    group waits here until the first group's testparm has started (it would wait forever
    if every group were written before any was judged)."""
    from smbgw_plugins import mode_native

    monkeypatch.setattr(mode_native, "VALIDATE_GROUP", 3)
    judging = threading.Event()
    real_testparm, real_write = mode_native.run_testparm, mode_native.write_files
    writes: list[int] = []

    def judged(runner: Runner, smb_conf: Path, baseline: Sequence[str] = ()) -> Any:
        judging.set()
        return real_testparm(runner, smb_conf, baseline)

    def write(files: dict[Path, str], fsync: bool) -> None:
        if writes:
            assert judging.wait(20), "the first group was not judged while the next was staged"
        writes.append(len(files))
        real_write(files, fsync)

    monkeypatch.setattr(mode_native, "run_testparm", judged)
    monkeypatch.setattr(mode_native, "write_files", write)
    names = _eight_shares(native_box)
    assert _native_reconciler(native_box, clock).run_pass().ok
    assert writes == [3, 3, 2]
    assert loaded_shares(native_box.smb_conf) == set(names)


def test_native_the_first_group_is_judged_alone_then_two_at_a_time(
    native_box: Any, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """testparm is single-threaded: after the first group's verdict (which tells whether
    testparm can judge at all), two groups are judged at once. The barrier lets the
    second and third groups through only together: one at a time, it would break."""
    from smbgw_plugins import mode_native

    monkeypatch.setattr(mode_native, "VALIDATE_GROUP", 3)
    monkeypatch.setattr(mode_native.os, "cpu_count", lambda: 2)
    real_testparm = mode_native.run_testparm
    together = threading.Barrier(2, timeout=20)
    lock = threading.Lock()
    running: list[str] = []
    alongside_first: list[str] = []

    def judged(runner: Runner, smb_conf: Path, baseline: Sequence[str] = ()) -> Any:
        with lock:
            if "all0-smb.conf" in running:
                alongside_first.append(smb_conf.name)
            running.append(smb_conf.name)
        try:
            if smb_conf.name == "all0-smb.conf":
                time.sleep(0.2)  # time for a second run to start, were it allowed to
            elif smb_conf.name in ("all1-smb.conf", "all2-smb.conf"):
                together.wait()
            return real_testparm(runner, smb_conf, baseline)
        finally:
            with lock:
                running.remove(smb_conf.name)

    monkeypatch.setattr(mode_native, "run_testparm", judged)
    names = _eight_shares(native_box)
    assert _native_reconciler(native_box, clock).run_pass().ok
    assert alongside_first == []
    assert loaded_shares(native_box.smb_conf) == set(names)


def test_native_no_group_is_judged_after_testparm_could_not_judge_one(
    native_box: Any, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A testparm that hangs or is missing fails its group and every later one unjudged:
    the groups queued behind it are not run (each would wait out the same timeout)."""
    from smbgw_plugins import mode_native

    from smbgw_agent.effects.samba import TestparmResult

    monkeypatch.setattr(mode_native, "VALIDATE_GROUP", 3)
    candidates: list[str] = []

    def hanging(runner: Runner, smb_conf: Path, baseline: Sequence[str] = ()) -> TestparmResult:
        candidates.append(smb_conf.name)
        return TestparmResult(False, ("testparm timed out after 120 s",), unavailable=True)

    monkeypatch.setattr(mode_native, "run_testparm", hanging)
    names = _eight_shares(native_box)
    report = _native_reconciler(native_box, clock).run_pass()
    assert candidates == ["all0-smb.conf"]
    assert {n for n, o in report.outcomes.items() if o.result == "failed"} == set(names)
    assert all("could not validate" in (report.outcomes[n].error or "") for n in names)
    assert loaded_shares(native_box.smb_conf) == set()


def test_native_globals_testparm_rejects_with_no_share_written_fail_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect fixed: with no share written, globals testparm rejected were bisected
    as an empty group, forever (a RecursionError instead of the reason)."""
    from smbgw_plugins import mode_native

    from smbgw_agent.effects.samba import TestparmResult

    layout = mode_native.Layout(tmp_path / "smbgw", tmp_path / "smb.conf")
    layout.staging.mkdir(parents=True)
    candidates: list[str] = []

    def refuse(runner: Runner, smb_conf: Path, baseline: Sequence[str] = ()) -> TestparmResult:
        candidates.append(smb_conf.name)
        return TestparmResult(False, ('Ignoring unknown parameter "bogus"',), 1, 'Ignoring unknown parameter "bogus"')

    monkeypatch.setattr(mode_native, "run_testparm", refuse)
    context: Any = type("Context", (), {"runner": Runner()})()
    with pytest.raises(RuntimeError, match="even without the changed shares"):
        mode_native.NativeModePlugin()._validate(context, layout, [("bogus", "1")], mode_native.Staged())
    assert candidates == ["all0-smb.conf"]


def _readings() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "reading-smbstatus" and t.is_alive()]


def test_a_configuration_reload_retires_the_old_plugins_and_hands_over_a_pending_reload(
    native_box: Any, clock: FakeClock
) -> None:
    """Defects fixed: SIGHUP left the old native instance's smbstatus thread running (one
    more per reload), and a reload of smbd still owed by the old instance was forgotten."""
    before = len(_readings())
    runner = Runner()
    old_host = PluginHost({"mode_native": NATIVE_TARGET})
    rec = Reconciler(native_box.paths, config_for("sandbox"), old_host, ServiceControl(runner, use_systemd=False),
                     runner, clock=clock, monotonic=clock)
    rec.start_plugins()
    declare(native_box.root, "alpha", mode="native")
    assert rec.run_pass().ok
    assert len(_readings()) == before + 1
    # A reload the old instance could not do yet (smbd refused it, say) is plugin state.
    rec.state.plugin_state("mode_native").set("reload_pending", True)
    for _ in range(3):  # three SIGHUPs
        rec.replace_config(config_for("sandbox"), PluginHost({"mode_native": NATIVE_TARGET}))
    deadline = time.monotonic() + 20
    while len(_readings()) > before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_readings()) == before + 1, "exactly one smbstatus reading: the current instance's"
    new_native = rec.plugins.manager.get_plugin("mode_native")
    assert new_native is not old_host.manager.get_plugin("mode_native")
    report = rec.run_pass()
    assert [c.detail for c in report.changes if c.resource == "samba:host"] == ["reload smbd (a reload is still owed)"]
    assert new_native.last_reload == "direct"
    assert not rec.state.plugin_state("mode_native").get("reload_pending")
    rec.stop_plugins()


# ---- node resources and modes as owners ------------------------------------------------------


class Addresses:
    """A node-resource plugin: one resource per address in agent.toml-like settings,
    "configured" by writing <root>/addresses/<addr>; it plans against those files."""

    def __init__(self, wanted: list[str]) -> None:
        self.wanted = wanted
        self.fail: set[str] = set()
        self.broken_declaration: str | None = None
        self.unplannable: dict[str, str] = {}  # resource id -> why planning raises
        self.calls: list[tuple[str, str]] = []

    @staticmethod
    def path(ctx: PassContext, resource_id: str) -> Path:
        return ctx.paths.root / "addresses" / resource_id.removeprefix("vip:")

    @hookimpl
    def smbgw_node_resources(self, ctx: PassContext) -> Sequence[NodeResource]:
        if self.broken_declaration:
            raise RuntimeError(self.broken_declaration)
        return [NodeResource(f"vip:{a}", {"address": a}) for a in self.wanted]

    @hookimpl
    def smbgw_plan_resource(
        self, ctx: PassContext, resource_id: str, desired: NodeResource | None, applied: NodeResource | None
    ) -> Sequence[Change]:
        if resource_id in self.unplannable:
            raise OSError(self.unplannable[resource_id])
        present = self.path(ctx, resource_id).exists()
        if desired is not None and not present:
            return [Change(resource_id, CREATE, f"add {resource_id}")]
        if desired is None and present:
            return [Change(resource_id, DELETE, f"remove {resource_id}")]
        return []

    @hookimpl
    def smbgw_apply_resource(self, ctx: PassContext, resource: NodeResource, changes: Sequence[Change]) -> None:
        self.calls.append(("apply", resource.id))
        if resource.id in self.fail:
            raise OSError(f"netlink refused {resource.id}")
        ctx.plugin_scratch("addresses").setdefault("add", []).append(resource.id)

    @hookimpl
    def smbgw_remove_resource(
        self, ctx: PassContext, resource_id: str, applied: NodeResource | None, changes: Sequence[Change]
    ) -> None:
        self.calls.append(("remove", resource_id))
        ctx.plugin_scratch("addresses").setdefault("remove", []).append(resource_id)

    @hookimpl
    def smbgw_rollback_resource(self, ctx: PassContext, resource_id: str, applied: NodeResource | None) -> None:
        self.calls.append(("rollback", resource_id))

    @hookimpl
    def smbgw_commit(self, ctx: PassContext, resources: Sequence[str]) -> Mapping[str, str]:
        scratch = ctx.plugin_scratch("addresses")
        for resource_id in scratch.get("add", []):
            self.path(ctx, resource_id).parent.mkdir(exist_ok=True)
            self.path(ctx, resource_id).write_text("up\n")
        for resource_id in scratch.get("remove", []):
            self.path(ctx, resource_id).unlink(missing_ok=True)
        return {}


def test_node_resources_are_isolated_backed_off_and_reported(root: Path, clock: FakeClock) -> None:
    vips = Addresses(["192.0.2.10", "192.0.2.11"])
    vips.fail = {"vip:192.0.2.11"}
    mode = FileMode()
    rec = reconciler(root, PluginHost({"files": mode, "vips": vips}), clock)
    declare(root, "alpha")
    report = rec.run_pass()
    assert report.resources["vip:192.0.2.10"].result == "applied"
    assert report.resources["vip:192.0.2.11"].result == "failed"
    assert report.outcomes["alpha"].result == "applied", "a failing node resource fails no share"
    assert report.failed_resources == ["vip:192.0.2.11"] and not report.ok
    assert ("rollback", "vip:192.0.2.11") in vips.calls
    status = status_file(root)["resources"]
    assert status["vip:192.0.2.10"]["state"] == "applied" and status["vip:192.0.2.10"]["plugin"] == "vips"
    assert status["vip:192.0.2.11"]["state"] == "failed"
    assert "netlink refused" in status["vip:192.0.2.11"]["error"]
    assert status["vip:192.0.2.11"]["retry_at"] == pytest.approx(clock.now + 2.0)
    assert rec.next_wakeup() == pytest.approx(clock.now + 2.0)
    vips.fail.clear()
    clock.advance(1.0)
    assert rec.run_pass(full=False).resources["vip:192.0.2.11"].result == "waiting"
    clock.advance(1.0)
    assert rec.run_pass(full=False).resources["vip:192.0.2.11"].result == "applied"
    assert sorted(p.name for p in (root / "addresses").iterdir()) == ["192.0.2.10", "192.0.2.11"]

    # A plugin that cannot say what it wants keeps what it has (its last good version).
    vips.broken_declaration = "agent.toml [vip] is being edited"
    report = rec.run_pass()
    assert any("vips: cannot derive its node resources" in e for e in report.errors)
    assert not [c for c in vips.calls if c[0] == "remove"]
    assert set(rec.state.resources) == {"vip:192.0.2.10", "vip:192.0.2.11"}

    # No longer wanted: removed, and forgotten by the state.
    vips.broken_declaration = None
    vips.wanted = ["192.0.2.10"]
    report = rec.run_pass(full=False)
    assert report.resources["vip:192.0.2.11"].result == "removed"
    assert set(rec.state.resources) == {"vip:192.0.2.10"}
    # Drift (the address went away by hand) is repaired by the full pass.
    (root / "addresses/192.0.2.10").unlink()
    assert rec.run_pass(full=False).resources == {}
    assert rec.run_pass().resources["vip:192.0.2.10"].result == "applied"
    fresh = StateStore(root / "var/lib/smbgw")
    fresh.load()
    assert set(fresh.resources) == {"vip:192.0.2.10"} and fresh.resources["vip:192.0.2.10"].plugin == "vips"



def test_a_resource_that_cannot_be_planned_is_one_failure_per_retry_not_per_pass(root: Path, clock: FakeClock) -> None:
    """An address whose interface was deleted fails in planning, and every pass plans the
    failing resources; a plugin's watch starts a pass every half second meanwhile. Each of
    those passes used to count as a new failure, so the wait doubled up to its 5-minute cap
    within seconds and the address came back minutes after its interface did."""
    vips = Addresses(["192.0.2.10"])
    rec = reconciler(root, PluginHost({"files": FileMode(), "vips": vips}), clock)
    assert rec.run_pass().resources["vip:192.0.2.10"].result == "applied"
    vips.unplannable["vip:192.0.2.10"] = "interface veth-a does not exist"
    assert rec.run_pass().resources["vip:192.0.2.10"].result == "failed", "found by a full pass"
    for _ in range(3):
        clock.advance(0.5)
        outcome = rec.run_pass(full=False).resources["vip:192.0.2.10"]
        assert (outcome.result, outcome.error) == ("waiting", "planning failed: vips: interface veth-a does not exist")
    resource = status_file(root)["resources"]["vip:192.0.2.10"]
    assert resource["failures"] == 1 and resource["state"] == "failed"
    clock.advance(0.5)
    assert rec.run_pass(full=False).resources["vip:192.0.2.10"].result == "failed", "retry due: tried again"
    assert status_file(root)["resources"]["vip:192.0.2.10"]["failures"] == 2
    del vips.unplannable["vip:192.0.2.10"]
    clock.advance(4.0)
    assert rec.run_pass(full=False).resources["vip:192.0.2.10"].result in ("applied", "unchanged")
    assert "vip:192.0.2.10" not in rec.resource_backoff.attempts, "planned clean with nothing to do: recovered"
    assert status_file(root)["resources"]["vip:192.0.2.10"]["state"] == "applied"

class OtherMode(FileMode):
    """A second mode, "other", with its own folder: for moving a share between modes."""

    @staticmethod
    def target(ctx: PassContext, name: str) -> Path:
        return ctx.paths.root / "other" / f"{name.casefold()}.conf"

    @hookimpl
    def smbgw_modes(self) -> Sequence[str]:
        return ["other"]

    @hookimpl
    def smbgw_plan_share(
        self, ctx: PassContext, name: str, desired: ShareSpec | None, applied: ShareSpec | None
    ) -> Sequence[Change]:
        self.calls.append(("plan", name, desired, applied, ctx.dry_run))
        live = self.target(ctx, name).exists()
        if desired is not None and desired.mode == "other":
            return [] if live else [Change(share_resource(name), CREATE, "write other")]
        return [Change(share_resource(name), DELETE, "delete other")] if live else []

    @hookimpl
    def smbgw_apply_share(self, ctx: PassContext, name: str, desired: ShareSpec, changes: Sequence[Change]) -> None:
        self.calls.append(("apply", name, ctx.dry_run))
        self.staged(ctx)[name.casefold()] = self.render(desired)

    @staticmethod
    def staged(ctx: PassContext) -> dict[str, str | None]:
        space: dict[str, str | None] = ctx.plugin_scratch("other").setdefault("staged", {})
        return space


def test_a_share_moving_between_modes_is_removed_by_the_old_and_applied_by_the_new(
    root: Path, clock: FakeClock
) -> None:
    files, other = FileMode(), OtherMode()
    rec = reconciler(root, PluginHost({"files": files, "other": other}), clock)
    declare(root, "alpha", mode="files")
    rec.run_pass()
    assert (root / "served/alpha.conf").exists()
    declare(root, "alpha", mode="other")
    files.calls.clear()
    report = rec.run_pass(full=False)
    assert report.outcomes["alpha"].result == "applied"
    assert sorted((c.plugin, c.action) for c in report.outcomes["alpha"].changes) == [
        ("files", "delete"), ("other", "create"),
    ]
    assert [c[0] for c in files.calls if c[0] != "plan"] == ["remove", "commit"]
    assert not (root / "served/alpha.conf").exists() and (root / "other/alpha.conf").exists()


class ClusterSmbd:
    """A plugin that owns smbd (as CTDB does): the native mode must reload through it."""

    def __init__(self) -> None:
        self.owner = "ctdbish"
        self.reloads: list[Path] = []
        self.checks = 0

    @hookimpl
    def smbgw_smbd_control(self, config: AgentConfig) -> Any:
        return self

    def ensure_running(self, ctx: PassContext) -> Any:
        from smbgw_agent.effects.services import ServiceReport

        self.checks += 1
        return ServiceReport(ctx.config.smbd_unit, "ctdbish", True, "managed by the cluster")

    def is_running(self, ctx: PassContext) -> bool | None:
        return True

    def reload(self, ctx: PassContext, smb_conf: Path) -> str:
        self.reloads.append(smb_conf)
        return "ctdbish"


def test_a_plugin_that_takes_over_smbd_is_used_for_reloads(native_box: Any, clock: FakeClock) -> None:
    owner = ClusterSmbd()
    rec = reconciler(native_box.root, PluginHost({"mode_native": NATIVE_TARGET, "ctdbish": owner}), clock,
                     node="sandbox")
    assert rec.smbd is owner
    declare(native_box.root, "alpha", mode="native")
    assert rec.run_pass().ok
    assert owner.reloads == [native_box.smb_conf] and owner.checks >= 1
    assert rec.plugins.manager.get_plugin("mode_native").last_reload == "ctdbish"


# ---- status.json reuses unchanged entries ----------------------------------------------------


def uncached_status_text(rec: Reconciler) -> str:
    """What status.json would say if every entry were built and encoded afresh."""
    fresh = Reconciler.__new__(Reconciler)
    fresh.__dict__.update(rec.__dict__)
    fresh._share_entries, fresh._file_entry_cache = {}, {}
    return json.dumps(fresh.status(), separators=(",", ":"))


def test_status_json_reusing_unchanged_entries_says_what_a_fresh_one_would(root: Path, clock: FakeClock) -> None:
    """Entries of unchanged shares and files are handed out again, and their text too
    (a 10,000-share pass spent a third of its time re-encoding them): after every kind of
    change, status.json is byte for byte what building everything afresh gives."""
    mode = FileMode()
    rec = reconciler(root, PluginHost({"files": mode}), clock)
    shares_dir = root / "etc/smbgw/shares.d"
    steps: list[tuple[str, Any]] = [
        ("three shares", lambda: [declare(root, n) for n in ("alpha", "beta", "gamma")]),
        ("nothing changed", lambda: None),
        ("an edit", lambda: declare(root, "beta", comment="edited")),
        ("a broken file keeps its last good spec", lambda: (shares_dir / "gamma.toml").write_text("path = [")),
        ("a failing apply", lambda: (mode.fail_apply.__setitem__("delta", "disk on fire"), declare(root, "delta"))),
        ("the retry still fails", lambda: clock.advance(5.0)),
        ("fixed", lambda: (mode.fail_apply.clear(), clock.advance(10.0))),
        ("a duplicate name", lambda: (shares_dir / "copy.toml").write_text((shares_dir / "alpha.toml").read_text())),
        ("the duplicate removed, one share removed",
         lambda: ((shares_dir / "copy.toml").unlink(), (shares_dir / "beta.toml").unlink())),
        ("a broken file mended", lambda: declare(root, "gamma", comment="mended")),
    ]
    for label, change in steps:
        change()
        rec.run_pass()
        written = (root / "run/smbgw/status.json").read_text()
        assert written == uncached_status_text(rec), label
    assert set(status_file(root)["shares"]) == {"alpha", "gamma", "delta"}
    assert status_file(root)["shares"]["gamma"]["digest"] == rec.state.applied["gamma"].digest()

"""One level-triggered reconcile pass: read everything, plan, apply, commit, record.

`plan` and `apply` are one code path: a dry run stops after planning. Planning yields
typed changes, each owned by a plugin; apply, remove, rollback and commit then reach only
the plugins that own a change, in plugin order. Each resource is isolated: a plugin
raising for one share (or node resource) rolls back that resource only, records why, and
schedules a retry with backoff; every other resource proceeds.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from smbgw_agent import __version__
from smbgw_agent.effects import deadline as pass_deadline
from smbgw_agent.effects.fileio import atomic_write
from smbgw_agent.effects.runner import Runner
from smbgw_agent.effects.samba import registry_share_names
from smbgw_agent.effects.services import ServiceControl
from smbgw_agent.effects.sharesfs import SharesFs, shares_fs
from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.paths import Paths
from smbgw_agent.model.shares import ShareSpec
from smbgw_agent.platform.changes import DELETE, UPDATE, Change, Health, NodeResource, share_key, share_resource
from smbgw_agent.platform.commands import CommandRefused
from smbgw_agent.platform.context import PassContext, SmbdControl
from smbgw_agent.platform.jobs import JobRunner, every_resource_of
from smbgw_agent.platform.pluginhost import CORE, PluginCallError, PluginHost
from smbgw_agent.reconcile.backoff import Backoff
from smbgw_agent.reconcile.desired import SERVING_NOTES, Desired, FileStatus, resolve_desired
from smbgw_agent.reconcile.guard import STORAGE_MISSING, UNSAFE, Hold, ShareGuard
from smbgw_agent.reconcile.scanner import ShareScanner
from smbgw_agent.reconcile.state import StateStore
from smbgw_agent.reconcile.statusjson import StatusEncoder

log = logging.getLogger(__name__)


@dataclass
class ShareOutcome:
    name: str
    changes: list[Change] = field(default_factory=list)
    result: str = "unchanged"  # unchanged | applied | removed | failed | waiting | planned
    error: str | None = None

    @property
    def steps(self) -> list[str]:
        return [change.detail for change in self.changes]


@dataclass
class ResourceOutcome:
    id: str
    plugin: str
    changes: list[Change] = field(default_factory=list)
    result: str = "unchanged"
    error: str | None = None


@dataclass
class PassReport:
    started: float
    duration: float = 0.0
    dry_run: bool = False
    outcomes: dict[str, ShareOutcome] = field(default_factory=dict)
    resources: dict[str, ResourceOutcome] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    desired: Desired | None = None
    held: dict[str, Hold] = field(default_factory=dict)

    @property
    def changed(self) -> list[str]:
        """Share names (as declared) that this pass applied or removed."""
        return sorted(o.name for o in self.outcomes.values() if o.result in ("applied", "removed"))

    @property
    def failed(self) -> list[str]:
        """Share names that failed in this pass or are still waiting to be retried."""
        return sorted(o.name for o in self.outcomes.values() if o.result in ("failed", "waiting"))

    @property
    def failed_resources(self) -> list[str]:
        return sorted(o.id for o in self.resources.values() if o.result in ("failed", "waiting"))

    @property
    def changes(self) -> list[Change]:
        """Every planned change of this pass, shares first, in a stable order."""
        found = [c for o in self.outcomes.values() for c in o.changes]
        found += [c for o in self.resources.values() for c in o.changes]
        return sorted(found, key=lambda c: (not c.resource.startswith("share:"), c.resource, c.plugin))

    @property
    def ok(self) -> bool:
        """Nothing failed, nothing went wrong node-wide, and no share is held back."""
        return not self.failed and not self.failed_resources and not self.errors and not self.held


def _describe(exc: BaseException) -> str:
    if isinstance(exc, PluginCallError):
        return str(exc)
    return str(exc) or type(exc).__name__


def _declared(spec: ShareSpec | None) -> str:
    """What the back-off remembers of the declaration that failed."""
    return spec.digest() if spec is not None else ""


def _lifecycle(failing: bool, want: object, have: object, live: str) -> str:
    """A resource's state for people: failing (retried), `live` (as declared), being
    removed, or pending (declared, not applied yet)."""
    if failing:
        return "failed"
    if want is not None and (have is want or have == want):  # identity first: cheap at 10,000
        return live
    return "removing" if want is None else "pending"


def _with_bookkeeping(changes: list[Change], resource: str, want: object, have: object) -> list[Change]:
    """No plugin has anything to do, yet the declaration changed (record it) or is gone
    (forget it): the core's own change, so the new declaration becomes the applied one."""
    if changes or want == have:
        return changes
    if want is not None:
        return [Change(resource, UPDATE, "record the new declaration (nothing to change on the node)", CORE)]
    return [Change(resource, DELETE, f"forget {resource}", CORE)]


def _by_plugin(changes: Sequence[Change]) -> dict[str, list[Change]]:
    grouped: dict[str, list[Change]] = {}
    for change in changes:
        grouped.setdefault(change.plugin, []).append(change)
    return grouped


@dataclass
class _Work:
    """What apply touched in this pass: per plugin, the resource ids (for its commit),
    and per resource, the plugins (for a rollback)."""

    by_plugin: dict[str, list[str]] = field(default_factory=dict)
    by_resource: dict[str, list[str]] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)
    committed: list[str] = field(default_factory=list)

    def touch(self, plugin: str, resource: str) -> None:
        self.by_plugin.setdefault(plugin, []).append(resource)
        self.by_resource.setdefault(resource, []).append(plugin)

    def uncommitted(self, resource: str, rejecting: str) -> list[str]:
        """Forget a resource a commit rejected; returns the plugins to roll it back on:
        the rejecting one and those that have not committed yet."""
        touched = self.drop(resource)
        keep = [p for p in touched if p == rejecting or p not in self.committed]
        return keep if rejecting in keep else [*keep, rejecting]

    def drop(self, resource: str) -> list[str]:
        """Forget a failed resource; returns the plugins that had touched it."""
        self.failed.add(resource)
        plugins = self.by_resource.pop(resource, [])
        for plugin in plugins:
            touched = self.by_plugin.get(plugin, [])
            if resource in touched:
                touched.remove(resource)
        return plugins


class Reconciler:
    def __init__(
        self,
        paths: Paths,
        config: AgentConfig,
        plugins: PluginHost,
        services: ServiceControl,
        runner: Runner | None = None,
        clock: Callable[[], float] = time.time,
        read_only: bool = False,
        monotonic: Callable[[], float] = time.monotonic,
        heartbeat: Callable[[], None] | None = None,
        jobs: JobRunner | None = None,
    ) -> None:
        """`clock` is wall time, only for what people read (status, metrics); every delay
        and deadline uses `monotonic`, so a clock step never stalls a retry.
        `heartbeat` is called while a pass is alive and within its time budget.
        `jobs` runs plugins' background work (None: plugins cannot start jobs)."""
        self.paths = paths
        self.config = config
        self.plugins = plugins
        self.services = services
        self.runner = runner or Runner()
        self.clock = clock
        self.monotonic = monotonic
        self.heartbeat = heartbeat
        self.jobs = jobs
        self.smbd: SmbdControl = plugins.smbd_control(config)
        self.scanner = ShareScanner(paths, plugins, config, self._registry_shares)
        self.guard = ShareGuard(paths, config)
        self.state = StateStore(paths.state_dir, read_only=read_only)
        self.backoff = Backoff()
        self.resource_backoff = Backoff()
        # Node-wide problems (a reload that failed, a commit that raised) have no share to
        # retry them: a pass is scheduled again with the same capped backoff.
        self.pass_backoff = Backoff()
        self.recovered = False
        self.rebuilt: list[str] = []
        self.status_error: str | None = None
        self.internal_errors = 0
        self._guard_dirty: set[str] = set()
        self._logged_holds: dict[str, str] = {}
        self.last_report: PassReport | None = None
        self.last_success: float | None = None
        self.config_problems: list[str] = []
        self.passes = 0
        self.pass_errors = 0
        self.snapshot: dict[str, Any] | None = None
        # Per share and per file, the last status entry and what it was made from; entries
        # are never mutated once published, so an unchanged one is handed out again.
        self._share_entries: dict[str, tuple[ShareSpec | None, ShareSpec | None, dict[str, Any]]] = {}
        self._file_entry_cache: dict[str, tuple[FileStatus, tuple[bool, str | None, str] | None, dict[str, Any]]] = {}
        self._file_statuses: dict[str, tuple[object, FileStatus]] = {}  # resolve_desired's `reuse`
        self._status_encoder = StatusEncoder()
        self.observations: dict[str, Any] = {}
        self.health: list[Health] = []
        self.shares_fs: SharesFs | None = None  # the file system under shares.d, as the last pass saw it
        self.wanted_resources: dict[str, NodeResource] = {}
        self._logged_problems: dict[str, tuple[str, ...]] = {}
        self._ctx: PassContext | None = None
        self._job_resources: set[str] = set()
        for warning in self.state.load():
            log.warning("%s", warning)

    def _registry_shares(self) -> list[str]:
        return registry_share_names(self.runner, self.paths.smb_conf)

    def context(self, desired: Mapping[str, ShareSpec], applied: Mapping[str, ShareSpec], dry_run: bool,
                full: bool = True) -> PassContext:
        return PassContext(
            paths=self.paths, config=self.config, runner=self.runner, services=self.services,
            desired=desired, applied=applied, dry_run=dry_run, full=full,
            applied_resources=dict(self.state.resources), smbd=self.smbd, jobs=self.jobs,
            host=self.plugins, state_of=lambda plugin: self.state.plugin_state(plugin, dry_run),
        )

    def start_command(self, verb: str, arguments: object) -> tuple[str, float]:
        """Start a plugin's smbgwctl verb between passes: its job id and time limit.
        Raises CommandRefused with a message for the user."""
        found = self.plugins.commands().get(verb)
        if found is None:
            raise CommandRefused(f"no plugin provides the verb {verb!r}")
        plugin, command = found
        checked = command.arguments_from(arguments)
        desired = self._ctx.desired if self._ctx is not None else dict(self.state.applied)
        ctx = self.context(desired, dict(self.state.applied), dry_run=False)
        if self.jobs is None:
            raise CommandRefused("this agent runs no jobs")
        try:
            job = command.start(ctx, checked)
        except CommandRefused:
            raise
        except Exception as exc:
            raise CommandRefused(f"{plugin}: {verb} failed to start: {_describe(exc)}") from exc
        finally:
            self.state.commit()
        if job is None:
            raise CommandRefused(f"{verb}: nothing to do on this node")
        job = dataclasses.replace(job, plugin=plugin)
        if not self.jobs.submit(job):
            running = self.jobs.record(job.id)
            since = f" since {time.strftime('%H:%M:%S', time.localtime(running.started))}" if (
                running is not None and running.started) else ""
            raise CommandRefused(f"{job.id} is already running{since}; try again when it has finished")
        return job.id, job.timeout

    def start_plugins(self) -> None:
        """Start the plugins' own work (background readings, timers): the agent is up."""
        ctx = self.context({}, dict(self.state.applied), dry_run=False)
        for error in self.plugins.start(ctx):
            log.error("%s", error)
        self.state.commit()  # what startup wrote to plugin state

    def replace_config(self, config: AgentConfig, plugins: PluginHost) -> None:
        """A reload: the new plugin instances take over, the old ones stop their work.
        What the old ones still had to do (a reload of smbd) is in plugin state, which
        the new ones read."""
        smbd = plugins.smbd_control(config)
        old = self.plugins
        self.config = config
        self.plugins = plugins
        self.smbd = smbd
        self.scanner = ShareScanner(self.paths, plugins, config, self._registry_shares)
        self.guard = ShareGuard(self.paths, config)
        if old is not plugins:
            was_started = old.started
            old.stop()
            if was_started:
                self.start_plugins()

    def stop_plugins(self) -> None:
        self.plugins.stop()

    def forget(self) -> None:
        """Re-read and re-check everything on the next pass (forced and periodic passes)."""
        self.scanner.forget()
        self.guard.forget()

    def poll_guard(self) -> bool:
        """Cheap check between passes (one stat per share): True when a share's directory
        or storage changed, e.g. a directory swapped for a symbolic link; the next pass
        then plans those shares."""
        report = self.last_report
        if report is None or report.desired is None:
            return False
        specs = [*report.desired.shares.values(), *(h.spec for h in report.held.values())]
        changed = self.guard.poll(specs)
        self._guard_dirty |= changed
        return bool(changed)

    # ---- the pass -------------------------------------------------------------------

    def run_pass(self, dry_run: bool = False, force: bool = False, full: bool = True,
                 changed_files: Collection[str] | None = None) -> PassReport:
        """One pass. `full` plans every share and node resource (drift repair); otherwise
        only those whose declaration differs from what is applied, or that are being
        retried — which is what keeps a file event's pass proportional to the change.
        Periodic resyncs are full. `force` ignores backoff (an explicit request).
        `changed_files`: the share files' names that changed since the last pass, when
        the caller knows them (inotify); then only those are read (see scanner.py).
        """
        report = PassReport(started=self.clock(), dry_run=dry_run)
        began = self.monotonic()
        budget = pass_deadline.Deadline(self.config.pass_timeout, self.heartbeat, self.monotonic)
        with pass_deadline.bounded(budget):
            try:
                self._pass(report, dry_run, force, full, None if full else changed_files)
            except Exception as exc:  # no exception may end the agent: count it, say where
                self.internal_errors += 1
                report.errors.append(f"internal error: {_describe(exc)} (see the log for the traceback)")
                log.error("internal error in a pass: %s", _describe(exc), exc_info=True)
                if not dry_run:
                    self.state.rollback()
        report.duration = self.monotonic() - began
        if not dry_run:
            if report.errors:
                self.pass_backoff.failed("pass", self.monotonic(), "; ".join(report.errors)[:500])
            else:
                self.pass_backoff.succeeded("pass")
            self.passes += 1
            if report.ok:
                self.last_success = self.clock()
            else:
                self.pass_errors += 1
            self.last_report = report
            try:
                self._observe_plugins()
            except Exception as exc:
                log.error("observing plugins failed: %s", _describe(exc))
            self.write_status()
        return report

    def _pass(self, report: PassReport, dry_run: bool, force: bool, full: bool,
              changed_files: Collection[str] | None) -> None:
        scan = self.scanner.scan(changed_files)
        self._look_at_shares_fs()
        if not self.recovered:
            self._recover_live(dry_run)
        applied = dict(self.state.applied)
        nodes = self.shares_fs.nodes if self.shares_fs is not None else ()
        desired = resolve_desired(
            scan, self.scanner.directory, self.state.lastgood, applied, self.config.node, nodes,
            reuse=self._file_statuses,
        )
        self._file_statuses = desired.reusable
        if scan.directory_problem:
            # A missing shares.d (e.g. /etc/pve not mounted) must not remove every share.
            report.errors.append(f"{scan.directory_problem}; keeping the shares that are live")
            desired.shares = dict(applied)
            desired.lastgood_drops = []
        # Whatever spec a share would be served from, its path must still be safe and its
        # storage present; held shares are taken down (or not created) this pass.
        fresh = {
            name for name in self.scanner.fresh
            if name in desired.files and desired.files[name].serving == "current"
        }
        changed = self._changed_shares(desired.shares, applied, dry_run)
        if full:
            to_check: Mapping[str, ShareSpec] = desired.shares
        else:
            # A file event's pass checks what it touches, what is held back, what is being
            # retried and what the idle poll saw change: its cost follows the change.
            held_before = self.last_report.held if self.last_report else {}
            watch = set(held_before) | self._guard_dirty | set(self.backoff.attempts)
            watch |= changed
            to_check = {k: desired.shares[k] for k in watch if k in desired.shares}
        report.held = self.guard.check(to_check, self.scanner.admin_shares(), fresh, complete=full)
        for key in report.held:
            del desired.shares[key]
        self._hold_refused_files(desired, report)
        report.desired = desired
        if not dry_run:
            self._log_file_problems(desired)
            self._log_holds(report.held)
        ctx = self.context(desired.shares, applied, dry_run, full)
        self._ctx = ctx
        now = self.monotonic()
        known = desired.shares.keys() | applied.keys()
        if full:
            keys = set(known)
        else:
            keys = changed & desired.shares.keys()  # shares held back this pass are removals below
            keys |= applied.keys() - desired.shares.keys()
            keys |= self.backoff.attempts.keys() & known
            keys |= self._guard_dirty & known
        self._job_resources = self.jobs.take_finished() if self.jobs is not None and not dry_run else set()
        if self._job_resources:
            keys |= {k for k in map(share_key, self._job_resources) if k is not None} & known
            # A mode plugin's job that names no resource (its watch over all its guests)
            # stands for every share of that mode: a container found stopped is planned at once.
            keys |= {k for k, spec in {**applied, **desired.shares}.items()
                     if every_resource_of(self.plugins.mode_owner(spec.mode) or "") in self._job_resources}
        if self.jobs is not None and not dry_run:
            # A share whose mode's job still runs (a container being made) is left as it is:
            # planned again when the job ends (`take_finished`), with whatever is declared then.
            keys -= self._busy_shares()
        self._guard_dirty = set()
        wanted = self._wanted_resources(ctx, report)
        ctx.resources = wanted
        resource_ids = self._resource_ids(wanted, dict(self.state.resources), full)
        plans = self._plan(ctx, keys, desired.shares, applied, report)
        resource_plans = self._plan_resources(ctx, resource_ids, wanted, report)
        if not dry_run:
            try:
                for spec in (*desired.lastgood_updates, *desired.lastgood_same):
                    self.state.set_lastgood(spec)
                for file in desired.lastgood_drops:
                    self.state.drop_lastgood(file)
                self._apply(ctx, plans, resource_plans, desired.shares, applied, report, now, force)
            finally:
                self.backoff.forget_missing(set(desired.shares) | set(self.state.applied))
                self.resource_backoff.forget_missing(set(wanted) | set(self.state.resources))
                self.state.commit()
        if self.state.error and not dry_run:
            report.errors.append(self.state.error)

    def _changed_shares(self, desired: Mapping[str, ShareSpec], applied: Mapping[str, ShareSpec],
                        dry_run: bool) -> set[str]:
        """The shares whose declared spec differs from the applied one. Identity first:
        unchanged files yield the very objects that were applied. An equal spec that is
        another object (the database's, after a restart) is taken into the state once, so
        that the next passes need no field-by-field comparison either."""
        changed = set()
        for key, spec in desired.items():
            have = applied.get(key)
            if have is spec:
                continue
            if have != spec:
                changed.add(key)
            elif not dry_run:
                self.state.set_applied(spec)
        return changed

    def _wanted_resources(self, ctx: PassContext, report: PassReport) -> dict[str, NodeResource]:
        """The node resources plugins want; a plugin that cannot say keeps what it has."""
        wanted, errors = self.plugins.node_resources(ctx)
        for plugin, error in sorted(errors.items()):
            report.errors.append(f"{plugin}: cannot derive its node resources ({error}); keeping them as they are")
            for resource_id, resource in self.state.resources.items():
                if resource.plugin == plugin:
                    wanted.setdefault(resource_id, resource)
        self.wanted_resources = wanted
        return wanted

    def _resource_ids(self, wanted: Mapping[str, NodeResource], applied: Mapping[str, NodeResource],
                      full: bool) -> set[str]:
        if full:
            return set(wanted) | set(applied)
        ids = {i for i, r in wanted.items() if applied.get(i) != r}
        ids |= set(applied) - set(wanted)
        ids |= set(self.resource_backoff.attempts) & (set(wanted) | set(applied))
        ids |= self._job_resources & (set(wanted) | set(applied))
        ids |= {i for i, r in {**applied, **wanted}.items() if every_resource_of(r.plugin) in self._job_resources}
        return ids

    def _hold_refused_files(self, desired: Desired, report: PassReport) -> None:
        """A file refused for a security problem takes its share down; show that share as
        refused (under its last good version), not as if it had never existed."""
        for name, status in desired.files.items():
            if status.serving != "refused":
                continue
            previous = self.state.lastgood.get(name)
            if previous is None:
                continue
            if previous.key in desired.shares or previous.key in report.held:
                continue
            reason = next((p.message for p in status.problems if p.security), "refused")
            report.held[previous.key] = Hold(previous, UNSAFE, reason)
            self.guard.remember(previous)

    def _recover_live(self, dry_run: bool) -> None:
        """Adopt what plugins serve but the state does not know (the database was lost,
        zeroed or restored from an older copy), so nothing live is removed as unknown."""
        self.recovered = True
        ctx = self.context({}, dict(self.state.applied), dry_run)
        adopted: list[str] = []
        for plugin, specs, error in self.plugins.live_shares(ctx):
            if error is not None:
                log.error("plugin %s could not report what it serves: %s", plugin, _describe(error))
                continue
            for spec in specs:
                if self.state.adopt(spec):
                    adopted.append(spec.name)
        if not adopted:
            return
        self.rebuilt = sorted(adopted)
        if self.state.lost:
            log.warning(
                "STATE LOST: %s; rebuilt %d live share(s) from what is served (%s): they keep "
                "being served, and a share whose file is invalid keeps its live version",
                self.state.lost, len(adopted), ", ".join(self.rebuilt),
            )
        else:
            log.warning(
                "the state database did not know %d live share(s) (%s); adopted them from what is served",
                len(adopted), ", ".join(self.rebuilt),
            )

    def _log_holds(self, held: Mapping[str, Hold]) -> None:
        current = {key: hold.reason for key, hold in held.items()}
        for key, hold in held.items():
            if self._logged_holds.get(key) != hold.reason:
                what = "REFUSED (unsafe)" if hold.kind == UNSAFE else "not served (storage missing)"
                log.error("share %s (%s): %s: %s", hold.spec.name, hold.spec.file, what, hold.reason)
        for key in set(self._logged_holds) - set(current):
            log.info("share %s: no longer held back", key)
        self._logged_holds = current

    def _log_file_problems(self, desired: Desired) -> None:
        """Log each invalid file once per change of its problems (not every pass)."""
        current: dict[str, tuple[str, ...]] = {}
        for name, status in desired.files.items():
            if status.valid:
                continue
            problems = tuple(str(p) for p in status.problems)
            current[name] = problems
            if self._logged_problems.get(name) != problems:
                note = SERVING_NOTES.get(status.serving)
                for problem in problems:
                    log.error("invalid share file %s%s", problem, f"; {note}" if note else "")
        for name in set(self._logged_problems) - set(current):
            if name in desired.files:
                log.info("share file %s is valid again", name)
        self._logged_problems = current

    def _plan(
        self,
        ctx: PassContext,
        keys: set[str],
        desired: Mapping[str, ShareSpec],
        applied: Mapping[str, ShareSpec],
        report: PassReport,
    ) -> dict[str, list[Change]]:
        plans: dict[str, list[Change]] = {}
        for key in sorted(keys):
            pass_deadline.beat()
            want, have = desired.get(key), applied.get(key)
            if want is None and have is None:
                continue  # nothing declared and nothing live: nothing to plan
            name = (want or have).name  # type: ignore[union-attr]
            outcome = ShareOutcome(name)
            report.outcomes[key] = outcome
            try:
                outcome.changes = self.plugins.plan_share(ctx, name, want, have)
            except Exception as exc:
                error = f"planning failed: {_describe(exc)}"
                if ctx.dry_run:
                    outcome.result, outcome.error = "failed", error
                    log.error("share %s: %s", name, error)
                elif self.backoff.waiting(key, self.monotonic(), _declared(want)):
                    # Planned again before its retry is due (every pass plans the failing
                    # shares): the same failure, not a new one that doubles the wait.
                    outcome.result, outcome.error = "waiting", self.backoff.still(key, error).error
                else:
                    self._fail_share(ctx, key, outcome, have, error, self.monotonic(), [])
                continue
            outcome.changes = _with_bookkeeping(outcome.changes, share_resource(name), want, have)
            if outcome.changes:
                plans[key] = outcome.changes
                outcome.result = "planned"
            elif key in self.backoff.attempts and not ctx.dry_run:
                # Nothing left to do: what failed has been done since (a mode's job that
                # was retried and has now succeeded).
                self.backoff.succeeded(key)
        return plans

    def _plan_resources(
        self, ctx: PassContext, ids: set[str], wanted: Mapping[str, NodeResource], report: PassReport,
    ) -> dict[str, list[Change]]:
        plans: dict[str, list[Change]] = {}
        applied = self.state.resources
        for resource_id in sorted(ids):
            pass_deadline.beat()
            want, have = wanted.get(resource_id), applied.get(resource_id)
            if want is None and have is None:
                continue
            owner = (want or have).plugin  # type: ignore[union-attr]
            outcome = ResourceOutcome(resource_id, owner)
            report.resources[resource_id] = outcome
            try:
                outcome.changes = self.plugins.plan_resource(ctx, resource_id, want, have)
            except Exception as exc:
                error = f"planning failed: {_describe(exc)}"
                if ctx.dry_run:
                    outcome.result, outcome.error = "failed", error
                elif self.resource_backoff.waiting(resource_id, self.monotonic()):
                    # Planned again before its retry is due (every pass plans the failing
                    # resources, and a plugin's watch may start one every second): the
                    # same failure, not a new one that doubles the wait.
                    outcome.result, outcome.error = "waiting", self.resource_backoff.still(resource_id, error).error
                else:
                    self._fail_resource(ctx, outcome, have, error, self.monotonic(), [])
                continue
            outcome.changes = _with_bookkeeping(outcome.changes, resource_id, want, have)
            if outcome.changes:
                plans[resource_id] = outcome.changes
                outcome.result = "planned"
            elif resource_id in self.resource_backoff.attempts and not ctx.dry_run:
                # Nothing to do after a failure: it was planning that failed (a tool or an
                # interface briefly missing) and the resource is as it should be.
                self.resource_backoff.succeeded(resource_id)
        return plans

    def _apply(
        self,
        ctx: PassContext,
        plans: Mapping[str, list[Change]],
        resource_plans: Mapping[str, list[Change]],
        desired: Mapping[str, ShareSpec],
        applied: Mapping[str, ShareSpec],
        report: PassReport,
        now: float,
        force: bool,
    ) -> None:
        """Plugin by plugin in plugin order: its node resources, then its shares. A share
        that failed in an earlier plugin is skipped by the later ones (and rolled back on
        the earlier ones), so a share is never served half made."""
        work = _Work()
        share_work: dict[str, dict[str, list[Change]]] = {}
        for key in plans:
            outcome = report.outcomes[key]
            if not force and self.backoff.waiting(key, now, _declared(desired.get(key))):
                outcome.result, outcome.error = "waiting", self.backoff.attempts[key].error
                continue
            share_work[key] = _by_plugin(plans[key])
        resource_work: dict[str, list[Change]] = {}
        for resource_id, changes in resource_plans.items():
            waiting = report.resources[resource_id]
            if not force and self.resource_backoff.waiting(resource_id, now):
                waiting.result, waiting.error = "waiting", self.resource_backoff.attempts[resource_id].error
                continue
            resource_work[resource_id] = changes
        for plugin in self.plugins.names:
            for resource_id, changes in resource_work.items():
                mine = [c for c in changes if c.plugin == plugin]
                if mine:
                    self._apply_resource(ctx, plugin, resource_id, mine, report, work, now)
            for key, grouped in share_work.items():
                resource = share_resource(report.outcomes[key].name)
                if plugin in grouped and resource not in work.failed:
                    self._apply_share(ctx, plugin, key, grouped[plugin], desired, applied, report, work, now)
        self._commit(ctx, work, report, applied, now)
        report.errors.extend(ctx.notes)
        self._record(share_work, resource_work, desired, applied, report, work)

    def _apply_share(
        self, ctx: PassContext, plugin: str, key: str, changes: list[Change],
        desired: Mapping[str, ShareSpec], applied: Mapping[str, ShareSpec],
        report: PassReport, work: _Work, now: float,
    ) -> None:
        pass_deadline.beat()
        outcome = report.outcomes[key]
        want, have = desired.get(key), applied.get(key)
        resource = share_resource(outcome.name)
        work.touch(plugin, resource)
        if plugin == CORE:
            return  # bookkeeping only: recorded below
        try:
            if want is not None and any(c.action != DELETE for c in changes):
                self.plugins.apply_share(plugin, ctx, outcome.name, want, changes)
            else:
                self.plugins.remove_share(plugin, ctx, outcome.name, have, changes)
        except Exception as exc:
            self._fail_share(ctx, key, outcome, have, _describe(exc), now, work.drop(resource))
            log.debug("share %s: traceback", outcome.name, exc_info=True)

    def _apply_resource(
        self, ctx: PassContext, plugin: str, resource_id: str, changes: list[Change],
        report: PassReport, work: _Work, now: float,
    ) -> None:
        pass_deadline.beat()
        outcome = report.resources[resource_id]
        want = ctx.resources.get(resource_id)
        have = self.state.resources.get(resource_id)
        work.touch(plugin, resource_id)
        if plugin == CORE:
            return
        try:
            if want is not None and any(c.action != DELETE for c in changes):
                self.plugins.apply_resource(plugin, ctx, want, changes)
            else:
                self.plugins.remove_resource(plugin, ctx, resource_id, have, changes)
        except Exception as exc:
            self._fail_resource(ctx, outcome, have, _describe(exc), now, work.drop(resource_id))

    def _commit(self, ctx: PassContext, work: _Work, report: PassReport,
                applied: Mapping[str, ShareSpec], now: float) -> None:
        """Each plugin that touched something commits once, in plugin order. What it
        rejects, or everything it touched if it raises, fails: rolled back on it and on
        the plugins after it that have not committed yet; what other plugins touched
        alone, and what earlier plugins already made live, is not affected."""
        work.committed = []
        for plugin in self.plugins.names:
            touched = list(work.by_plugin.get(plugin, ()))
            if not touched:
                continue
            pass_deadline.beat()
            try:
                rejected = self.plugins.commit(plugin, ctx, touched)
            except Exception as exc:
                cause = exc.error if isinstance(exc, PluginCallError) else exc
                message = f"{plugin}: commit failed: {_describe(cause)}"
                log.error("%s", message)
                report.errors.append(message)
                rejected = dict.fromkeys(touched, message)
            else:
                rejected = {k: f"{plugin}: {v}" for k, v in rejected.items()}
            work.committed.append(plugin)
            for resource, reason in sorted(rejected.items()):
                self._reject(ctx, plugin, resource, reason, report, work, applied, now)

    def _reject(self, ctx: PassContext, plugin: str, resource: str, reason: str, report: PassReport,
                work: _Work, applied: Mapping[str, ShareSpec], now: float) -> None:
        key = share_key(resource)
        if key is not None:
            outcome = report.outcomes.get(key)
            if outcome is None or resource in work.failed:
                return
            self._fail_share(ctx, key, outcome, applied.get(key), reason, now, work.uncommitted(resource, plugin))
            return
        owned = self.wanted_resources.get(resource) or self.state.resources.get(resource)
        if owned is None or owned.plugin != plugin:
            log.error("%s rejected %s, which it does not own: ignored", plugin, resource)
            return
        failing = report.resources.setdefault(resource, ResourceOutcome(resource, plugin))
        if resource not in work.failed:
            have = self.state.resources.get(resource)
            self._fail_resource(ctx, failing, have, reason, now, work.uncommitted(resource, plugin))

    def _busy_shares(self) -> set[str]:
        """Shares whose mode's job runs now (a container being made)."""
        if self.jobs is None:
            return set()
        return {k for k in map(share_key, self.jobs.busy_resources()) if k is not None}

    def _record(
        self, share_work: Mapping[str, Mapping[str, list[Change]]], resource_work: Mapping[str, list[Change]],
        desired: Mapping[str, ShareSpec], applied: Mapping[str, ShareSpec], report: PassReport, work: _Work,
    ) -> None:
        busy = self._busy_shares()
        for key in share_work:
            outcome = report.outcomes[key]
            if share_resource(outcome.name) in work.failed:
                continue
            want = desired.get(key)
            if key not in busy:
                # A share whose mode's job now runs (a container being made) has not
                # worked yet: its back-off stays until the job's outcome is planned.
                self.backoff.succeeded(key)
            if want is not None:
                self.state.set_applied(want)
                outcome.result = "applied"
                log.info("share %s (%s): applied (%s)", outcome.name, want.file, "; ".join(outcome.steps))
            else:
                self.state.drop_applied(key)
                outcome.result = "removed"
                log.info("share %s: removed (data left in place)", outcome.name)
        for resource_id in resource_work:
            done = report.resources[resource_id]
            if resource_id in work.failed:
                continue
            self.resource_backoff.succeeded(resource_id)
            wanted = self.wanted_resources.get(resource_id)
            if wanted is not None:
                self.state.set_resource(wanted)
                done.result = "applied"
                log.info("%s (%s): applied (%s)", resource_id, wanted.plugin,
                         "; ".join(c.detail for c in done.changes))
            else:
                self.state.drop_resource(resource_id)
                done.result = "removed"
                log.info("%s: removed", resource_id)

    def _fail_share(
        self, ctx: PassContext, key: str, outcome: ShareOutcome, have: ShareSpec | None,
        error: str, now: float, plugins: Sequence[str],
    ) -> None:
        """Roll the share back on `plugins` (those that applied something for it this
        pass), last first, and schedule a retry."""
        for plugin in reversed(plugins):
            if plugin == CORE:
                continue
            try:
                self.plugins.rollback_share(plugin, ctx, outcome.name, have)
            except Exception as exc:
                error += f" (and rolling back failed: {_describe(exc)})"
        attempt = self.backoff.failed(key, now, error, _declared(ctx.desired.get(key)))
        outcome.result, outcome.error = "failed", error
        log.error(
            "share %s: %s; retry %d in %.0fs", outcome.name, error, attempt.failures,
            attempt.retry_at - now,
        )

    def _fail_resource(
        self, ctx: PassContext, outcome: ResourceOutcome, have: NodeResource | None,
        error: str, now: float, plugins: Sequence[str],
    ) -> None:
        for plugin in reversed(plugins):
            if plugin == CORE:
                continue
            try:
                self.plugins.rollback_resource(plugin, ctx, outcome.id, have)
            except Exception as exc:
                error += f" (and rolling back failed: {_describe(exc)})"
        attempt = self.resource_backoff.failed(outcome.id, now, error)
        outcome.result, outcome.error = "failed", error
        log.error("%s (%s): %s; retry %d in %.0fs", outcome.id, outcome.plugin, error, attempt.failures,
                  attempt.retry_at - now)

    def retry_wall_time(self, retry_at: float) -> float:
        """A monotonic retry time as Unix time, for people and status.json."""
        return self.clock() + (retry_at - self.monotonic())

    # ---- status -----------------------------------------------------------------------

    def _observe_plugins(self) -> None:
        ctx = self._ctx
        if ctx is None:
            return
        # Schedules first: what plugins observe includes when their jobs run next.
        if self.jobs is not None and not ctx.dry_run:
            schedules, errors = self.plugins.schedules(ctx)
            for error in errors:
                log.error("%s", error)
            self.jobs.set_schedules(schedules)
        self.observations = self.plugins.observe(ctx)
        self.health = self.plugins.health(ctx)

    def next_wakeup(self) -> float | None:
        """Monotonic time of the next retry (a share's, a node resource's, or a pass after
        node-wide errors)."""
        times = [t for t in (self.backoff.next_retry(), self.resource_backoff.next_retry(),
                             self.pass_backoff.next_retry()) if t is not None]
        return min(times, default=None)

    def _look_at_shares_fs(self) -> None:
        """Whether shares.d's file system takes writes (pmxcfs without quorum does not):
        nothing changes for the shares, the condition is said once when it starts and
        once when it ends."""
        before = self.shares_fs
        self.shares_fs = now = shares_fs(self.scanner.directory)
        if now.nodes and self.config.node not in now.nodes and (before is None or before.nodes != now.nodes):
            log.error("this agent's node name %r is not a node of the cluster (%s): shares placed on a node by "
                      "name are served by no one here; set [agent] node to this node's cluster name",
                      self.config.node, ", ".join(now.nodes))
        if before is None or before.writable != now.writable:
            if not now.writable:
                log.warning("share files cannot be changed now: %s; the shares stay as they are", now.why)
            elif before is not None:
                log.info("%s takes changes again", now.mount or self.scanner.directory)

    def degraded(self) -> dict[str, str]:
        """Conditions that keep the agent from doing its whole job, by reason."""
        reasons: dict[str, str] = {}
        if self.state.error:
            reasons["state"] = self.state.error
        if self.status_error:
            reasons["status"] = self.status_error
        return reasons

    def status(self) -> dict[str, Any]:
        report = self.last_report
        desired = report.desired if report else None
        held = report.held if report else {}
        shares: dict[str, Any] = {}
        keys = set(self.state.applied) | (set(desired.shares) if desired else set()) | set(held)
        busy = {share_key(resource): progress for resource, progress in self.jobs.busy_resources().items()
                if share_key(resource) is not None} if self.jobs is not None else {}
        reused = self._share_entries
        self._share_entries = {}
        for key in sorted(keys):
            applied = self.state.applied.get(key)
            want = desired.shares.get(key) if desired else None
            hold = held.get(key)
            spec = want or (hold.spec if hold else None) or applied
            assert spec is not None
            attempt = self.backoff.attempts.get(key)
            # Nothing pending about this share: its entry depends only on the two specs,
            # and the same spec objects mean the same entry (and the same text in
            # status.json). Most shares, most passes.
            settled = hold is None and attempt is None and key not in busy
            if settled:
                known = reused.get(key)
                if known is not None and known[0] is want and known[1] is applied:
                    shares[spec.name] = known[2]
                    self._share_entries[key] = known
                    continue
            error = attempt.error if attempt else None
            if hold is not None:
                state = "refused" if hold.kind == UNSAFE else STORAGE_MISSING
                error = hold.reason
            else:
                state = _lifecycle(attempt is not None, want, applied, "served")
                if state in ("served", "failed") and key in busy:
                    # Applied, but its mode's job (a container being created or started)
                    # has not finished: not served yet (the job's progress is in "jobs");
                    # after a failure, the job is the retry.
                    state = "pending"
            entry = shares[spec.name] = {
                "file": spec.file,
                "mode": spec.mode,
                "path": spec.path,
                "state": state,
                "serving": "declared" if applied == want and applied else ("previous" if applied else "none"),
                "digest": spec.digest(),
                "error": error,
                "failures": attempt.failures if attempt else 0,
                "retry_at": self.retry_wall_time(attempt.retry_at) if attempt else None,
            }
            if settled:
                self._share_entries[key] = (want, applied, entry)
        return {
            "version": __version__,
            "node": self.config.node,
            "root": str(self.paths.root),
            "updated": self.clock(),
            "config": {
                "file": self.config.source,
                "warnings": list(self.config.warnings),
                "problems": list(self.config_problems),
            },
            "shares_dir": str(self.scanner.directory),
            "shares_fs": self.shares_fs.to_dict() if self.shares_fs is not None else None,
            "pass": None if report is None else {
                "started": report.started,
                "duration_seconds": round(report.duration, 6),
                "ok": report.ok,
                "errors": report.errors,
                "changed": report.changed,
                "failed": report.failed,
                "failed_resources": report.failed_resources,
            },
            "passes": self.passes,
            "pass_errors": self.pass_errors,
            "internal_errors": self.internal_errors,
            "last_success": self.last_success,
            "degraded": self.degraded(),
            "state": {
                "database": str(self.state.database),
                "saved": not self.state.unsaved,
                "error": self.state.error,
                "lost": self.state.lost or None,
                "rebuilt": list(self.rebuilt),
            },
            "shares": shares,
            "files": self._file_entries(desired),
            "other_node": dict(desired.other_node) if desired else {},
            "services": {
                unit: {"control": r.control, "active": r.active, "detail": r.detail}
                for unit, r in self.services.reports.items()
            },
            "plugins": self.observations,
            "resources": self._resource_status(report),
            "health": [finding.to_dict() for finding in self.health],
            "jobs": self.jobs.snapshot() if self.jobs is not None else {},
        }

    def _file_entries(self, desired: Desired | None) -> dict[str, Any]:
        """status' "files": an unchanged file's entry is the same dict as last time (see
        `status`)."""
        reused, self._file_entry_cache = self._file_entry_cache, {}
        if desired is None:
            return {}
        entries: dict[str, Any] = {}
        files = desired.files
        for name in sorted(files):  # names, not (name, status) pairs: 10,000 fewer objects a pass
            file_status = files[name]
            known = reused.get(name)
            if known is not None and known[0] is file_status:  # most files: desired.py reuses statuses
                entries[name] = known[2]
                self._file_entry_cache[name] = known
                continue
            # A file with problems or warnings is rare and built afresh; for the others
            # (a share placed on another node: a new status every pass) three fields say
            # everything.
            signature = (None if file_status.problems or file_status.warnings
                         else (file_status.valid, file_status.share, file_status.serving))
            if signature is not None and known is not None and known[1] == signature:
                entries[name] = known[2]
            else:
                entries[name] = file_status.to_dict()
            self._file_entry_cache[name] = (file_status, signature, entries[name])
        return entries

    def _resource_status(self, report: PassReport | None) -> dict[str, Any]:
        """One line per node resource: wanted, applied, or failing."""
        resources: dict[str, Any] = {}
        wanted, applied = self.wanted_resources, self.state.resources
        for resource_id in sorted(set(wanted) | set(applied) | set(self.resource_backoff.attempts)):
            want, have = wanted.get(resource_id), applied.get(resource_id)
            owner = want or have
            attempt = self.resource_backoff.attempts.get(resource_id)
            if owner is None:
                continue
            state = _lifecycle(attempt is not None, want, have, "applied")
            resources[resource_id] = {
                "plugin": owner.plugin,
                "state": state,
                "error": attempt.error if attempt else None,
                "failures": attempt.failures if attempt else 0,
                "retry_at": self.retry_wall_time(attempt.retry_at) if attempt else None,
                "spec": dict(owner.spec),
            }
        return resources

    def write_status(self) -> None:
        """Publish a new snapshot for scrapes (a new object each pass, never mutated
        afterwards, so readers in other threads need no lock) and write status.json.

        A status file that cannot be written (a full /run, no file descriptors left) is
        reported as degraded and retried; it never stops the agent.
        """
        previous, self.status_error = self.status_error, None  # what the file will say if written
        snapshot = self.status()
        try:
            atomic_write(self.paths.status_file, self._status_encoder.encode(snapshot))
        except OSError as exc:
            message = f"cannot write {self.paths.status_file}: {exc.strerror or exc}"
            if message != previous:
                log.error("%s; retrying", message)
            self.status_error = message
            self.snapshot = {**snapshot, "degraded": self.degraded()}
            return
        self.snapshot = snapshot
        if previous:
            log.warning("%s written again", self.paths.status_file)

    def status_missing(self) -> bool:
        """status.json was deleted (by hand, or by a tmpfs cleaner) or never written."""
        return self.snapshot is not None and not self.paths.status_file.exists()
